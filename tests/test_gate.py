"""The accuracy gate: each rule passes exactly at its threshold and trips just above it; the
fixed real-frame set is deterministic and preprocessed with the shared function."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from streamcad.engines.gate import (
    GateThresholds,
    load_gate_frames,
    run_gate,
    sample_images_dir,
    softmax,
)
from streamcad.errors import ArtifactError, ConfigError
from streamcad.preprocess import PreprocessSpec, preprocess


def _rows(p_malignant: np.ndarray) -> np.ndarray:
    """(N,) malignant probabilities < 0.45 -> (N, 3) rows [0.1, 0.9 - p, p] (argmax: benign)."""
    p = np.asarray(p_malignant, np.float64)
    return np.stack([np.full_like(p, 0.1), 0.9 - p, p], axis=1)


def test_softmax_known_values_and_stability():
    np.testing.assert_allclose(softmax(np.array([[0.0, np.log(3.0)]])), [[0.25, 0.75]], atol=1e-12)
    big = softmax(np.array([[1000.0, 1000.0, -1000.0]]))
    assert np.all(np.isfinite(big))
    np.testing.assert_allclose(big, [[0.5, 0.5, 0.0]], atol=1e-12)


def test_identical_probabilities_pass():
    ref = _rows(np.linspace(0.05, 0.4, 50))
    res = run_gate(ref, ref.copy())
    assert res.passed and res.failures == ()
    assert res.max_prob_diff == 0.0 and res.flips == 0 and res.nonfinite == 0


def test_prob_diff_rule_trips_exactly_above_threshold():
    ref = _rows(np.full(10, 0.2))
    at = ref.copy()
    at[3, 2] += 0.01
    at[3, 1] -= 0.01
    res = run_gate(ref, at)
    assert res.passed, res.failures
    assert res.max_prob_diff == pytest.approx(0.01)
    above = ref.copy()
    above[3, 2] += 0.0101
    above[3, 1] -= 0.0101
    res = run_gate(ref, above)
    assert not res.passed
    assert len(res.failures) == 1 and "max prob diff" in res.failures[0]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_candidate_fails(bad):
    ref = _rows(np.full(20, 0.2))
    cand = ref.copy()
    cand[5, 0] = bad
    res = run_gate(ref, cand)
    assert not res.passed
    assert res.nonfinite == 1
    assert any("non-finite" in f for f in res.failures)
    assert res.flips == 1  # a row without a valid argmax counts as a flip


def test_flip_rule_trips_exactly_above_one_percent():
    # 200 near-tie rows; swapping benign/malignant flips the decision with only 0.004 change.
    n = 200
    ref = np.tile([0.3, 0.352, 0.348], (n, 1))
    swapped = np.array([0.3, 0.348, 0.352])
    two = ref.copy()
    two[[10, 150]] = swapped
    res = run_gate(ref, two)
    assert res.passed, res.failures
    assert res.flips == 2 and res.flip_rate == pytest.approx(0.01)
    three = ref.copy()
    three[[10, 90, 150]] = swapped
    res = run_gate(ref, three)
    assert not res.passed
    assert len(res.failures) == 1 and "decision flips" in res.failures[0]
    assert res.max_prob_diff == pytest.approx(0.004)


def _auc_case(n_swapped_pairs: int):
    # 20 negatives, 10 positives: one swapped (negative, positive) pair moves AUC by 1/200 = 0.005.
    neg = np.concatenate([0.05 + 0.01 * np.arange(18), [0.297, 0.298]])
    pos = 0.30 + 0.01 * np.arange(10)
    labels = np.array([0] * 20 + [1] * 10)
    ref = _rows(np.concatenate([neg, pos]))
    cand_p = np.concatenate([neg, pos])
    # lowest positive drops below the top n_swapped_pairs negatives (changes <= 0.004)
    cand_p[20] = 0.2965 if n_swapped_pairs == 2 else 0.2975
    return ref, _rows(cand_p), labels


def test_auc_rule_trips_exactly_above_threshold():
    ref, cand, labels = _auc_case(1)
    res = run_gate(ref, cand, labels)
    assert res.auc_reference == pytest.approx(1.0)
    assert res.auc_delta == pytest.approx(0.005)
    assert res.passed, res.failures
    ref, cand, labels = _auc_case(2)
    res = run_gate(ref, cand, labels)
    assert res.auc_delta == pytest.approx(0.01)
    assert not res.passed
    assert len(res.failures) == 1 and "AUC delta" in res.failures[0]


def test_custom_thresholds_are_used():
    ref = _rows(np.full(10, 0.2))
    cand = ref.copy()
    cand[0, 2] += 0.002
    cand[0, 1] -= 0.002
    assert run_gate(ref, cand).passed
    res = run_gate(ref, cand, thresholds=GateThresholds(max_prob_diff=1e-3))
    assert not res.passed and "max prob diff" in res.failures[0]


def test_single_class_labels_skip_auc():
    ref = _rows(np.linspace(0.05, 0.4, 10))
    res = run_gate(ref, ref, np.zeros(10, np.int64))
    assert res.passed and res.auc_delta is None


def test_bad_inputs_raise_config_errors():
    ref = _rows(np.full(4, 0.2))
    with pytest.raises(ConfigError, match="differ in shape"):
        run_gate(ref, ref[:3])
    with pytest.raises(ConfigError, match=r"expected shape \(N, C\)"):
        run_gate(ref[:, 0], ref[:, 0])
    with pytest.raises(ConfigError, match="labels_binary"):
        run_gate(ref, ref, np.array([0, 1, 2, 0]))
    bad_ref = ref.copy()
    bad_ref[0, 0] = np.nan
    with pytest.raises(ConfigError, match="reference"):
        run_gate(bad_ref, ref)


def test_result_to_dict_round_trips_numbers():
    ref = _rows(np.full(10, 0.2))
    d = run_gate(ref, ref).to_dict()
    assert d["passed"] is True and d["n"] == 10 and d["thresholds"]["max_flip_rate"] == 0.01


# ----------------------------------------------------------------------------- real frames


def test_gate_frames_from_repo_sample_match_preprocess():
    sample = sample_images_dir()
    if sample is None:
        pytest.skip("repository sample images absent")
    spec = PreprocessSpec(size=64, mean=0.2, std=0.5)
    frames = load_gate_frames(spec, n=6, images_dir=sample)
    assert frames.batch.shape == (6, 1, 64, 64) and frames.batch.dtype == np.float32
    assert frames.names == sorted(frames.names)
    img = cv2.imread(str(sample / frames.names[2]), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(frames.batch[2], preprocess(img, spec))
    assert frames.labels_binary is not None and set(frames.labels_binary) <= {0, 1}
    again = load_gate_frames(spec, n=6, images_dir=sample)
    assert again.names == frames.names  # the gate set is fixed


def test_gate_frames_from_shared_data_carry_labels(data_root):
    spec = PreprocessSpec(size=32)
    frames = load_gate_frames(spec, n=40, data_root=data_root)
    assert frames.batch.shape == (40, 1, 32, 32)
    assert frames.labels_binary is not None
    assert 0 < frames.labels_binary.sum() < 40  # both malignant and non-malignant frames
    assert frames.source.startswith("data:")
    assert not any("_mask" in n for n in frames.names)


def test_gate_frames_from_npz(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 48, 48), dtype=np.uint8)
    path = tmp_path / "frames.npz"
    np.savez_compressed(path, busbra_images=images, busbra_labels=np.array([1, 2, 2, 1, 2]))
    spec = PreprocessSpec(size=48)
    frames = load_gate_frames(spec, n=3, data_npz=path)
    assert frames.batch.shape == (3, 1, 48, 48)
    assert frames.names == ["busbra_0", "busbra_2", "busbra_4"]  # evenly spread over 5
    np.testing.assert_array_equal(frames.labels_binary, [0, 1, 1])  # classes 1, 2, 2
    np.testing.assert_allclose(frames.batch[0, 0], images[0] / 255.0, atol=1e-6)  # same size: no resize


def test_gate_frames_refuse_missing_sources(tmp_path):
    spec = PreprocessSpec(size=32)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_gate_frames(spec, images_dir=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no real images"):
        load_gate_frames(spec, images_dir=tmp_path / "empty")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3))
    with pytest.raises(ArtifactError, match="images"):
        load_gate_frames(spec, data_npz=bad)
