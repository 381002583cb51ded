"""A frame source that costs nothing: frames rendered/decoded beforehand, delivered on a clock.

    sweep renderer | video file --(once, before the clock)--> K frames in memory
    read(timeout):
      paced (fps):  frame i "arrives" at t0 + i / fps (a capture card's DMA); read() waits for
                    the next due frame; frames that arrived while the pipeline was busy are
                    overwritten by the newest one (counted, as the real latest-frame sources do);
                    t_capture_ns = the arrival time, so queueing in the slot is inside the latency
      none:         the next frame at once (t_capture_ns = now): the pipeline's own maximum rate

Why: the sweep simulator renders a 1024x768 screen in ~4-10 ms of Python/OpenCV per frame in
its reader thread (at pace 'none' one frame ahead of the pipeline: sources read recorded media
losslessly), and that rendering competes for the same 2 cores as the pipeline. This source measures the pipeline alone; the real sources are measured
too, and tables say which is which. It implements streamcad.sources.FrameSource.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from streamcad.errors import SourceError
from streamcad.sources import Frame, FrameSource, SourceInfo, SourceState, SourceStats

__all__ = ["ReplaySource", "load_frames"]


def load_frames(uri: str, n: int = 64, seed: int = 0) -> list[Frame]:
    """The first `n` frames of 'sweep:' (rendered) or 'file:PATH' (decoded, looping if short)."""
    from streamcad.sources.base import to_gray

    if uri.startswith("sweep:"):
        from streamcad.sources.sweep import SAMPLE_DIR, SweepRenderer

        spec = uri.split(":", 1)[1]
        r = SweepRenderer(SAMPLE_DIR if spec in ("", "sample") else Path(spec), seed=seed)
        step = max(1, r.period // n)  # spread over the sweep: every image and transition
        return [r.render(i * step) for i in range(n)]
    if uri.startswith("file:"):
        import cv2

        path = uri.split(":", 1)[1]
        cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            raise SourceError(f"{uri}: OpenCV could not open it")
        frames = []
        try:
            while len(frames) < n:
                ok, img = cap.read()
                if not ok:
                    break
                gray, chroma = to_gray(img)
                frames.append(Frame(gray, 0, len(frames), chroma))
        finally:
            cap.release()
        if not frames:
            raise SourceError(f"{uri}: no frame could be decoded")
        return frames
    raise SourceError(f"replay source {uri!r}: expected 'sweep:' or 'file:PATH'")


class ReplaySource(FrameSource):
    """Deliver pre-loaded frames (looping) at `fps`, or as fast as read() is called (fps=None)."""

    def __init__(self, frames: list[Frame], fps: float | None = None, uri: str = "replay:") -> None:
        if not frames:
            raise SourceError("replay source: no frames")
        self.uri = uri
        self._frames = frames
        self._fps = fps
        self._info: SourceInfo | None = None
        self._state = SourceState.CONNECTING
        self._t0 = 0
        self._next = 0  # index of the next frame not yet delivered
        self._delivered = 0
        self._overwritten = 0
        self._closed = threading.Event()

    def start(self) -> SourceInfo:
        h, w = self._frames[0].image.shape
        self._info = SourceInfo(uri=self.uri, width=w, height=h, fps=float(self._fps or 0.0), fourcc="GREY",
                                backend="replay", extra={"frames_in_memory": len(self._frames)})
        self._t0 = time.monotonic_ns()
        self._state = SourceState.LIVE
        return self._info

    def read(self, timeout: float = 1.0) -> Frame | None:
        if self._info is None:
            raise SourceError("replay source: read() before start()")
        if self._closed.is_set():
            return None
        if self._fps is None:
            i, t_cap = self._next, time.monotonic_ns()
        else:
            period_ns = 1e9 / self._fps
            now = time.monotonic_ns()
            due = int((now - self._t0) // period_ns)  # newest frame that has arrived
            if due < self._next:  # nothing new yet: wait for frame self._next
                wait_s = (self._t0 + self._next * period_ns - now) / 1e9
                if wait_s > timeout:
                    self._closed.wait(timeout)
                    return None
                self._closed.wait(max(wait_s, 0.0))
                due = self._next
            self._overwritten += due - self._next  # arrived, never read: the newest wins
            i = due
            t_cap = int(self._t0 + i * period_ns)
        self._next = i + 1
        self._delivered += 1
        f = self._frames[i % len(self._frames)]
        return Frame(f.image, t_cap, i, f.chroma, f.label, f.roi)

    @property
    def info(self) -> SourceInfo | None:
        return self._info

    @property
    def state(self) -> SourceState:
        return self._state

    @property
    def stats(self) -> SourceStats:
        return SourceStats(frames_grabbed=self._delivered + self._overwritten, frames_delivered=self._delivered,
                           frames_overwritten=self._overwritten, state=self._state)

    def close(self) -> None:
        self._closed.set()
        self._state = SourceState.ENDED
