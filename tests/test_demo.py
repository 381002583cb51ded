"""The shipped model and `streamcad demo`, end to end in a subprocess with a real subscriber."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from streamcad.client import Subscriber
from streamcad.manifest import load_model, read_manifest
from streamcad.messages import Score
from streamcad.pipeline import DEFAULT_MODEL

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="shipped model not in this checkout")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shipped_model_verifies_and_follows_the_contract():
    m = read_manifest(DEFAULT_MODEL)
    assert m.class_names == ["normal", "benign", "malignant"] or tuple(m.class_names) == ("normal", "benign", "malignant")
    assert m.metrics and "busbra" in m.metrics and "busi" in m.metrics
    assert 0.0 < m.operating_threshold < 1.0
    with load_model(DEFAULT_MODEL) as loaded:
        assert loaded.sha256 == m.sha256
        assert loaded.backend.input_size == m.preprocess["size"]


def test_demo_publishes_labelled_scores():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamcad.cli", "demo", "--frames", "60", "--no-dashboard", "--endpoint", endpoint],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    scores = []
    try:
        with Subscriber(endpoint, kinds=("score",)) as sub:
            end = time.monotonic() + 30
            while len(scores) < 20 and time.monotonic() < end:
                msg = sub.recv(timeout=0.5)
                if isinstance(msg, Score):
                    scores.append(msg)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, proc.stderr.read().decode()[-2000:]
    assert len(scores) >= 20
    assert all(s.stream == "demo" and s.label in ("benign", "malignant") for s in scores)
    assert all(s.model_sha256 == read_manifest(DEFAULT_MODEL).sha256 for s in scores)
    scored = [s for s in scores if s.probs is not None]
    assert scored, "every demo frame was flagged"
    assert all(s.state in ("no_lesion", "clear", "suspicious") for s in scored)
