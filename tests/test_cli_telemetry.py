"""ONNX Runtime's telemetry stays off: ORT (1.2x+, Linux/macOS) creates an event store and a
device id under ~/.cache/Microsoft/DeveloperTools/.onnxruntime as soon as it is imported, unless
ORT_DISABLE_TELEMETRY is set first; `import streamcad` sets it. Each check runs in a fresh HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STORE = Path(".cache") / "Microsoft" / "DeveloperTools" / ".onnxruntime"
MODEL = REPO / "engines" / "models" / "default.onnx"


def _run(code: str, home: Path, **env: str) -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**base, "HOME": str(home), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env})
    assert r.returncode == 0, r.stderr[-2000:]


def test_streamcad_keeps_onnxruntime_telemetry_off(tmp_path):
    control, ours = tmp_path / "plain", tmp_path / "streamcad"
    control.mkdir()
    ours.mkdir()
    _run("import onnxruntime", control)
    if not (control / STORE).exists():
        pytest.skip("this onnxruntime writes no telemetry store (nothing to turn off)")
    # the runtime's own path: import streamcad, load the shipped model with its backend, infer
    _run(
        "import numpy as np\n"
        "import streamcad\n"
        "from streamcad.backends import load_backend\n"
        f"be = load_backend('onnxruntime', {str(MODEL)!r})\n"
        "be.infer(np.zeros((1, 1, 160, 160), np.float32))\n"
        "import os; assert os.environ['ORT_DISABLE_TELEMETRY'] == '1'\n",
        ours,
    )
    assert not (ours / ".cache" / "Microsoft").exists(), sorted(p.name for p in (ours / STORE).glob("*"))


def test_an_operator_may_opt_in(tmp_path):
    _run("import streamcad, onnxruntime, os; assert os.environ['ORT_DISABLE_TELEMETRY'] == '0'", tmp_path,
         ORT_DISABLE_TELEMETRY="0")
