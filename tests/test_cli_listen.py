"""`streamcad listen` as a UI author meets it: started before any publisher it waits (and says so
once) instead of failing after --timeout; it ends with exit 0 when the stream says its source
`ended` (a file played to its end); `--kind status` does not report the scores' seqs as gaps;
`--wait S` gives up after S seconds with one line. Real processes: a `streamcad run` playing a
video file written here with OpenCV, listeners connected to it over loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "streamcad" / "data" / "sample" / "images"


def _endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _video(path: Path, frames: int = 40) -> Path:
    """A short 640x480 mp4 of the repo's sample images (a real file, decoded by the file source)."""
    images = sorted(SAMPLE.glob("*.png"))[:4]
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 20.0, (640, 480))
    assert w.isOpened()
    for i in range(frames):
        g = cv2.imread(str(images[i * len(images) // frames]), cv2.IMREAD_GRAYSCALE)
        canvas = np.zeros((480, 640), np.uint8)
        g = cv2.resize(g, (400, 320))
        canvas[80:400, 120:520] = g
        w.write(cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR))
    w.release()
    return path


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _listen(endpoint: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamcad.cli", "listen", "--endpoint", endpoint,
                             "--timeout", "1", *extra], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_listener_waits_for_the_publisher_and_ends_with_the_file(tmp_path):
    endpoint = _endpoint()
    video = _video(tmp_path / "clip.mp4")
    both = _listen(endpoint, "--json")
    statuses = _listen(endpoint, "--kind", "status")
    time.sleep(2.5)  # longer than --timeout: a listener started first must still be there
    assert both.poll() is None and statuses.poll() is None
    run = subprocess.run([sys.executable, "-m", "streamcad.cli", "run", "--source", f"file:{video}",
                          "--no-dashboard", "--threads", "1", "--stream", "clip", "--endpoint", endpoint],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    outs = {}
    for name, p in (("both", both), ("status", statuses)):
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise AssertionError(f"listener {name} did not end with the stream: {err[-1500:]}") from None
        outs[name] = (p.returncode, out, err)
    rc, out, err = outs["both"]
    assert rc == 0, err
    assert "waiting for a publisher" in err and err.count("waiting for a publisher") == 1, err
    assert "within 1 s" not in err, err
    assert '"type":"score"' in out and '"state":"ended"' in out.splitlines()[-1], out.splitlines()[-1:]
    rc, out, err = outs["status"]
    assert rc == 0, err
    assert "seq gaps" not in err, err  # the scores' seqs are not this listener's gaps
    assert out.strip().splitlines()[-1].split()[4] == "ended", out.splitlines()[-1:]


def test_wait_gives_up_with_one_line():
    endpoint = _endpoint()
    p = _listen(endpoint, "--wait", "1.5")
    out, err = p.communicate(timeout=30)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert p.returncode == 1, err
    assert lines[-1] == f"streamcad listen: no publisher on {endpoint} within --wait 1.5 s", lines
    assert "Traceback" not in err
