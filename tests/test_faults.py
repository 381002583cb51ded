"""Fault injection around a real sweep source and a real video file source: stale detection,
reconnect, rejected frames, resolution switches, hung reads, prompt close."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamcad.errors import ConfigError
from streamcad.sources import ReconnectPolicy, SourceState, open_source
from streamcad.sources.faults import FaultySource, RandomFaults, recovery_s

FPS = 40.0
W, H = 160, 120


def _encode(i: int) -> np.ndarray:
    img = np.full((H, W, 3), 90, np.uint8)
    for b in range(8):
        img[40:80, b * 20:(b + 1) * 20] = 255 if (i >> b) & 1 else 0
    return img


def _decode(gray: np.ndarray) -> int:
    return sum(1 << b for b in range(8) if gray[50:70, b * 20 + 5:b * 20 + 15].mean() > 128)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "clip.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    for i in range(200):
        vw.write(_encode(i))
    vw.release()
    return path


def make_inner(kind: str, clip: Path, **kw):
    if kind == "sweep":
        return open_source("sweep:", screen=(320, 240), fps=FPS, dwell_s=1.0, transition_s=0.3, **kw)
    return open_source(f"file:{clip}", pace="native", loop=True, **kw)


def run(src: FaultySource, seconds: float):
    """Consume for `seconds`; return frames, the longest read() call, stats, events, history."""
    frames, longest = [], 0.0
    src.start()
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            f = src.read(timeout=0.05)
            longest = max(longest, time.monotonic() - t0)
            if f is not None:
                frames.append(f)
        return frames, longest, src.stats, src.events, src.state_history
    finally:
        t0 = time.monotonic()
        src.close()
        assert time.monotonic() - t0 < 1.0


def states(history) -> list[SourceState]:
    return [s for _, s in history]


def after(frames, t_ns):
    return [f for f in frames if f.t_capture_ns >= t_ns]


SOURCES = ["sweep", "file"]


@pytest.mark.parametrize("kind", SOURCES)
def test_stall_goes_stale_then_live(kind, clip):
    src = FaultySource(make_inner(kind, clip), [(10, "stall", {"seconds": 1.2})])
    frames, longest, stats, events, hist = run(src, 2.2)
    (ev,) = events
    assert longest < 0.5  # read() has a timeout; the stalled grab never blocks it
    seq = states(hist)
    i = seq.index(SourceState.STALE)
    assert SourceState.LIVE in seq[:i] and SourceState.LIVE in seq[i:]
    last_before = max(f.t_capture_ns for f in frames if f.t_capture_ns < ev.t_start_ns + 1)
    t_stale = next(t for t, s in hist if s is SourceState.STALE)
    assert (t_stale - last_before) / 1e9 < max(3 / FPS, 0.5) + 0.5  # detected (generous margin)
    assert (t_stale - last_before) / 1e9 >= 0.45
    assert after(frames, ev.t_end_ns) and stats.reconnects == 0 and stats.readers_abandoned == 0


@pytest.mark.parametrize("kind", SOURCES)
def test_drop_skips_frames(kind, clip):
    src = FaultySource(make_inner(kind, clip), [(10, "drop", {"count": 12})])
    frames, _, stats, events, hist = run(src, 1.2)
    (ev,) = events
    assert ev.frames_lost == 12
    gaps = np.diff([f.index for f in frames])
    assert gaps.max() >= 13  # the 12 dropped frames show as a gap in the source index
    assert SourceState.RECONNECTING not in states(hist) and stats.reconnects == 0
    assert after(frames, ev.t_end_ns)
    if kind == "file":
        assert all(_decode(f.image) == f.index % 200 for f in frames)


@pytest.mark.parametrize("kind", SOURCES)
def test_corrupt_frames_are_rejected(kind, clip):
    src = FaultySource(make_inner(kind, clip), [(5, "corrupt", {"count": 8, "mode": "cycle"})])
    frames, _, stats, events, hist = run(src, 1.0)
    (ev,) = events
    assert stats.frames_rejected == 8 == ev.frames_lost
    assert stats.frames_grabbed == (stats.frames_rejected + stats.frames_delivered
                                    + stats.frames_overwritten + (1 if src._slot is not None else 0))
    assert after(frames, ev.t_end_ns) and stats.reconnects == 0
    assert all(f.image.dtype == np.uint8 and f.image.ndim == 2 for f in frames)


@pytest.mark.parametrize("kind", SOURCES)
def test_resize_mid_stream(kind, clip):
    inner = make_inner(kind, clip)
    native = (320, 240) if kind == "sweep" else (W, H)
    src = FaultySource(inner, [(8, "resize", {"size": (200, 150)}), (24, "resize", {"size": None})])
    frames, _, stats, events, _ = run(src, 1.2)
    shapes = [f.image.shape for f in frames]
    assert (150, 200) in shapes and shapes[-1] == native[::-1]
    assert stats.resolution_changes == 2 and stats.frames_rejected == 0
    assert (src.info.width, src.info.height) == native
    if kind == "sweep":
        small = [f for f in frames if f.image.shape == (150, 200)]
        x, y, w, h = inner.renderer.roi
        assert small[0].roi == (round(x * 200 / 320), round(y * 150 / 240), round(w * 200 / 320), round(h * 150 / 240))


@pytest.mark.parametrize("kind", SOURCES)
def test_disconnect_reconnects(kind, clip):
    src = FaultySource(make_inner(kind, clip), [(10, "disconnect", {"seconds": 0.6})])
    frames, _, stats, events, hist = run(src, 2.0)
    (ev,) = events
    seq = states(hist)
    i = seq.index(SourceState.RECONNECTING)
    assert SourceState.LIVE in seq[:i] and SourceState.LIVE in seq[i:]
    assert stats.reconnects == 1 and stats.reconnect_attempts >= 2  # re-opens fail while down
    resumed = after(frames, ev.t_end_ns)
    assert resumed and recovery_s(ev, [f.t_capture_ns for f in frames]) < ReconnectPolicy().max_s + 1.0
    if kind == "file":  # the file is reopened where it stopped: no frame skipped, none repeated
        assert all(_decode(f.image) == f.index % 200 for f in frames)
        before = [f.index for f in frames if f.t_capture_ns < ev.t_start_ns]
        assert resumed[0].index - before[-1] <= 2


@pytest.mark.parametrize("kind", SOURCES)
def test_hung_grab_is_abandoned(kind, clip):
    before = set(threading.enumerate())
    src = FaultySource(make_inner(kind, clip, hang_timeout_s=0.6), [(10, "stall", {"seconds": math.inf})])
    frames, longest, stats, events, hist = run(src, 2.2)
    assert longest < 0.5
    seq = states(hist)
    i = seq.index(SourceState.STALE)
    assert SourceState.RECONNECTING in seq[i:] and src.state is SourceState.ENDED  # (closed)
    assert SourceState.LIVE in seq[seq.index(SourceState.RECONNECTING):]
    assert stats.readers_abandoned == 1 and stats.reconnects == 1
    (ev,) = events
    assert after(frames, ev.t_start_ns + int(0.6e9))  # frames resume on a fresh reader
    deadline = time.monotonic() + 2.0  # close() woke the abandoned daemon; it exits by itself
    while time.monotonic() < deadline and [t for t in set(threading.enumerate()) - before if t.is_alive()]:
        time.sleep(0.05)
    assert [t for t in set(threading.enumerate()) - before if t.is_alive()] == []


def test_gives_up_after_max_attempts(clip):
    inner = make_inner("sweep", clip, reconnect=ReconnectPolicy(initial_s=0.05, max_s=0.1, max_attempts=3))
    src = FaultySource(inner, [(5, "disconnect", {"seconds": 30.0})])
    frames, _, stats, _, hist = run(src, 1.0)
    assert stats.state is SourceState.ERROR and "gave up after 3" in stats.error
    assert stats.reconnect_attempts == 3 and stats.reconnects == 0
    assert src.ended and src.read(0.1) is None


def test_random_faults_soak(clip):
    sched = RandomFaults(seed=7, rates={"drop": 0.03, "corrupt": 0.03, "resize": 0.02, "stall": 0.01,
                                         "disconnect": 0.01},
                         stall_s=(0.1, 0.3), disconnect_s=(0.1, 0.3), sizes=((200, 150), None))
    src = FaultySource(make_inner("file", clip), sched)
    frames, longest, stats, events, hist = run(src, 2.5)
    assert longest < 0.5 and len(events) >= 3
    assert stats.frames_rejected == sum(e.frames_lost for e in events if e.kind == "corrupt")
    assert stats.reconnects == sum(1 for e in events if e.kind == "disconnect" and e.t_end_ns < hist[-1][0])
    assert all(_decode(cv2.resize(f.image, (W, H))) == f.index % 200 for f in frames)
    with pytest.raises(ConfigError, match="unknown kind"):
        RandomFaults(rates={"explode": 1.0})
    with pytest.raises(ConfigError, match="fault kind"):
        FaultySource(make_inner("sweep", clip), [(1, "explode")])
