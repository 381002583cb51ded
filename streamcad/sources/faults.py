"""Fault injection for tests and soak runs: wrap any ThreadedSource's hooks with scheduled faults.

    inner._grab() --(FaultySource._grab: stall | drop | corrupt | resize | disconnect)--> reader

    src = FaultySource(open_source("sweep:", pace="native"),
                       [(30, "stall", {"seconds": 1.0}), (2.5, "disconnect", {"seconds": 0.8})])
    src = FaultySource(open_source("file:clip.mp4"), RandomFaults(seed=1, rates={"drop": 0.02}))

A schedule entry ``(at, kind, params)`` fires once: ``at`` an int is the wrapper's grab count,
a float is seconds since its first grab. Kinds and params:

- ``stall``      seconds (float, ``math.inf`` = hang until close): _grab() blocks, like a hung
                 device; longer than hang_timeout_s makes the watchdog abandon the reader.
- ``drop``       count: that many frames are read from the inner source and thrown away.
- ``corrupt``    count, mode ('empty' | 'dtype' | 'shape' | 'garbage' | 'cycle'): the next
                 ``count`` grabs return broken buffers instead of frames (the reader rejects them).
- ``resize``     size (w, h) or None: from now on frames are resized (None = native again).
- ``disconnect`` seconds: grabs fail and re-opens raise SourceError for that long, forcing the
                 reconnect path.

Each fault that fires is recorded in ``events`` (FaultEvent: kind, start/end monotonic ns,
frames lost), so recovery time = first frame captured after ``t_end_ns``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamcad.errors import ConfigError, SourceError
from streamcad.sources.base import Frame, SourceInfo, ThreadedSource

__all__ = ["FAULT_KINDS", "Fault", "FaultEvent", "RandomFaults", "FaultySource", "recovery_s"]

log = logging.getLogger(__name__)

FAULT_KINDS = ("stall", "drop", "corrupt", "resize", "disconnect")
CORRUPT_MODES = ("empty", "dtype", "shape", "garbage")


@dataclass(frozen=True)
class Fault:
    at: int | float  # int: grab count of the wrapper; float: seconds since its first grab
    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ConfigError(f"fault kind {self.kind!r}: expected one of {', '.join(FAULT_KINDS)}")
        mode = self.params.get("mode", "cycle")
        if self.kind == "corrupt" and mode not in CORRUPT_MODES + ("cycle",):
            raise ConfigError(f"corrupt mode {mode!r}: expected one of {CORRUPT_MODES + ('cycle',)}")


@dataclass
class FaultEvent:
    kind: str
    params: dict[str, Any]
    grab: int  # wrapper grab count when it fired
    t_start_ns: int
    t_end_ns: int  # when the fault stopped acting (stall woke, window closed, last bad frame)
    frames_lost: int = 0  # inner frames that never reached the reader (drop, corrupt)


class RandomFaults:
    """Seeded random schedule: each grab draws each fault kind with probability rates[kind]."""

    def __init__(self, seed: int = 0, rates: dict[str, float] | None = None, *,
                 stall_s: tuple[float, float] = (0.2, 1.0), disconnect_s: tuple[float, float] = (0.2, 1.0),
                 drop: tuple[int, int] = (1, 10), corrupt: tuple[int, int] = (1, 5),
                 sizes: Sequence[tuple[int, int] | None] = ((640, 480), None)):
        rates = dict(rates or {})
        bad = sorted(set(rates) - set(FAULT_KINDS))
        if bad:
            raise ConfigError(f"RandomFaults rates: unknown kind(s) {bad}; expected {FAULT_KINDS}")
        self.rates = rates
        self.rng = np.random.default_rng(seed)
        self.stall_s, self.disconnect_s, self.drop, self.corrupt = stall_s, disconnect_s, drop, corrupt
        self.sizes = list(sizes)

    def draw(self, grab: int) -> list[Fault]:
        out = []
        for kind in FAULT_KINDS:
            if self.rng.random() >= self.rates.get(kind, 0.0):
                continue
            if kind == "stall":
                p = {"seconds": float(self.rng.uniform(*self.stall_s))}
            elif kind == "disconnect":
                p = {"seconds": float(self.rng.uniform(*self.disconnect_s))}
            elif kind == "drop":
                p = {"count": int(self.rng.integers(self.drop[0], self.drop[1] + 1))}
            elif kind == "corrupt":
                p = {"count": int(self.rng.integers(self.corrupt[0], self.corrupt[1] + 1)), "mode": "cycle"}
            else:
                p = {"size": self.sizes[int(self.rng.integers(len(self.sizes)))]}
            out.append(Fault(grab, kind, p))
        return out


def _as_fault(item: Fault | tuple) -> Fault:
    if isinstance(item, Fault):
        return item
    at, kind, *rest = item
    return Fault(at, kind, dict(rest[0]) if rest else {})


class FaultySource(ThreadedSource):
    """Wraps ``inner`` (not started) and injects faults into its _grab/_open. Inherits the inner
    source's reconnect policy and timeouts unless given here."""

    def __init__(self, inner: ThreadedSource, schedule: Sequence[Fault | tuple] | RandomFaults,
                 **kwargs):
        if not isinstance(inner, ThreadedSource):
            raise ConfigError(f"FaultySource: expected a ThreadedSource, got {type(inner).__name__}")
        opts = {"reconnect": inner.reconnect_policy, "stale_after_s": inner.stale_after_s,
                "hang_timeout_s": inner.hang_timeout_s, "open_timeout_s": inner.open_timeout_s}
        opts.update(kwargs)
        super().__init__(f"faulty:{inner.uri}", **opts)
        self.inner = inner
        self.lossless = inner.lossless
        inner._is_abandoned = self._is_abandoned  # the inner hooks run on our reader threads
        self._random = schedule if isinstance(schedule, RandomFaults) else None
        self._pending = [] if self._random else [_as_fault(f) for f in schedule]
        self._events: list[FaultEvent] = []
        self._n = 0
        self._t0: int | None = None
        self._down_until = 0  # monotonic ns; disconnect window end
        self._corrupt_left = 0
        self._corrupt_mode = "cycle"
        self._corrupt_event: FaultEvent | None = None
        self._size: tuple[int, int] | None = None
        self._unblock = threading.Event()
        self._bad_rng = np.random.default_rng(0)

    @property
    def events(self) -> list[FaultEvent]:
        with self._lock:
            return [dataclasses.replace(e) for e in self._events]

    def _record(self, ev: FaultEvent) -> FaultEvent:
        with self._lock:
            self._events.append(ev)
        log.info("fault injected into %s: %s %s at grab %d", self.inner.uri, ev.kind, ev.params, ev.grab)
        return ev

    # ---- hooks ---------------------------------------------------------------------------
    def _open(self) -> SourceInfo:
        if time.monotonic_ns() < self._down_until:
            raise SourceError(f"{self.uri}: simulated disconnect (device gone)")
        info = self.inner._open()
        return dataclasses.replace(info, uri=self.uri)

    def _release(self) -> None:
        self.inner._release()

    def _at_end(self) -> bool:
        return self.inner._at_end()

    def close(self) -> None:
        self._unblock.set()  # wake a stalled grab so no thread is left hanging in a test
        self.inner._stop.set()
        super().close()

    def _due(self, n: int, now: int) -> list[Fault]:
        if self._random is not None:
            return self._random.draw(n)
        elapsed = (now - self._t0) / 1e9 if self._t0 is not None else 0.0
        due = [f for f in self._pending
               if (isinstance(f.at, float) and f.at <= elapsed) or (not isinstance(f.at, float) and f.at <= n)]
        for f in due:
            self._pending.remove(f)
        return due

    def _grab(self) -> np.ndarray | Frame | None:
        now = time.monotonic_ns()
        if self._t0 is None:
            self._t0 = now
        n = self._n
        self._n += 1
        if now < self._down_until:
            return None
        for f in self._due(n, now):
            p = f.params
            if f.kind == "stall":
                ev = self._record(FaultEvent("stall", p, n, now, now))
                secs = float(p.get("seconds", 1.0))
                self._unblock.wait(None if math.isinf(secs) else secs)
                ev.t_end_ns = time.monotonic_ns()
                if self._is_abandoned() or self._stop.is_set():
                    return None  # the watchdog moved on; do not touch the new capture
            elif f.kind == "drop":
                count = int(p.get("count", 1))
                for _ in range(count):
                    self.inner._grab()
                t = time.monotonic_ns()
                self._record(FaultEvent("drop", p, n, now, t, frames_lost=count))
            elif f.kind == "corrupt":
                self._corrupt_left = int(p.get("count", 1))
                self._corrupt_mode = p.get("mode", "cycle")
                self._corrupt_event = self._record(FaultEvent("corrupt", p, n, now, now))
            elif f.kind == "resize":
                size = p.get("size")
                self._size = None if size is None else (int(size[0]), int(size[1]))
                self._record(FaultEvent("resize", p, n, now, now))
            elif f.kind == "disconnect":
                secs = float(p.get("seconds", 1.0))
                self._down_until = now + int(secs * 1e9)
                self._record(FaultEvent("disconnect", p, n, now, self._down_until))
                return None
        raw = self.inner._grab()
        if raw is None:
            return None
        if self._corrupt_left > 0:
            self._corrupt_left -= 1
            ev = self._corrupt_event
            assert ev is not None
            ev.frames_lost += 1
            ev.t_end_ns = time.monotonic_ns()
            return self._corrupted(raw, ev.frames_lost - 1)
        if self._size is not None:
            return self._resized(raw, self._size)
        return raw

    def _corrupted(self, raw: np.ndarray | Frame, k: int) -> np.ndarray:
        img = raw.image if isinstance(raw, Frame) else raw
        mode = CORRUPT_MODES[k % len(CORRUPT_MODES)] if self._corrupt_mode == "cycle" else self._corrupt_mode
        if mode == "empty":
            return np.empty((0, 0, 3), np.uint8)
        if mode == "dtype":
            return img.astype(np.float32)
        if mode == "shape":
            return np.zeros(img.shape[:2] + (2,), np.uint8)  # (H, W, 2): no such pixel format
        return self._bad_rng.integers(0, 256, 4096, dtype=np.uint8)  # an undecoded byte buffer

    @staticmethod
    def _resized(raw: np.ndarray | Frame, size: tuple[int, int]) -> np.ndarray | Frame:
        import cv2

        img = raw.image if isinstance(raw, Frame) else raw
        h, w = img.shape[:2]
        out = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        if not isinstance(raw, Frame):
            return out
        roi = raw.roi
        if roi is not None:
            sx, sy = size[0] / w, size[1] / h
            roi = (round(roi[0] * sx), round(roi[1] * sy), round(roi[2] * sx), round(roi[3] * sy))
        return Frame(out, raw.t_capture_ns, raw.index, raw.chroma, raw.label, roi)


def recovery_s(event: FaultEvent, frame_times_ns: Sequence[int]) -> float | None:
    """Seconds from the end of a fault to the first frame captured after it (None if none)."""
    after = [t for t in frame_times_ns if t >= event.t_end_ns]
    return (min(after) - event.t_end_ns) / 1e9 if after else None
