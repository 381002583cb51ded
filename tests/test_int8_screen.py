"""benchmarks/int8_screen.py: a real exported graph quantised by ONNX Runtime, gated by the
converter's accuracy gate on real sample images and timed against its FP32 graph."""

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime.quantization")

from streamcad.benchmarks.int8_screen import _images, screen  # noqa: E402
from streamcad.errors import ConfigError  # noqa: E402
from streamcad.manifest import read_manifest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "train" / "results" / "v2" / "gate-model" / "lite0.onnx"  # one backbone: quicker than the composite
SAMPLE = REPO / "streamcad" / "data" / "sample"


def test_int8_screen_quantises_gates_and_times_a_real_graph():
    if not MODEL.is_file():
        pytest.skip("the v2 graph is not in this checkout")
    rows = list(csv.DictReader((SAMPLE / "labels.csv").open()))
    items = [(SAMPLE / "images" / r["file"], r["label"]) for r in rows]
    x = _images(items, read_manifest(MODEL).spec())
    labels = np.array([r["label"] == "malignant" for r in rows], np.int64)
    res = screen(MODEL, x[:8], x[8:], labels[8:], variants={"all": None}, rounds=3)["all"]
    g = res["gate"]
    assert g["n"] == len(rows) - 8 and g["passed"] == (not g["failures"])
    assert g["max_prob_diff"] > 0 and res["embedding_rel_diff_median"] > 0  # a different graph ran, not the FP32 one
    assert res["size_mb"] < 0.5 * MODEL.stat().st_size / 1e6  # int8 weights: under half the FP32 file
    lat = res["latency_ms"]
    assert lat["speedup_median"] == pytest.approx(lat["fp32_median"] / lat["int8_median"])
    with pytest.raises(ConfigError, match="expected both > 0"):
        screen(MODEL, x[:0], x[8:], None)
