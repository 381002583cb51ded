"""url: sources against real network servers on 127.0.0.1: an RTSP server (RTP from FFmpeg,
relayed by tests/helpers_stream.RtspServer) and FFmpeg's own HTTP server (MPEG-TS). Frames
arrive, a stall is detected, a server restart is reconnected with back-off, and `streamcad run
--frames N` on a live stream ends cleanly. Skipped where the ffmpeg binary is missing."""

from __future__ import annotations

import socket
import time

import pytest

from streamcad.sources import ReconnectPolicy, SourceState, open_source
from tests.helpers_stream import (
    HttpFeed,
    RtpFeed,
    RtspServer,
    free_port,
    make_clip,
    need_ffmpeg,
    wait_state,
)

BACKOFF = ReconnectPolicy(initial_s=0.05, factor=2.0, max_s=0.4)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    need_ffmpeg()
    return make_clip(tmp_path_factory.mktemp("net") / "clip.mp4")


def _frames(src, n: int, timeout: float = 15.0) -> list:
    got = []
    wait_state(src, [SourceState.LIVE], timeout)
    while len(got) < n:
        f = src.read(timeout=timeout)
        assert f is not None, f"only {len(got)} of {n} frames: {src.stats}"
        got.append(f)
    return got


def _check_outage_cycle(src, stall, resume, stop, restart) -> None:
    frames = _frames(src, 10)
    assert all(f.image.shape == (240, 320) for f in frames)
    assert (src.info.width, src.info.height) == (320, 240) and src.info.fps == pytest.approx(25.0)
    assert src.info.extra["size_changes"] == "undetectable"  # said, since it cannot be seen
    stall()  # the server stops sending but keeps the connection: detected as stale
    wait_state(src, [SourceState.STALE])
    resume()
    _frames(src, 5)
    attempts_before = src.stats.reconnect_attempts
    stop()  # the server goes away: reconnecting, with back-off, until it is back
    wait_state(src, [SourceState.RECONNECTING])
    wait_state(src, [SourceState.RECONNECTING], read=False)
    # the server stays down until two attempts failed (back-off 0.05 s, then 0.1 s)
    want = attempts_before + 2
    end = time.monotonic() + 10
    while src.stats.reconnect_attempts < want and time.monotonic() < end:
        time.sleep(0.02)
    assert src.stats.reconnect_attempts >= want
    restart()
    frames = _frames(src, 10, timeout=20)
    stats = src.stats
    assert stats.reconnects >= 1 and stats.reconnect_attempts > stats.reconnects  # failed ones first
    assert stats.state is SourceState.LIVE and stats.error is None
    seen = [s for _, s in src.state_history]
    i = seen.index(SourceState.RECONNECTING)
    assert SourceState.LIVE in seen[i:]
    assert all(f.image.shape == (240, 320) for f in frames)


def test_rtsp_frames_stall_and_server_restart(clip, tmp_path):
    feed = RtpFeed(clip, tmp_path)
    port = free_port()
    box = {"srv": RtspServer(feed, port)}
    src = open_source(f"url:{box['srv'].url}", open_timeout_ms=5000, read_timeout_ms=1500, reconnect=BACKOFF)
    try:
        with src:
            assert src.info.backend == "opencv:FFMPEG" and src.info.fourcc == "h264"

            def restart():
                box["srv"] = RtspServer(feed, port)

            _check_outage_cycle(src, feed.stall, feed.resume, lambda: box["srv"].stop(), restart)
            assert box["srv"].sessions >= 1  # the restarted server served the new session
    finally:
        box["srv"].stop()
        feed.stop()


def test_http_frames_stall_and_server_restart(clip):
    port = free_port()
    box = {"feed": HttpFeed(clip, port)}
    src = open_source(f"url:{box['feed'].url}", open_timeout_ms=5000, read_timeout_ms=2000, reconnect=BACKOFF)
    try:
        with src:
            def restart():
                box["feed"] = HttpFeed(clip, port)

            _check_outage_cycle(src, lambda: box["feed"].stall(), lambda: box["feed"].resume(),
                                lambda: box["feed"].stop(), restart)
    finally:
        box["feed"].stop()


def test_run_frames_n_on_a_live_stream_ends_cleanly(clip, tmp_path, capsys):
    """`streamcad run --source url:http://... --frames 12` scores 12 frames of the live stream,
    publishes them and exits 0 (the source and its reader are closed; no hang)."""
    from streamcad.cli import main
    from streamcad.client import Subscriber
    from streamcad.manifest import write_manifest
    from streamcad.messages import Score
    from tests.helpers_onnx import make_contract_onnx

    model = make_contract_onnx(tmp_path / "m.onnx", size=64)
    write_manifest(model, class_names=["normal", "benign", "malignant"], operating_threshold=0.5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    feed = HttpFeed(clip, free_port())
    try:
        with Subscriber(endpoint, kinds=("score",)) as sub:
            rc = main(["run", "--source", f"url:{feed.url}", "--model", str(model), "--frames", "12",
                       "--no-dashboard", "--endpoint", endpoint])
            err = capsys.readouterr().err
            assert rc == 0, err
            assert err.strip().splitlines()[-1].startswith("12 frames in ")
            scores = []
            while (m := sub.recv(1.0)) is not None:
                scores.append(m)
        assert scores and all(isinstance(m, Score) for m in scores) and len(scores) <= 12
    finally:
        feed.stop()
