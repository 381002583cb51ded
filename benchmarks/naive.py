"""The naive baseline's source: grab, in the caller's thread, with no reader thread.

The issue's naive loop is "read -> preprocess -> infer -> publish in one thread". streamcad's
sources always run a reader thread, so `Pipeline.run_sequential` on a real source would still
decode or render in parallel and flatter the baseline. `InlineSource` wraps a (not started)
ThreadedSource and calls its `_open` / `_grab` directly from `read()`, converting to gray and
stamping `t_capture_ns` exactly as the threaded reader does. Benchmarks only.
"""

from __future__ import annotations

import time

from streamcad.sources.base import Frame, SourceState, SourceStats, ThreadedSource, to_gray


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
        t_ns = time.monotonic_ns()
        img = raw.image if isinstance(raw, Frame) else raw
        gray, chroma = to_gray(img)
        self._n += 1
        if isinstance(raw, Frame):
            return Frame(gray, t_ns, raw.index, chroma, raw.label, raw.roi)
        return Frame(gray, t_ns, self._n - 1, chroma)

    @property
    def stats(self) -> SourceStats:
        return SourceStats(frames_grabbed=self._n, frames_delivered=self._n, state=self.state)

    def close(self) -> None:
        self.inner._release()
        self.ended = True
