"""Frame sources against real video files, real threads and a real HTTP server (no mocks)."""

from __future__ import annotations

import functools
import http.server
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamcad.errors import ConfigError, FrameError, SourceError
from streamcad.sources import SCHEMES, Frame, ReconnectPolicy, SourceState, open_source
from streamcad.sources.base import to_gray
from streamcad.sources.capture import fix_appsink, gstreamer_available

W, H = 160, 120


def encode_index(i: int) -> np.ndarray:
    """A BGR frame whose index is written as 8 big black/white blocks (survives lossy codecs),
    on a red background (so chroma > 0)."""
    img = np.zeros((H, W, 3), np.uint8)
    img[:] = (40, 40, 200)
    for b in range(8):
        if (i >> b) & 1:
            img[40:80, b * 20:(b + 1) * 20] = 255
        else:
            img[40:80, b * 20:(b + 1) * 20] = 0
    return img


def decode_index(gray: np.ndarray) -> int:
    return sum(1 << b for b in range(8) if gray[50:70, b * 20 + 5:b * 20 + 15].mean() > 128)


def write_video(path: Path, n: int, fps: float, fourcc: str = "mp4v") -> Path:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (W, H))
    assert vw.isOpened(), f"VideoWriter could not open {path} with {fourcc}"
    for i in range(n):
        vw.write(encode_index(i))
    vw.release()
    return path


def drain(src, timeout: float = 15.0) -> list[Frame]:
    frames, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        f = src.read(timeout=0.5)
        if f is not None:
            frames.append(f)
        elif src.ended:
            return frames
    raise AssertionError(f"source did not end within {timeout} s: {src.stats}")


@pytest.mark.parametrize("fourcc,ext", [("mp4v", ".mp4"), ("MJPG", ".avi")])
def test_file_roundtrip(tmp_path, fourcc, ext):
    path = write_video(tmp_path / f"clip{ext}", 40, 20.0, fourcc)
    with open_source(f"file:{path}", pace="none") as src:
        info = src.info
        assert (info.width, info.height) == (W, H)
        assert info.fps == pytest.approx(20.0)
        assert info.extra["frame_count"] == 40
        frames = drain(src)
        stats = src.stats
    assert src.state is SourceState.ENDED and src.ended
    assert stats.frames_grabbed == 40 and stats.frames_rejected == 0
    assert stats.frames_delivered + stats.frames_overwritten == 40
    assert frames[-1].index == 39  # the last frame stays in the slot until read
    idx = [f.index for f in frames]
    assert idx == sorted(set(idx))
    for f in frames:
        assert f.image.shape == (H, W) and f.image.dtype == np.uint8
        assert decode_index(f.image) == f.index
        assert f.chroma > 20  # red background
    assert src.read(timeout=5.0) is None  # ended: returns at once with nothing


def test_shared_recordings(video_dir):
    expect = {"clarius-ocular-short.mp4": (1280, 960, 25.0, 50),
              "butterfly-ocular-phantom.mp4": (776, 1080, 12.69, 369)}
    for name, (w, h, fps, n) in expect.items():
        with open_source(f"file:{video_dir / name}", pace="none") as src:
            assert (src.info.width, src.info.height) == (w, h)
            assert src.info.fps == pytest.approx(fps, abs=0.01)
            assert src.info.extra["frame_count"] == n
            if n <= 50:  # decode the short clip to the end; the long one only in part (CI time)
                frames = drain(src, timeout=60)
                assert src.stats.frames_grabbed == n
            else:
                frames = [f for f in (src.read(timeout=5.0) for _ in range(5)) if f is not None]
                assert len(frames) == 5
            assert frames[-1].image.shape == (h, w)
            assert frames[-1].chroma < 10  # grayscale scanner screen recording


def test_pacing_native_vs_none(tmp_path):
    path = write_video(tmp_path / "c.mp4", 100, 25.0)
    src = open_source(f"file:{path}", pace="native")
    src.start()
    t0 = time.monotonic()
    time.sleep(0.4)
    grabbed, elapsed = src.stats.frames_grabbed, time.monotonic() - t0
    src.close()
    # native pacing never runs ahead of the file's clock (1 frame at t=0, then one per 40 ms)
    assert 1 <= grabbed <= elapsed * 25.0 + 2
    with open_source(f"file:{path}", pace="none") as fast:
        drain(fast)
        assert fast.stats.frames_grabbed == 100


def test_pace_none_is_lossless_with_a_slow_consumer(tmp_path):
    """pace='none' on a recorded file: the reader waits for the consumer instead of decoding
    frames that would be overwritten; every frame arrives, in order, decoded content intact."""
    path = write_video(tmp_path / "c.avi", 30, 25.0, "MJPG")
    frames = []
    with open_source(f"file:{path}", pace="none", stale_after_s=0.05) as src:
        deadline = time.monotonic() + 15
        while not src.ended and time.monotonic() < deadline:
            time.sleep(0.02)  # a consumer slower than the decoder
            f = src.read(timeout=0.5)
            if f is not None:
                frames.append(f)
            # the reader is waiting for us, not stalled: never reported stale
            assert src.state is not SourceState.STALE
        stats = src.stats
    assert [f.index for f in frames] == list(range(30))
    assert [decode_index(f.image) for f in frames] == list(range(30))
    assert stats.frames_overwritten == 0 and stats.frames_grabbed == 30


def test_pace_none_sweep_is_lossless():
    with open_source("sweep:", pace="none", loop=True) as src:
        frames = []
        for _ in range(12):
            time.sleep(0.01)
            frames.append(src.read(timeout=2.0))
        grabbed, over = src.stats.frames_grabbed, src.stats.frames_overwritten
    assert [f.index for f in frames] == list(range(12))
    assert over == 0 and grabbed <= 13  # at most one frame rendered ahead, waiting in the slot


def test_latest_frame_semantics(tmp_path):
    fps = 50.0
    path = write_video(tmp_path / "c.mp4", 100, fps)
    ages, frames = [], []
    with open_source(f"file:{path}", pace="native") as src:
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            time.sleep(0.07)  # a consumer 3.5x slower than the source
            f = src.read(timeout=0.5)
            if f is not None:
                ages.append((time.monotonic_ns() - f.t_capture_ns) / 1e9)
                frames.append(f)
        stats = src.stats
    assert len(frames) >= 5
    # a queue would grow ~50 ms per read; the slot keeps the newest frame: age < 1 interval + margin
    assert max(ages) < 1 / fps + 0.15, ages
    assert stats.frames_overwritten > 0
    pending = stats.frames_grabbed - stats.frames_delivered - stats.frames_overwritten - stats.frames_rejected
    assert pending in (0, 1)
    gaps = np.diff([f.index for f in frames])
    assert gaps.min() >= 1 and gaps.mean() > 2


def test_loop(tmp_path):
    path = write_video(tmp_path / "c.mp4", 20, 20.0)
    frames = []
    with open_source(f"file:{path}", pace="none", loop=True) as src:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (not frames or frames[-1].index < 50):
            f = src.read(timeout=0.5)
            if f is not None:
                frames.append(f)
        assert src.state is SourceState.LIVE and not src.ended
    assert frames[-1].index >= 50
    for f in frames:
        assert decode_index(f.image) == f.index % 20


def test_errors(tmp_path):
    with pytest.raises(SourceError, match="valid schemes: file, device, url, gst, sweep"):
        open_source("rtmp2:whatever")
    with pytest.raises(SourceError, match="valid schemes"):
        open_source("no-scheme-here")
    missing = tmp_path / "nope.mp4"
    with pytest.raises(SourceError, match=str(missing)):
        open_source(f"file:{missing}")
    with pytest.raises(SourceError, match="expected device:N"):
        open_source("device:camera")
    src = open_source("device:/dev/video987")
    with pytest.raises(SourceError, match="/dev/video987"):
        src.start()
    assert src.state is SourceState.ERROR
    with pytest.raises(SourceError, match="/dev/video63"):
        open_source("device:63").start()
    with pytest.raises(SourceError, match="unknown option"):
        open_source(f"file:{write_video(tmp_path / 'c.mp4', 3, 10)}", speed=2)
    with pytest.raises(ConfigError, match="pace"):
        open_source(f"file:{tmp_path / 'c.mp4'}", pace="fast")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceError, match="junk.mp4"):
        open_source(f"file:{junk}").start()
    with pytest.raises(SourceError, match="read\\(\\) before start"):
        open_source(f"file:{tmp_path / 'c.mp4'}").read(0.1)
    with pytest.raises(SourceError, match="expected url:rtsp"):
        open_source("url:not a url")
    assert SCHEMES == ("file", "device", "url", "gst", "sweep")


def test_gst():
    if gstreamer_available():
        pytest.skip("OpenCV has GStreamer here; the 'no GStreamer' error cannot be exercised")
    with pytest.raises(SourceError, match="GStreamer"):
        open_source("gst:videotestsrc ! videoconvert ! appsink")


def test_fix_appsink():
    assert fix_appsink("videotestsrc ! videoconvert ! appsink") == (
        "videotestsrc ! videoconvert ! appsink drop=true max-buffers=1 sync=false")
    assert fix_appsink("v4l2src ! appsink max-buffers=2 name=s") == (
        "v4l2src ! appsink max-buffers=2 name=s drop=true sync=false")
    assert fix_appsink("rtspsrc location=rtsp://x ! decodebin").endswith(
        "decodebin ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false")
    with pytest.raises(SourceError, match="empty pipeline"):
        fix_appsink("  ")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


def test_http_stream(tmp_path):
    write_video(tmp_path / "x.mp4", 30, 15.0)
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        src = open_source(f"url:http://127.0.0.1:{port}/x.mp4", open_timeout_ms=5000, read_timeout_ms=5000)
        with src:
            assert (src.info.width, src.info.height) == (W, H)
            assert src.info.backend == "opencv:FFMPEG"
            got = []
            deadline = time.monotonic() + 15
            while len(got) < 10 and time.monotonic() < deadline:
                f = src.read(timeout=0.5)
                if f is not None:
                    got.append(f)
        assert len(got) >= 10
        for f in got:
            assert decode_index(f.image) == f.index % 30
    finally:
        server.shutdown()
        server.server_close()


def test_close_is_prompt_and_leaves_no_thread(tmp_path):
    path = write_video(tmp_path / "c.mp4", 50, 5.0)  # slow native pace: reader sleeps 200 ms
    before = set(threading.enumerate())
    src = open_source(f"file:{path}", pace="native")
    src.start()
    assert src.read(timeout=2.0) is not None
    t0 = time.monotonic()
    src.close()
    assert time.monotonic() - t0 < 1.0
    assert src.ended and src.read(0.1) is None
    leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leftover == []


def test_to_gray_validation():
    bgr = np.zeros((20, 30, 3), np.uint8)
    bgr[..., 2] = 200
    gray, chroma = to_gray(bgr)
    assert gray.shape == (20, 30) and gray.dtype == np.uint8 and chroma > 50
    assert gray[0, 0] == cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[0, 0]
    g2, c2 = to_gray(np.full((20, 30, 3), 77, np.uint8))
    assert c2 == 0.0 and (g2 == 77).all()
    assert to_gray(np.zeros((20, 30, 4), np.uint8))[0].shape == (20, 30)
    assert to_gray(np.zeros((20, 30, 1), np.uint8))[0].shape == (20, 30)
    for bad, msg in [(np.empty((0, 0, 3), np.uint8), "empty"), (np.zeros((20, 30), np.float32), "uint8"),
                     (np.zeros((20, 30, 2), np.uint8), "shape"), (np.zeros(4096, np.uint8), "shape"),
                     (np.zeros((2, 300), np.uint8), "too small"), ("frame", "numpy array")]:
        with pytest.raises(FrameError, match=msg):
            to_gray(bad)


def test_reconnect_policy():
    p = ReconnectPolicy()
    assert [p.delay(k) for k in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert p.max_attempts is None
    with pytest.raises(ConfigError):
        ReconnectPolicy(initial_s=3.0, max_s=2.0)
    with pytest.raises(ConfigError):
        ReconnectPolicy(max_attempts=0)


# ---- files that break, change size, sweeps with corrupt stills, back-off limits -------------

def _wait_ended(src, timeout: float = 15.0) -> list[Frame]:
    """Read until the source ends; fail if it has not within `timeout` s."""
    frames, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        f = src.read(timeout=0.2)
        if f is not None:
            frames.append(f)
        elif src.ended:
            return frames
    raise AssertionError(f"source did not end within {timeout} s: {src.stats}")


def _truncated_avi(tmp_path: Path, n: int = 60) -> Path:
    full = write_video(tmp_path / "full.avi", n, 25.0, "MJPG")
    data = full.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])  # the header still lists n frames; the index is gone
    return cut


@pytest.mark.parametrize("jpeg_packets", [True, False])
def test_truncated_file_ends_with_the_reason_not_an_endless_reconnect(tmp_path, caplog, jpeg_packets):
    """A truncated MJPG AVI (header says 60 frames, data stops near 30) used to log 'read
    failed; reconnecting' forever; now it is retried once and the source goes to ERROR naming
    the frame. Both read paths: JPEG packets decoded here, and OpenCV's own decoder."""
    from streamcad.sources.capture import FileSource

    path = _truncated_avi(tmp_path)
    src = FileSource(path, pace="none", reconnect=ReconnectPolicy(initial_s=0.01, max_s=0.05))
    if not jpeg_packets:
        src._jpeg = False  # what every non-JPEG codec takes: cv2's decoded frames
    with caplog.at_level("INFO", logger="streamcad.sources"), src:
        frames = _wait_ended(src)
        stats = src.stats
    assert stats.state is SourceState.ERROR
    assert "truncated or corrupt" in stats.error and "of the 60 its header lists" in stats.error
    assert 20 <= len(frames) < 60 and stats.reconnects <= 1
    assert [f.index for f in frames] == list(range(len(frames)))  # nothing replayed after the retry
    assert sum("read failed" in r.getMessage() for r in caplog.records) <= 1


def _concat_two_sizes(tmp_path: Path) -> Path:
    """One MJPEG AVI: 20 frames of 320x240 then 20 of 200x300 (FFmpeg concat, stream copy)."""
    import shutil
    import subprocess

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
    parts = []
    for k, (w, h) in enumerate(((320, 240), (200, 300))):
        part = tmp_path / f"part{k}.avi"
        vw = cv2.VideoWriter(str(part), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (w, h))
        for i in range(20):
            vw.write(np.full((h, w, 3), (40 + 5 * i, 90, 160), np.uint8))
        vw.release()
        parts.append(part)
    listing = tmp_path / "parts.txt"
    listing.write_text("".join(f"file '{p}'\n" for p in parts))
    out = tmp_path / "two_sizes.avi"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
                    "-c", "copy", str(out)], check=True, timeout=60)
    return out


def test_mid_file_size_change_is_reported_at_the_real_size(tmp_path):
    """OpenCV's FFmpeg backend alone delivers all 40 frames at 320x240 (the second half
    squashed); the source reads JPEG packets at their own size, counts the change and reports
    the new size."""
    path = _concat_two_sizes(tmp_path)
    cap = cv2.VideoCapture(str(path))
    shapes = set()
    while (got := cap.read())[0]:
        shapes.add(got[1].shape[:2])
    cap.release()
    assert shapes == {(240, 320)}  # the backend's own behaviour, which the source works around
    with open_source(f"file:{path}", pace="none") as src:
        assert src.info.extra["size_changes"] == "detected"
        frames = _wait_ended(src)
        stats, info = src.stats, src.info
    assert stats.state is SourceState.ENDED and stats.frames_rejected == 0
    assert [f.image.shape for f in frames[:20]] == [(240, 320)] * 20
    assert [f.image.shape for f in frames[20:]] == [(300, 200)] * 20
    assert stats.resolution_changes == 1 and (info.width, info.height) == (200, 300)


def test_codec_without_size_detection_says_so(tmp_path):
    path = write_video(tmp_path / "clip.mp4", 5, 20.0, "mp4v")
    with open_source(f"file:{path}", pace="none") as src:
        assert src.info.extra["size_changes"] == "undetectable"
        assert len(_wait_ended(src)) == 5


def _sweep_folder(tmp_path: Path, good: int, corrupt: int) -> Path:
    d = tmp_path / "stills"
    d.mkdir()
    rng = np.random.default_rng(1)
    for i in range(good):
        cv2.imwrite(str(d / f"g{i}.png"), rng.integers(0, 255, (120, 160), dtype=np.uint8))
    for i in range(corrupt):
        png = cv2.imencode(".png", rng.integers(0, 255, (120, 160), dtype=np.uint8))[1].tobytes()
        (d / f"c{i}.png").write_bytes(png[: len(png) // 3])  # truncated PNG: imread returns None
    return d


def test_sweep_skips_and_counts_a_corrupt_still(tmp_path):
    """One corrupt still among three: scoring used to stop for good at it (an endless reconnect
    on the same frame); now it leaves the rotation, counted, and frames keep coming."""
    d = _sweep_folder(tmp_path, good=2, corrupt=1)
    with open_source(f"sweep:{d}", pace="none", fps=10.0, dwell_s=0.5, transition_s=0.2, loop=False) as src:
        frames = _wait_ended(src, timeout=30)
        stats = src.stats
        renderer = src.renderer
    assert stats.state is SourceState.ENDED and stats.error is None
    assert stats.frames_rejected == 1 and len(renderer.corrupt) == 1 and renderer.corrupt[0].name == "c0.png"
    assert len(frames) == renderer.period == 2 * renderer.segment_frames  # one pass over the 2 good ones
    assert stats.frames_grabbed == stats.frames_rejected + stats.frames_delivered + stats.frames_overwritten


def test_sweep_of_only_corrupt_stills_is_an_error(tmp_path):
    d = _sweep_folder(tmp_path, good=0, corrupt=3)
    with open_source(f"sweep:{d}", pace="none", fps=10.0) as src:
        frames = _wait_ended(src)
        stats = src.stats
    assert frames == [] and stats.state is SourceState.ERROR
    assert "none of the 3 images decodes" in stats.error and stats.frames_rejected == 3


@pytest.mark.parametrize("field", ["initial_s", "max_s", "factor"])
def test_infinite_back_off_is_refused(field):
    """reconnect_*_s = inf used to kill the reader thread (Event.wait(inf) overflows) and the
    source never recovered."""
    kw = {"initial_s": 0.1, "max_s": 2.0, "factor": 2.0}
    kw[field] = float("inf")
    if field == "initial_s":
        kw["max_s"] = float("inf")
    with pytest.raises(ConfigError, match="finite"):
        ReconnectPolicy(**kw)
    assert ReconnectPolicy(initial_s=0.1, max_s=2.0).delay(5000) == 2.0  # 2**5000 overflows: capped
