"""The Sink interface: where a pipeline's finished messages (and, if asked for, its frames) go.

Data flow::

    publish thread: ScoreStream (streamcad.messages) builds Score / Status (seq, stamps, validated)
        ──► for each sink: sink.write_score(msg) / sink.write_status(msg)      (same msg, same seq)
        ──► sink.poll() > 0 (e.g. a new ZeroMQ subscriber) ──► one Status now, to every sink
        ──► sink.write_frame(frame) before its score, only for sinks with wants_frames = True

A sink only delivers or keeps messages; it never builds, re-stamps or re-numbers one (the
ScoreStream does, once, so every output agrees). It must not block the publish thread: a sink
that cannot take a message now drops it and counts it in ``dropped`` (``Pipeline.dropped`` sums
them; the status' ``counters.dropped_publish`` stays the ZeroMQ publisher's own, what a
subscriber sees as gaps; any other sink that drops says so in the log, rate-limited: see
streamcad.ratelimit). Every call comes from the one publish thread (ZeroMQ sockets are not
thread-safe); a sink that does slow work (disk, network) hands it to its own thread through a
bounded queue.

Implementations: ``streamcad.transport.Publisher`` (ZeroMQ XPUB, the wire protocol of
docs/PROTOCOL.md), ``streamcad.recording.Recorder`` (a session on disk), and
``streamcad.sinks.memory.MemorySink`` (keeps everything in lists: the fake for tests, shipped).

How to add a sink (e.g. OpenIGTLink, a preview stream):

1. Subclass ``Sink``; set ``name``; implement ``write_score``, ``write_status`` and ``close``
   (idempotent). Return False from a write you dropped and count it in ``self.dropped``.
   Acquire resources in ``__init__`` or ``open()`` (both run before the first message; errors
   there are ours, a ``StreamcadError`` subclass with one line naming what was wrong).
2. Need frames? Set ``wants_frames = True`` and implement ``write_frame(frame)``: it is called
   with the delivered ``streamcad.sources.Frame`` (gray uint8 image, index, t_capture_ns, chroma)
   just before that frame's score. The image is shared: copy it if you keep it past the call.
3. Need to trigger a status (a client joined)? Return the number of joins from ``poll()``.
   Need the model's saliency map of each frame (streamcad.sinks.preview)? Set
   ``wants_saliency = True`` and implement ``write_saliency(frame_index, saliency)``: called
   just before that frame's score with the (h, w) map, or None when the frame was not scored.
4. Declare its options: ``class MyOptions(SinkOptions)``, typed fields with defaults (value
   constraints as ``Annotated[int, msgspec.Meta(ge=1)]``; unknown keys are errors naming them).
5. Register one factory: ``@register_sink("name", MyOptions, section="name")`` on
   ``def build(options: MyOptions, context: dict) -> Sink | None`` (None: not configured, e.g.
   ``enabled = false``). ``context`` holds what the run knows besides the options: ``config``
   (the RunConfig), ``scores`` (the ScoreStream), ``model``, ``source``, ``model_path`` and the
   sinks built before it by name. ``section`` names the RunConfig field (one line in
   streamcad/config.py: ``name: MyOptions = MyOptions()``) that ``open_sinks`` builds it from; a
   sink without one is built by code: ``build_sink("name", {...})``. Put the module in
   ``streamcad.sinks.__init__``'s import list, and test it against ``MemorySink``: both must
   see the same messages.

The registry (this module): name -> (factory, options type, config section), in registration
order = the order messages are written. Keep a sink module's top level light (numpy, msgspec):
streamcad.config imports the options types from it; import the heavy library in the class.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from streamcad.errors import ConfigError, StreamcadError

if TYPE_CHECKING:  # type hints only: the interface imports nothing heavy
    from streamcad.messages import Score, Status
    from streamcad.sources.base import Frame

__all__ = ["Sink", "SinkOptions", "register_sink", "sink_names", "sink_options", "build_sink"]


class Sink(abc.ABC):
    """One output of the pipeline. See the module docstring for the contract."""

    name: str = "sink"
    wants_frames: bool = False  # True: write_frame() gets every delivered frame before its score

    # counters; a subclass may make them properties
    written: int = 0  # messages delivered / kept
    dropped: int = 0  # messages it could not take (full queue, full link); never silent

    def open(self) -> None:  # noqa: B027 (optional hook: most sinks open in __init__)
        """Acquire what the sink needs before the first message. Idempotent. Default: nothing."""

    @abc.abstractmethod
    def write_score(self, msg: Score) -> bool:
        """Deliver one Score. True if taken, False if dropped (and counted)."""

    @abc.abstractmethod
    def write_status(self, msg: Status) -> bool:
        """Deliver one Status. True if taken, False if dropped (and counted)."""

    def write_frame(self, frame: Frame) -> bool:
        """The delivered frame of the next score (only called when ``wants_frames``)."""
        return False

    def poll(self) -> int:
        """Housekeeping between messages (called at least every 50 ms by a running pipeline).
        Returns how many clients joined since the last call: > 0 makes the pipeline send a
        Status at once, to every sink."""
        return 0

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and release, bounded in time. Idempotent."""

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- the registry


class SinkOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base of a sink's options: a frozen, strict msgspec Struct (unknown keys are errors)."""


@dataclass(frozen=True)
class _Entry:
    factory: Callable[[Any, dict], Sink | None]
    options: type[SinkOptions]
    section: str | None  # the RunConfig section it is built from; None = built by code only


_SINKS: dict[str, _Entry] = {}


def register_sink(name: str, options: type[SinkOptions], section: str | None = None) -> Callable:
    """Decorator on ``factory(options, context) -> Sink | None``: make it the builder of sink
    `name` from `options` (a SinkOptions subclass), read from RunConfig's `section` when given."""
    if not (isinstance(options, type) and issubclass(options, SinkOptions)):
        raise TypeError(f"register_sink({name!r}) expects a SinkOptions subclass; got {options!r}")

    def deco(factory: Callable) -> Callable:
        old = _SINKS.get(name)
        if old is not None and old.factory is not factory:
            raise StreamcadError(f"sink name {name!r} is already registered by {old.factory.__qualname__}")
        _SINKS[name] = _Entry(factory, options, section)
        return factory

    return deco


def sink_names(configured: bool = False) -> list[str]:
    """Registered sink names in write order; configured=True: only those built from a RunConfig section."""
    return [n for n, e in _SINKS.items() if e.section or not configured]


def _entry(name: str) -> _Entry:
    try:
        return _SINKS[name]
    except KeyError:
        raise StreamcadError(f"unknown sink {name!r}; expected one of {', '.join(_SINKS)}") from None


def sink_options(name: str, values: dict | SinkOptions | None = None) -> SinkOptions:
    """Validate `values` into sink `name`'s options. ConfigError naming the key (as
    ``section.key``), the sink and the keys it accepts."""
    entry = _entry(name)
    if isinstance(values, entry.options):
        return values
    if isinstance(values, SinkOptions):
        raise ConfigError(f"sink {name!r}: expected {entry.options.__name__} options; got {type(values).__name__}")
    where = entry.section or name
    accepts = ", ".join(entry.options.__struct_fields__)
    try:
        return msgspec.convert(values or {}, entry.options)
    except msgspec.ValidationError as exc:
        text, sep, at = str(exc).rpartition(" - at `$.")
        text, at = (text, at.rstrip("`")) if sep else (str(exc), "")
        if text.startswith("Object contains unknown field"):
            key = text.split("`")[1]
            raise ConfigError(f"{where}.{key}: unknown key for sink {name!r}; it accepts {accepts}") from None
        raise ConfigError(f"{where}.{at or '?'}: {text} (sink {name!r})") from None
    except ValueError as exc:  # an Options __post_init__ refusing a combination
        raise ConfigError(f"{where}: {exc} (sink {name!r})") from None


def build_sink(name: str, options: dict | SinkOptions | None = None, context: dict | None = None) -> Sink | None:
    """Build sink `name` from its (validated) options; None when the options leave it off. Not opened."""
    entry = _entry(name)
    return entry.factory(sink_options(name, options), {} if context is None else context)
