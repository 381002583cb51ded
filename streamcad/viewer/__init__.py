"""`streamcad view`: a live web page of one or more streams (streamcad.viewer.server).

Needs the `viewer` extra (aiohttp); importing this package alone imports nothing heavy."""

__all__: list[str] = []
