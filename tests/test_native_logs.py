"""OpenCV's and FFmpeg's own stderr lines stay off the terminal by default; `-vv` lets them through.

Real media through a real `python -m streamcad run` subprocess: a truncated MJPG AVI written
by cv2.VideoWriter, served over HTTP from 127.0.0.1 to a url: source (FFmpeg decodes it; each
pass ends in the cut frame, the source reconnects and reads it again: FFmpeg printed
"[mjpeg @ 0x...] overread 5" once per pass, a line a second for as long as it runs); a url: with
nothing listening (FFmpeg's "Connection refused" and OpenCV's own WARN line at every attempt);
a sweep: folder with a corrupt PNG. A "native" line is any stderr line that is not streamcad's:
neither its logging format, nor `streamcad CMD: error: ...`, nor the run's summary line.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from streamcad.manifest import write_manifest
from tests.helpers_onnx import make_contract_onnx

REPO = Path(__file__).resolve().parents[1]
# what an operator's shell has: none of the variables (importing streamcad here set them in this
# process, and a child would take them for the operator's own)
NATIVE_VARS = ("OPENCV_LOG_LEVEL", "OPENCV_FFMPEG_LOGLEVEL", "OPENCV_FFMPEG_DEBUG")
ENV = {**{k: v for k, v in os.environ.items() if k not in NATIVE_VARS}, "PYTHONPATH": str(REPO),
       "OMP_NUM_THREADS": "1"}
OURS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: |streamcad [\w-]+: error: |\d+ frames in )")


def _native(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip() and not OURS.match(ln)]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    p = make_contract_onnx(tmp_path_factory.mktemp("model") / "m.onnx", size=32, saliency_hw=(4, 4))
    write_manifest(p, operating_threshold=0.5)
    return p


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """An MJPG AVI of 40 frames cut in half (the 20th frame broken), on a real HTTP server."""
    import cv2

    d = tmp_path_factory.mktemp("www")
    full = d / "full.avi"
    w = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 25, (160, 120))
    assert w.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(40):
        w.write(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    w.release()
    data = full.read_bytes()
    (d / "cut.avi").write_bytes(data[: len(data) // 2])

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(d)))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"url:http://127.0.0.1:{server.server_address[1]}/cut.avi"
    server.shutdown()
    server.server_close()


def _run(model: Path, cwd: Path, *args: str, debug: bool = False, env: dict | None = None):
    argv = [sys.executable, "-m", "streamcad", *(["-vv"] if debug else []), "run", "--no-dashboard",
            "--model", str(model), "--endpoint", "tcp://127.0.0.1:*", *args]
    return subprocess.run(argv, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=120)


def test_truncated_avi_over_http_native_lines_only_in_debug(model, served, tmp_path):
    quiet = _run(model, tmp_path, "--source", served, "--frames", "60")
    assert quiet.returncode == 0, quiet.stderr
    assert _native(quiet.stderr) == [], quiet.stderr  # was one "[mjpeg @ 0x...] overread 5" per pass
    ours = [ln for ln in quiet.stderr.splitlines() if "read failed; reconnecting" in ln]
    assert ours and all(served.removeprefix("url:") in ln for ln in ours), quiet.stderr  # streamcad says what failed
    debug = _run(model, tmp_path, "--source", served, "--frames", "60", debug=True)
    assert debug.returncode == 0, debug.stderr
    overread = [ln for ln in _native(debug.stderr) if "[mjpeg @" in ln]
    assert len(overread) >= 2, debug.stderr  # 60 frames are 3+ passes over the 19 good ones


def test_operator_setting_wins(model, served, tmp_path):
    """OPENCV_FFMPEG_LOGLEVEL set by the operator is kept (OpenCV then prints FFmpeg's lines
    through its own callback, on stdout, tagged with the level)."""
    r = _run(model, tmp_path, "--source", served, "--frames", "60", env={**ENV, "OPENCV_FFMPEG_LOGLEVEL": "16"})
    assert r.returncode == 0, r.stderr
    assert "[OPENCV:FFMPEG:16] overread" in r.stdout, (r.stdout, r.stderr)


def test_unreachable_url_is_one_line_of_ours(model, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"url:http://127.0.0.1:{port}/live.ts"
    quiet = _run(model, tmp_path, "--source", url)
    assert quiet.returncode == 1, quiet.stderr
    lines = [ln for ln in quiet.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"streamcad run: error: {url}"), quiet.stderr  # was 3 lines
    debug = _run(model, tmp_path, "--source", url, debug=True)
    native = _native(debug.stderr)
    assert any("Connection refused" in ln for ln in native), debug.stderr  # FFmpeg's
    assert any("WARN" in ln and "VIDEOIO(FFMPEG)" in ln for ln in native), debug.stderr  # OpenCV's own logger


def test_corrupt_png_in_a_sweep_leaves_one_libpng_line(model, tmp_path):
    """libpng prints "libpng error: ..." itself (OpenCV's settings do not reach it): one line
    for the corrupt still, which then leaves the rotation, so it does not repeat."""
    import cv2

    d = tmp_path / "stills"
    d.mkdir()
    rng = np.random.default_rng(1)
    cv2.imwrite(str(d / "good.png"), rng.integers(0, 255, (200, 200), dtype=np.uint8))
    png = (d / "good.png").read_bytes()
    (d / "bad.png").write_bytes(png[: len(png) // 3])
    r = _run(model, tmp_path, "--source", f"sweep:{d}", "--pace", "none", "--frames", "300")
    assert r.returncode == 0, r.stderr
    assert _native(r.stderr) == ["libpng error: Read Error"], r.stderr
    assert any("bad.png" in ln and "skipped" in ln for ln in r.stderr.splitlines()), r.stderr
