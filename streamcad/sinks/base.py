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
4. Register a builder in ``streamcad.sinks.SINKS`` if it is built from the config, and test it
   against ``MemorySink``: both must see the same messages.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type hints only: the interface imports nothing heavy
    from streamcad.messages import Score, Status
    from streamcad.sources.base import Frame

__all__ = ["Sink"]


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
