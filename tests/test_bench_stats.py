import numpy as np
import pytest

from benchmarks.machine import machine_info
from benchmarks.stats import summarize


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
