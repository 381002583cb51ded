"""The naive baseline's source: grab, in the caller's thread, with no reader thread.

The issue's naive loop is "read -> preprocess -> infer -> publish in one thread". streamcad's
sources always run a reader thread, so `Pipeline.run_sequential` on a real source would still
decode or render in parallel and flatter the baseline. `InlineSource` wraps a (not started)
ThreadedSource and calls its `_open` / `_grab` directly from `read()`, turning the grab into a
Frame with the threaded reader's own `frame_from_grab`. Benchmarks only.
"""

from __future__ import annotations

import time

from streamcad.sources.base import Frame, SourceState, SourceStats, ThreadedSource, frame_from_grab


class InlineSource:
    def __init__(self, inner: ThreadedSource) -> None:
        self.inner = inner
        self.info = None
        self.state = SourceState.CONNECTING
        self.ended = False
        self._n = 0

    def start(self):
        self.info = self.inner._open()
        self.state = SourceState.LIVE
        return self.info

    def read(self, timeout: float = 1.0) -> Frame | None:
        raw = self.inner._grab()
        if raw is None:
            self.ended = True
            self.state = SourceState.ENDED
            return None
        frame = frame_from_grab(raw, time.monotonic_ns(), self._n)
        self._n += 1
        return frame

    @property
    def stats(self) -> SourceStats:
        return SourceStats(frames_grabbed=self._n, frames_delivered=self._n, state=self.state)

    def close(self) -> None:
        self.inner._release()
        self.ended = True
