"""What a UI is told in a Status is current: right after the first score the source is no longer
'connecting, frames 0/0', and a subscriber joining mid-stream gets counters that count every
score sent before it (not the last heartbeat's, up to a second old). A real `streamcad run`
(the shipped model over the sample sweep, every frame, waiting for the first subscriber) and
real Subscribers on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamcad.client import Subscriber
from streamcad.messages import Score, Status

REPO = Path(__file__).resolve().parents[1]


def _endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _drain(sub: Subscriber, into: list, until: float) -> None:
    while time.monotonic() < until:
        msg = sub.recv(timeout=0.05)
        if msg is not None:
            into.append(msg)


def test_first_and_welcome_status_are_current(tmp_path):
    endpoint = _endpoint()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    early: list = []
    late: list = []
    with Subscriber(endpoint, streams=["demo"]) as first:
        # every frame of the sample sweep (lossless), started once this subscriber is there
        cfg = tmp_path / "wait.toml"
        cfg.write_text("version = 1\n[publish]\nwait_subscribers = 1\nwait_timeout_s = 30.0\n")
        demo = subprocess.Popen([sys.executable, "-m", "streamcad.cli", "run", "--source", "sweep:", "--pace", "none",
                                 "--no-dashboard", "--frames", "5000", "--stream", "demo", "--threads", "1",
                                 "--config", str(cfg), "--endpoint", endpoint], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while sum(isinstance(m, Score) for m in early) < 15 and time.monotonic() < deadline:
                _drain(first, early, time.monotonic() + 0.1)
            assert sum(isinstance(m, Score) for m in early) >= 15, (demo.poll(), demo.stderr.read() if demo.poll() else "")
            with Subscriber(endpoint, streams=["demo"]) as second:  # joins mid-stream
                t_end = time.monotonic() + 20
                while not any(isinstance(m, Status) for m in late) and time.monotonic() < t_end:
                    _drain(second, late, time.monotonic() + 0.1)
                    _drain(first, early, time.monotonic() + 0.01)
            _drain(first, early, time.monotonic() + 0.5)
        finally:
            demo.terminate()
            demo.wait(timeout=30)
    scores = [m for m in early if isinstance(m, Score)]
    statuses = [m for m in early if isinstance(m, Status)]
    if early[0].seq > 1:
        pytest.skip(f"the first subscriber joined late (first seq {early[0].seq}); the start-up status was not seen")
    # the status after the first score: live, counting it, without waiting for the heartbeat
    first_score = scores[0]
    after = next(s for s in statuses if s.seq > first_score.seq)
    assert after.seq <= first_score.seq + 2, (first_score.seq, after.seq)
    assert after.source.state == "live" and after.counters.frames_out >= 1 and after.counters.frames_in >= 1, after
    # the late subscriber's first status counts every score the stream sent up to its last_seq
    welcome = next(m for m in late if isinstance(m, Status))
    sent_before = sum(1 for s in scores if s.seq <= welcome.last_seq)
    assert welcome.last_seq >= scores[14].seq, (welcome.last_seq, scores[14].seq)
    assert welcome.counters.frames_out == sent_before, (welcome.counters, welcome.last_seq, sent_before)
    assert welcome.seq - welcome.last_seq <= 2, (welcome.seq, welcome.last_seq)
    assert welcome.source.state == "live"
