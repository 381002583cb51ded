import numpy as np
import pytest

from streamcad.benchmarks.machine import machine_info
from streamcad.benchmarks.stats import summarize


def test_percentiles_on_known_samples():
    # 1..1000 ms: p50 = 500.5, p90 = 900.1, p99 = 990.01, p99.9 = 999.001 (linear interpolation)
    s = summarize(np.arange(1, 1001, dtype=float), duration_s=2.0, dropped=3)
    assert s["n"] == 1000 and s["dropped"] == 3
    assert s["p50"] == pytest.approx(500.5)
    assert s["p90"] == pytest.approx(900.1)
    assert s["p99"] == pytest.approx(990.01)
    assert s["p99_9"] == pytest.approx(999.001)
    assert s["max"] == 1000 and s["min"] == 1
    assert s["mean"] == pytest.approx(500.5)
    assert s["std"] == pytest.approx(np.std(np.arange(1, 1001), ddof=1))
    assert s["fps"] == pytest.approx(500.0)


def test_tail_is_seen():
    # 990 fast frames and 10 slow ones: p50 stays fast, p99.9 and max see the tail
    a = [1.0] * 990 + [50.0] * 10
    s = summarize(a)
    assert s["p50"] == 1.0 and s["max"] == 50.0
    assert s["p99_9"] == pytest.approx(50.0)
    assert 1.0 < s["p99"] <= 50.0


def test_rejects_bad_samples():
    with pytest.raises(ValueError, match="NaN"):
        summarize([1.0, float("nan")])
    with pytest.raises(ValueError, match="1-D"):
        summarize(np.ones((2, 2)))
    assert summarize([])["n"] == 0


def test_machine_info_names_the_machine():
    m = machine_info()
    assert m["cores"] >= 1 and m["cpu"]
    assert "numpy" in m["libraries"] and "onnxruntime" in m["libraries"]


def test_onnx_flops_counts_conv_and_gemm(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from streamcad.benchmarks.roofline import onnx_flops

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "w")
    g = numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "g")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),  # (N, 8, 16, 16)
            helper.make_node("GlobalAveragePool", ["c"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("Gemm", ["f", "g"], ["logits"]),  # (N, 3)
        ],
        "t",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [w, g],
    )
    p = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), p)
    f = onnx_flops(p)
    conv = 2 * (8 * 16 * 16) * (1 * 3 * 3)
    gemm = 2 * 3 * 8
    assert f["flops"] == conv + gemm
    assert f["params_bytes"] == (8 * 9 + 24) * 4
