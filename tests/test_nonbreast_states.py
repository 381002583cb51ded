"""benchmarks/nonbreast_states.py: real recordings through the real pipeline and a real ZeroMQ
subscriber on 127.0.0.1; the states counted are the ones published, and the gate variants are
the same graph with another manifest's gate."""

import json
from pathlib import Path

import pytest

from streamcad.benchmarks.nonbreast_states import run_recording, summarise, with_gate
from streamcad.errors import ConfigError
from streamcad.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "engines" / "models" / "default.onnx"


def test_summarise_counts_each_state_and_refuses_others():
    s = summarise(["flagged", "flagged", "suspicious", "clear"])
    assert s == {"frames": 4, "suspicious": 0.25, "clear": 0.25, "no_lesion": 0.0, "flagged": 0.5}
    with pytest.raises(ConfigError, match="expected only"):
        summarise(["flagged", "maybe"])


def test_the_gate_decides_what_a_non_breast_recording_shows(video_dir, tmp_path):
    """A clip the shipped gate flags (benchmarks.ood_gate: 100% of the bone recording's frames):
    every published frame is `flagged`. The same graph without a gate scores it, so the gate,
    not the graph, made the difference."""
    if not read_manifest(SHIPPED).ood:
        pytest.skip("the shipped model has no gate")
    clip = video_dir / "linear-bone-ultrasonix-canvas.mp4"
    gated = run_recording(SHIPPED, clip, pace="none")  # every frame (paced, a loaded machine may drop some)
    assert len(gated) == 21 and set(gated) == {"flagged"}
    (tmp_path / "none").mkdir()
    bare = with_gate(SHIPPED, None, tmp_path / "none")
    assert read_manifest(bare).sha256 == read_manifest(SHIPPED).sha256 and not read_manifest(bare).ood
    ungated = run_recording(bare, clip, pace="none")
    assert len(ungated) == 21 and "flagged" not in set(ungated) and set(ungated) <= {"suspicious", "clear", "no_lesion"}


def test_with_gate_refuses_a_gate_of_another_graph(tmp_path):
    m = json.loads(SHIPPED.with_suffix(".json").read_text())
    m["sha256"] = "0" * 64
    with pytest.raises(ConfigError, match="not default.onnx"):
        with_gate(SHIPPED, m, tmp_path)
