"""Frame sources. ``open_source(uri, **options)`` is the one factory:

    file:PATH | device:N | device:/dev/videoN | url:rtsp://... | url:http://... | gst:PIPELINE
    | sweep:DIR (sweep: alone = the bundled BUS-BRA sample) | file:DIR (a session recording)

How to add a source: subclass ThreadedSource (streamcad.sources.base: the _open / _grab /
_release hooks, all on the reader thread), add its scheme to SCHEMES and its loader to
_LOADERS (both or the import fails), and give it keyword-only options (open_source checks
them by name).

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


def _file_source(rest: str):
    from pathlib import Path

    if Path(rest).expanduser().is_dir():  # file:DIR = a session recording (streamcad.recording)
        from streamcad.recording import RecordingSource

        return RecordingSource
    from streamcad.sources.capture import FileSource

    return FileSource


def _capture(name: str):
    def load(rest: str):
        from streamcad.sources import capture

        return getattr(capture, name)

    return load


def _sweep(rest: str):
    from streamcad.sources.sweep import SweepSource

    return SweepSource


# scheme -> loader(rest) -> source class. The one table: a scheme in SCHEMES without a loader
# here is an error at import, never a silent fallback to another source.
_LOADERS = {
    "file": _file_source,
    "device": _capture("DeviceSource"),
    "url": _capture("UrlSource"),
    "gst": _capture("GstSource"),
    "sweep": _sweep,
}
if set(_LOADERS) != set(SCHEMES):
    raise ImportError(f"streamcad.sources: SCHEMES {SCHEMES} and the loaders {sorted(_LOADERS)} disagree")


def _factory(scheme: str, rest: str = ""):
    try:
        loader = _LOADERS[scheme]
    except KeyError:
        raise SourceError(f"unknown source scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}") from None
    return loader(rest)


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
    cls = _factory(scheme, rest)
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
