"""Frame sources and the one registry that builds them, by URI scheme, from their typed options.

    file:PATH | device:N | device:/dev/videoN | url:rtsp://... | url:http://... | gst:PIPELINE
    | sweep:DIR (sweep: alone = the bundled BUS-BRA sample) | file:DIR (a session recording)

    open_source(uri, **options) --the scheme's Options (msgspec, strict)--> source class(rest, **options)
    [source] section --source_from_config(config.source)--> the scheme's Options --> the same

The registry maps a scheme to its source class (imported when used: cv2 is not imported with this
package) and its Options: a frozen msgspec Struct of the class's keyword arguments, ranges as
``msgspec.Meta``. ``SOURCE_KEYS`` on the Options names the ``[source]`` keys the scheme honours
(of ``loop``, ``pace``, ``fps``, ``seed``, ``width``, ``height``, ``fourcc``; ``reconnect_*``
become every source's ``reconnect`` policy). An unknown option is a SourceError naming it and what
the scheme accepts, a bad value a ConfigError naming the key; a ``[source]`` key the scheme does
not honour, set to anything but its default, is a ConfigError naming the key, the scheme and the
keys it takes (``source.seed`` with ``file:``: a file's frames are its own). An unknown scheme
names the valid ones. Nothing is silently ignored or falls back to another source.

A scheme may have variants chosen by what follows the colon: ``file:DIR`` is a recording
(streamcad.recording.RecordingSource, ``when=`` a directory), ``file:PATH`` a video. Fault
injection (streamcad.sources.faults.FaultySource) wraps a built source in code: not a scheme.

How to add a source:

1. Subclass ``ThreadedSource`` (streamcad.sources.base: the ``_open`` / ``_grab`` / ``_release``
   hooks, all on the reader thread) with ``__init__(self, rest, *, ...options, **kwargs)``,
   passing ``**kwargs`` (reconnect, timeouts) to ``super().__init__``.
2. Declare its options: ``class MyOptions(SourceOptions)``, one typed field per keyword argument
   with the class's default (``Annotated[int, msgspec.Meta(ge=1)]`` for ranges), and
   ``SOURCE_KEYS``: the ``[source]`` keys it honours (each must be one of its fields).
3. Register it: ``@register_source("myscheme", MyOptions)`` on the class, or on a function
   returning the class (to import it lazily, as the built-ins below do); ``when=`` for a variant
   of a registered scheme. The registry refuses Options that are not a SourceOptions, a
   SOURCE_KEYS entry that is not a [source] key or not a field, a second default for a scheme
   and a variant without one. A new ``[source]`` key is a field of streamcad.config.SourceConfig
   and an entry of ``CONFIG_KEYS`` here (a test holds the two equal).

    with open_source("file:clip.mp4", pace="none") as src:   # start() on enter
        while (frame := src.read(timeout=1.0)) is not None or not src.ended:
            ...                                                # frame.image: (H, W) uint8
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from streamcad.errors import ConfigError, SourceError
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
    "CONFIG_KEYS",
    "SourceOptions",
    "register_source",
    "source_schemes",
    "source_options_type",
    "source_options",
    "source_from_config",
    "open_source",
]

# the [source] keys a scheme may honour and what each means (besides uri and reconnect_*, which
# every source takes); the same names as its Options fields
CONFIG_KEYS: dict[str, str] = {
    "loop": "start over at the end",
    "pace": "'native' = the media's own rate, 'none' = as fast as consumed",
    "fps": "the frame rate (sweep) / requested rate (device)",
    "seed": "the sweep's content",
    "width": "the requested capture width",
    "height": "the requested capture height",
    "fourcc": "the requested capture format",
}

Pace = Literal["native", "none"]
Rate = Annotated[float, msgspec.Meta(gt=0, le=1000.0)]  # no capture or sweep runs faster
Timeout = Annotated[float, msgspec.Meta(gt=0)]
Side = Annotated[int, msgspec.Meta(gt=0, le=16384)]
Ms = Annotated[int, msgspec.Meta(gt=0, le=3_600_000)]


class SourceOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A source's options: its class's keyword arguments, typed and checked. These are the
    ThreadedSource ones every source takes; a subclass adds its own and names the [source] keys
    it honours in SOURCE_KEYS."""

    SOURCE_KEYS: ClassVar[tuple[str, ...]] = ()

    reconnect: ReconnectPolicy | None = None  # None = ReconnectPolicy()'s defaults
    stale_after_s: Timeout | None = None  # no new frame this long = 'stale' (None = never)
    hang_timeout_s: Timeout = 3.0  # a _grab() blocked longer: the watchdog abandons that reader
    open_timeout_s: Timeout = 15.0


class FileOptions(SourceOptions):
    """file:PATH (streamcad.sources.capture.FileSource): a video played at its own rate."""

    SOURCE_KEYS: ClassVar[tuple[str, ...]] = ("loop", "pace")

    loop: bool = False
    pace: Pace = "native"


class RecordingOptions(FileOptions):
    """file:DIR (streamcad.recording.RecordingSource): a session recording at its recorded intervals."""


class DeviceOptions(SourceOptions):
    """device:N | device:/dev/videoN (streamcad.sources.capture.DeviceSource, V4L2): the format
    requested; what the device granted is in its SourceInfo."""

    SOURCE_KEYS: ClassVar[tuple[str, ...]] = ("fps", "width", "height", "fourcc")

    fourcc: Annotated[str, msgspec.Meta(min_length=4, max_length=4)] | None = "MJPG"
    width: Side | None = None  # None = the device's default
    height: Side | None = None
    fps: Rate | None = None


class UrlOptions(SourceOptions):
    """url:rtsp://... | url:http(s)://... (streamcad.sources.capture.UrlSource, FFmpeg)."""

    open_timeout_ms: Ms = 5000  # a dead peer fails the open / a read instead of hanging it
    read_timeout_ms: Ms = 5000


class GstOptions(SourceOptions):
    """gst:PIPELINE (streamcad.sources.capture.GstSource): the pipeline string says everything."""


class SweepOptions(SourceOptions):
    """sweep:DIR (streamcad.sources.sweep.SweepSource): a synthetic probe sweep over images."""

    SOURCE_KEYS: ClassVar[tuple[str, ...]] = ("loop", "pace", "seed", "fps")

    seed: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)] = 0  # numpy's seed range
    screen: tuple[Annotated[int, msgspec.Meta(ge=320, le=16384)],
                  Annotated[int, msgspec.Meta(ge=240, le=16384)]] = (1024, 768)  # (width, height)
    sector: Literal["linear", "curved"] = "linear"
    fps: Rate = 30.0
    dwell_s: Annotated[float, msgspec.Meta(gt=0, le=3600.0)] = 4.0
    transition_s: Annotated[float, msgspec.Meta(ge=0, le=3600.0)] = 1.0
    speckle: Annotated[float, msgspec.Meta(ge=0)] = 0.3
    pace: Pace = "native"
    loop: bool = True  # [source] loop defaults to false: run configs end after one pass
    start_index: Annotated[int, msgspec.Meta(ge=0)] = 0


# ----------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class _Entry:
    scheme: str
    name: str  # 'file', 'recording', ...: in errors
    load: Callable[[], type]  # () -> the source class
    options: type[SourceOptions]
    when: Callable[[str], bool] | None  # a variant: chosen when when(rest); None = the scheme's default


_DEFAULTS: dict[str, _Entry] = {}  # scheme -> its default entry, in registration order
_VARIANTS: dict[str, list[_Entry]] = {}  # scheme -> its variants, tried first, in order
_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]*$")  # RFC 3986 scheme, lower case


def register_source(scheme: str, options: type[SourceOptions], *, name: str | None = None,
                    when: Callable[[str], bool] | None = None) -> Callable:
    """Decorator on a source class or on a loader ``() -> class``: build ``scheme:REST`` URIs
    with it, from `options`. ``when(rest)``: a variant of an already registered scheme."""
    if not (isinstance(options, type) and issubclass(options, SourceOptions)):
        raise TypeError(f"register_source({scheme!r}) expects a SourceOptions subclass; got {options!r}")
    if not (isinstance(scheme, str) and _SCHEME_RE.match(scheme)):
        raise TypeError(f"register_source({scheme!r}): a scheme is lower-case letters, digits, '+', '-', '.'")
    for key in options.SOURCE_KEYS:
        if key not in CONFIG_KEYS:
            raise TypeError(f"register_source({scheme!r}): {options.__name__}.SOURCE_KEYS has {key!r}, "
                            f"not a [source] key; expected some of {', '.join(CONFIG_KEYS)}")
        if key not in options.__struct_fields__:
            raise TypeError(f"register_source({scheme!r}): {options.__name__}.SOURCE_KEYS has {key!r} "
                            f"but no field {key!r} to take it")
    name = name or scheme

    def deco(target: Any) -> Any:
        load = (lambda: target) if isinstance(target, type) else target
        entry = _Entry(scheme, name, load, options, when)
        if when is None:
            old = _DEFAULTS.get(scheme)
            if old is not None and old.name != name:
                raise SourceError(f"source scheme {scheme!r} is already registered (as {old.name!r}); "
                                  "a second one needs when=")
            _DEFAULTS[scheme] = entry
        else:
            if scheme not in _DEFAULTS:
                raise SourceError(f"source {name!r}: a variant (when=) of scheme {scheme!r}, which has no "
                                  "default source yet; register that first")
            variants = _VARIANTS.setdefault(scheme, [])
            variants[:] = [e for e in variants if e.name != name] + [entry]
        return target

    return deco


def source_schemes() -> list[str]:
    """Registered schemes, in registration order (the built-ins first)."""
    return list(_DEFAULTS)


def _valid() -> str:
    return ", ".join(_DEFAULTS)


def _entry(scheme: str, rest: str) -> _Entry:
    try:
        default = _DEFAULTS[scheme]
    except KeyError:
        raise SourceError(f"unknown source scheme {scheme!r}; valid schemes: {_valid()}") from None
    for variant in _VARIANTS.get(scheme, ()):
        if variant.when(rest):
            return variant
    return default


def _split(uri: Any) -> tuple[str, str]:
    if not isinstance(uri, str) or ":" not in uri:
        raise SourceError(f"source {uri!r}: expected SCHEME:...; valid schemes: {_valid()}")
    scheme, rest = uri.split(":", 1)
    if scheme not in _DEFAULTS:
        raise SourceError(f"source {uri!r}: unknown scheme {scheme!r}; valid schemes: {_valid()}")
    return scheme, rest


def _factory(scheme: str, rest: str = "") -> type:
    """The class that builds ``scheme:rest``."""
    return _entry(scheme, rest).load()


def source_options_type(uri: str) -> type[SourceOptions]:
    """The Options type `uri`'s source is built from (imports no source class)."""
    return _entry(*_split(uri)).options


def _accepts(entry: _Entry) -> str:
    """Its own options first, then the ThreadedSource ones."""
    fields = entry.options.__struct_fields__
    base = SourceOptions.__struct_fields__
    return ", ".join([f for f in fields if f not in base] + [f for f in fields if f in base])


def _label(entry: _Entry) -> str:
    return f"a {entry.scheme}: source" + ("" if entry.name == entry.scheme else f" ({entry.name})")


def _convert(entry: _Entry, values: dict, where: str) -> SourceOptions:
    """values -> the entry's Options. `where`: how a key is named ('source.' for [source])."""
    try:
        return msgspec.convert(values, entry.options)
    except msgspec.ValidationError as exc:
        text, sep, at = str(exc).rpartition(" - at `$.")
        text, at = (text, at.rstrip("`")) if sep else (str(exc), "")
        if text.startswith("Object contains unknown field"):
            key = text.split("`")[1]
            raise SourceError(f"{where}{key}: unknown option for {_label(entry)}; "
                              f"it accepts {_accepts(entry)}") from None
        key = at.split(".")[0].split("[")[0]
        shown = f"{where}{key} = {values[key]!r}" if key in values else f"{where}{at or '?'}"
        raise ConfigError(f"{shown}: {text} ({_label(entry)})") from None


def source_options(uri: str, **options: Any) -> SourceOptions:
    """Validate keyword options into `uri`'s scheme's Options: an unknown option is a
    SourceError naming it and what the scheme accepts, a bad value a ConfigError naming it."""
    return _convert(_entry(*_split(uri)), options, f"source {uri!r}: ")


def _build(entry: _Entry, rest: str, opts: SourceOptions) -> FrameSource:
    cls = entry.load()
    if not (isinstance(cls, type) and issubclass(cls, FrameSource)):
        raise SourceError(f"source {entry.name!r}: its loader returned {cls!r}, not a FrameSource subclass")
    return cls(rest, **{f: getattr(opts, f) for f in entry.options.__struct_fields__})


def open_source(uri: str, **options: Any) -> FrameSource:
    """Parse ``SCHEME:REST`` and build the (not yet started) source from the scheme's Options
    (``options`` are its fields: see the Options classes above). Unknown scheme or option ->
    SourceError listing the valid ones; a bad value -> ConfigError naming it; a missing file ->
    SourceError naming the path."""
    scheme, rest = _split(uri)
    entry = _entry(scheme, rest)
    return _build(entry, rest, _convert(entry, options, f"source {uri!r}: "))


def source_from_config(section: Any) -> FrameSource:
    """The [source] section (streamcad.config.SourceConfig) -> its (not yet started) source.
    A key the scheme does not honour (its Options' SOURCE_KEYS), set to anything but its
    default, is a ConfigError naming the key, the scheme and the keys it takes."""
    scheme, rest = _split(section.uri)
    entry = _entry(scheme, rest)
    defaults = {f.name: f.default for f in msgspec.structs.fields(type(section))}
    keys = [k for k in defaults if k != "uri" and not k.startswith("reconnect_")]
    takes = entry.options.SOURCE_KEYS
    for key in keys:
        value = getattr(section, key)
        if key not in takes and value != defaults[key]:
            raise ConfigError(f"source.{key} = {value!r}: {_label(entry)} cannot honour it; "
                              f"{scheme}: takes {', '.join(takes) or 'none of them'} (of {', '.join(keys)})")
    values: dict[str, Any] = {k: getattr(section, k) for k in takes if getattr(section, k) is not None}
    values["reconnect"] = ReconnectPolicy(initial_s=section.reconnect_initial_s, max_s=section.reconnect_max_s,
                                          max_attempts=section.reconnect_max_attempts)
    return _build(entry, rest, _convert(entry, values, "source."))


# ----------------------------------------------------------------------------- the built-ins
# Each loader imports its class when a source of that scheme is built (cv2 is imported there).
@register_source("file", FileOptions)
def _file_source():
    from streamcad.sources.capture import FileSource

    return FileSource


@register_source("file", RecordingOptions, name="recording", when=lambda rest: bool(rest) and Path(rest).expanduser().is_dir())
def _recording_source():
    from streamcad.recording import RecordingSource

    return RecordingSource


@register_source("device", DeviceOptions)
def _device_source():
    from streamcad.sources.capture import DeviceSource

    return DeviceSource


@register_source("url", UrlOptions)
def _url_source():
    from streamcad.sources.capture import UrlSource

    return UrlSource


@register_source("gst", GstOptions)
def _gst_source():
    from streamcad.sources.capture import GstSource

    return GstSource


@register_source("sweep", SweepOptions)
def _sweep_source():
    from streamcad.sources.sweep import SweepSource

    return SweepSource


SCHEMES = tuple(_DEFAULTS)  # the built-in schemes; source_schemes() also lists registered ones
