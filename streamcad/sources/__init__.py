"""Frame sources. ``open_source(uri, **options)`` is the one factory:

    file:PATH | device:N | device:/dev/videoN | url:rtsp://... | url:http://... | gst:PIPELINE
    | sweep:DIR (sweep: alone = the bundled BUS-BRA sample)

    with open_source("file:clip.mp4", pace="none") as src:   # start() on enter
        while (frame := src.read(timeout=1.0)) is not None or not src.ended:
            ...                                                # frame.image: (H, W) uint8
"""

from __future__ import annotations

import inspect

from streamcad.errors import SourceError
from streamcad.sources.base import (
    Frame,
    FrameSource,
    ReconnectPolicy,
    SourceInfo,
    SourceState,
    SourceStats,
    ThreadedSource,
)

__all__ = [
    "Frame",
    "FrameSource",
    "ReconnectPolicy",
    "SourceInfo",
    "SourceState",
    "SourceStats",
    "ThreadedSource",
    "SCHEMES",
    "open_source",
]

SCHEMES = ("file", "device", "url", "gst", "sweep")


def _factory(scheme: str):
    if scheme == "file":
        from streamcad.sources.capture import FileSource

        return FileSource
    if scheme == "device":
        from streamcad.sources.capture import DeviceSource

        return DeviceSource
    if scheme == "url":
        from streamcad.sources.capture import UrlSource

        return UrlSource
    if scheme == "gst":
        from streamcad.sources.capture import GstSource

        return GstSource
    from streamcad.sources.sweep import SweepSource

    return SweepSource


def open_source(uri: str, **options) -> FrameSource:
    """Parse ``SCHEME:REST`` and build the (not yet started) source. Options are the source
    class's keyword arguments plus the ThreadedSource ones (reconnect, stale_after_s,
    hang_timeout_s, open_timeout_s). Unknown scheme or option -> SourceError listing the valid
    ones; a missing file -> SourceError naming the path."""
    if not isinstance(uri, str) or ":" not in uri:
        raise SourceError(f"source {uri!r}: expected SCHEME:...; valid schemes: {', '.join(SCHEMES)}")
    scheme, rest = uri.split(":", 1)
    if scheme not in SCHEMES:
        raise SourceError(f"source {uri!r}: unknown scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}")
    cls = _factory(scheme)
    allowed = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            allowed |= {n for n, p in inspect.signature(klass.__init__).parameters.items()
                        if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise SourceError(
            f"source {uri!r}: unknown option(s) {unknown}; {scheme}: accepts {sorted(allowed)}"
        )
    return cls(rest, **options)
