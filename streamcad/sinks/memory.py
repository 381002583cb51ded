"""MemorySink: a real Sink that keeps every message (and, if asked, every frame) in lists.

The fake that ships with the interface (as httpx ships MockTransport): tests and tools attach
it next to the real sinks and compare. It can also misbehave on purpose: ``capacity`` makes it
drop (and count) everything after N messages, ``join()`` makes the next ``poll()`` report a
client that joined, as a ZeroMQ subscriber would.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from streamcad.errors import StreamcadError
from streamcad.messages import Score, Status
from streamcad.sinks.base import Sink, SinkOptions, register_sink

__all__ = ["MemorySink", "MemoryOptions"]


class MemoryOptions(SinkOptions):
    capacity: Annotated[int, msgspec.Meta(ge=0)] | None = None  # keep this many messages, drop (and count) the rest
    wants_frames: bool = False  # also keep a copy of every delivered frame


class MemorySink(Sink):
    """Keeps ``messages`` (Score and Status, in order) and, with ``wants_frames``, ``frames``
    as (index, t_capture_ns, image copy) tuples."""

    name = "memory"

    def __init__(self, *, capacity: int | None = None, wants_frames: bool = False) -> None:
        if capacity is not None and (not isinstance(capacity, int) or capacity < 0):
            raise StreamcadError(f"MemorySink capacity: expected None or an int >= 0, got {capacity!r}")
        self.capacity = capacity
        self.wants_frames = bool(wants_frames)
        self.messages: list[Score | Status] = []
        self.frames: list[tuple] = []
        self.written = 0
        self.dropped = 0
        self.opened = 0
        self.closed = False
        self._joins = 0

    @property
    def scores(self) -> list[Score]:
        return [m for m in self.messages if isinstance(m, Score)]

    @property
    def statuses(self) -> list[Status]:
        return [m for m in self.messages if isinstance(m, Status)]

    def open(self) -> None:
        self.opened += 1

    def _keep(self, msg) -> bool:
        if self.closed:
            raise StreamcadError("MemorySink: write after close()")
        if self.capacity is not None and len(self.messages) >= self.capacity:
            self.dropped += 1
            return False
        self.messages.append(msg)
        self.written += 1
        return True

    def write_score(self, msg: Score) -> bool:
        if not isinstance(msg, Score):
            raise StreamcadError(f"MemorySink.write_score: expected a Score, got {type(msg).__name__}")
        return self._keep(msg)

    def write_status(self, msg: Status) -> bool:
        if not isinstance(msg, Status):
            raise StreamcadError(f"MemorySink.write_status: expected a Status, got {type(msg).__name__}")
        return self._keep(msg)

    def write_frame(self, frame) -> bool:
        self.frames.append((frame.index, frame.t_capture_ns, frame.image.copy()))
        return True

    def join(self, n: int = 1) -> None:
        """Pretend n clients joined: the next poll() returns n."""
        self._joins += n

    def poll(self) -> int:
        n, self._joins = self._joins, 0
        return n

    def close(self) -> None:
        self.closed = True


@register_sink("memory", MemoryOptions)  # no config section: built by code (tests, tools)
def build(options: MemoryOptions, context: dict) -> MemorySink:
    return MemorySink(capacity=options.capacity, wants_frames=options.wants_frames)
