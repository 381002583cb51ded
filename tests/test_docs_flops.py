"""The roofline's FLOP counter (benchmarks.roofline.onnx_flops) counts the attention MatMuls too:
on a hand-built graph whose token axis comes from a computed Reshape (as the cross-scale
attention's does) it gives the hand count, and on the shipped model the per-frame GFLOPs that
README.md and docs/MODEL.md state."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from streamcad.benchmarks.roofline import onnx_flops

REPO = Path(__file__).resolve().parents[1]


def _attention_like(path: Path, c: int = 8, h: int = 6, w: int = 5) -> Path:
    """x (N, C, H, W) -> tokens (N, H*W, C) via a Reshape to [N, C, -1] computed from Shape(x),
    then q @ k^T (N, T, T) and a projection Gemm-free MatMul (N, T, C) @ (C, 2C)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, h, w])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    wp = numpy_helper.from_array(np.ones((c, 2 * c), np.float32), "wp")
    idx0 = numpy_helper.from_array(np.array([0], np.int64), "idx0")
    idx1 = numpy_helper.from_array(np.array([1], np.int64), "idx1")
    minus1 = numpy_helper.from_array(np.array([-1], np.int64), "minus1")
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"]),
        helper.make_node("Gather", ["shp", "idx0"], ["n"], axis=0),
        helper.make_node("Gather", ["shp", "idx1"], ["ch"], axis=0),
        helper.make_node("Concat", ["n", "ch", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),  # (N, C, T): T unknown statically
        helper.make_node("Transpose", ["flat"], ["tok"], perm=[0, 2, 1]),  # (N, T, C)
        helper.make_node("MatMul", ["tok", "flat"], ["y"]),  # (N, T, C) @ (N, C, T) -> (N, T, T)
        helper.make_node("MatMul", ["tok", "wp"], ["z"]),  # (N, T, C) @ (C, 2C) -> (N, T, 2C)
    ]
    g = helper.make_graph(nodes, "attn", [x], [y, z], initializer=[wp, idx0, idx1, minus1])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def test_counts_matmuls_behind_a_computed_reshape(tmp_path):
    c, h, w = 8, 6, 5
    t = h * w
    got = onnx_flops(_attention_like(tmp_path / "attn.onnx", c, h, w))["flops"]
    assert got == 2 * t * t * c + 2 * t * (2 * c) * c  # q @ k^T + the projection, multiply-adds x 2


def test_shipped_model_matches_the_documented_gflops():
    model = REPO / "engines" / "models" / "default.onnx"
    if not model.is_file():
        pytest.skip("the shipped model is not in this checkout")
    gflops = onnx_flops(model)["flops"] / 1e9
    readme = re.search(r"([0-9.]+) GFLOPs per frame at 160x160", (REPO / "README.md").read_text())
    assert readme, "README no longer states the shipped model's GFLOPs"
    assert round(gflops, 3) == float(readme.group(1)), (gflops, readme.group(1))
    import json

    manifest = json.loads(model.with_suffix(".json").read_text())
    name = manifest.get("model", {}).get("name")
    if "classifier" in (manifest.get("source") or {}):  # a composite: two backbones, MODEL.md sizes one
        composed = json.loads((REPO / "train" / "results" / "shipped_default.json").read_text())["composed"]
        parts = [onnx_flops(REPO / composed[k]["model"])["flops"] / 1e9 for k in ("classifier", "gate_model")]
        assert 1.9 * min(parts) < gflops <= sum(parts), (gflops, parts)  # both backbones, less each one's unused head
        gflops = parts[0]
    row = re.search(rf"^\| {name} .*?\| [0-9]+ k \| ([0-9.]+) \|", (REPO / "docs" / "MODEL.md").read_text(), re.M)
    if row:  # MODEL.md's size table lists the architectures it describes
        assert round(gflops, 3) == float(row.group(1)), (name, gflops, row.group(1))
