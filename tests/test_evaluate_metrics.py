"""train.evaluate: metrics against scikit-learn / slow references, bootstrap CI logic, plots."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="needs the eval extra (scikit-learn)")
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score  # noqa: E402

from streamcad.errors import ConfigError  # noqa: E402
from streamcad.train.evaluate import (  # noqa: E402
    binary_view,
    bootstrap_metrics,
    choose_threshold,
    compute_metrics,
    expected_calibration_error,
    group_bootstrap_auc,
    plot_reliability,
    plot_roc,
    softmax,
    stratified_bootstrap_indices,
)


def synthetic(n: int, seed: int = 0, normals: bool = True, signal: float = 1.5):
    """Labels with a class-dependent logit shift, so the AUC is well above 0.5 but below 1."""
    rng = np.random.default_rng(seed)
    classes = [0, 1, 2] if normals else [1, 2]
    labels = rng.choice(classes, size=n, p=[0.2, 0.5, 0.3] if normals else [0.65, 0.35])
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), labels] += signal
    return labels, softmax(logits)


def test_softmax_rows_sum_to_one_and_temperature_flattens():
    logits = np.array([[2.0, 0.0, -1.0], [1000.0, 0.0, 0.0]])
    p1, p2 = softmax(logits), softmax(logits, temperature=4.0)
    np.testing.assert_allclose(p1.sum(1), 1.0)
    assert p2[0].max() < p1[0].max()  # higher temperature = less confident
    np.testing.assert_allclose(p1[1], [1.0, 0.0, 0.0], atol=1e-12)  # no overflow
    with pytest.raises(ConfigError):
        softmax(logits, temperature=0.0)


def test_binary_view_drops_normals_and_scores_p_malignant():
    labels = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
    keep, y, s = binary_view(labels, probs)
    assert keep.tolist() == [False, True, True, True]
    assert y.tolist() == [0, 1, 1]
    np.testing.assert_allclose(s, [0.3, 0.7, 0.4])


@pytest.mark.parametrize("normals", [True, False])
def test_compute_metrics_match_sklearn(normals):
    labels, probs = synthetic(400, seed=1, normals=normals)
    thr = 0.35
    m = compute_metrics(labels, probs, thr)
    keep = labels != 0
    y, s = (labels[keep] == 2).astype(int), probs[keep, 2]
    pred = (s >= thr).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert m["auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["balanced_accuracy"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
    assert m["brier"] == pytest.approx(np.mean((s - y) ** 2))
    assert 0.6 < m["auc"] < 0.99
    if normals:
        assert m["auc_macro_ovr"] == pytest.approx(
            np.mean([roc_auc_score(labels == c, probs[:, c]) for c in range(3)])
        )
        assert "balanced_accuracy_3class" in m
    else:
        assert "auc_macro_ovr" not in m


def test_per_image_threshold_equals_scalar_when_constant_and_differs_otherwise():
    labels, probs = synthetic(300, seed=2)
    a = compute_metrics(labels, probs, 0.4)
    b = compute_metrics(labels, probs, np.full(300, 0.4))
    assert a == b
    c = compute_metrics(labels, probs, np.where(np.arange(300) % 2 == 0, 0.05, 0.95))
    assert c["sensitivity"] != a["sensitivity"]
    assert c["auc"] == a["auc"]  # threshold-free


def test_ece_matches_calibration_curve_weighting():
    rng = np.random.default_rng(3)
    p = rng.uniform(size=2000)
    y = (rng.uniform(size=2000) < p**2).astype(int)  # miscalibrated on purpose
    ece = expected_calibration_error(y, p, n_bins=15)
    frac_pos, mean_pred = calibration_curve(y, p, n_bins=15, strategy="uniform")
    counts = np.histogram(p, bins=np.linspace(0, 1, 16))[0]
    counts = counts[counts > 0]
    ref = np.sum(counts / len(p) * np.abs(frac_pos - mean_pred))
    assert ece == pytest.approx(ref, rel=1e-9)
    assert ece > 0.05


def test_ece_known_values():
    # all predictions 0.8, 80% positive -> perfectly calibrated
    y = np.array([1] * 8 + [0] * 2)
    assert expected_calibration_error(y, np.full(10, 0.8)) == pytest.approx(0.0)
    # all 0.9, all negative -> ECE 0.9
    assert expected_calibration_error(np.zeros(5), np.full(5, 0.9)) == pytest.approx(0.9)
    with pytest.raises(ConfigError):
        expected_calibration_error(np.zeros(3), np.array([0.1, 1.2, 0.3]))


def test_choose_threshold_youden_and_sens90():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    t = choose_threshold(y, s, "youden")
    pred = s >= t
    j = pred[y == 1].mean() - pred[y == 0].mean()
    # exhaustive reference: the best J over all candidate thresholds
    best = max((s >= c)[y == 1].mean() - (s >= c)[y == 0].mean() for c in s)
    assert j == pytest.approx(best)
    t90 = choose_threshold(y, s, "sens90")
    assert (s[y == 1] >= t90).mean() >= 0.9
    assert t90 == pytest.approx(0.4)  # the highest threshold keeping all 4 positives
    with pytest.raises(ConfigError):
        choose_threshold(np.zeros(4), s[:4])
    with pytest.raises(ConfigError):
        choose_threshold(y, s, "median")


def test_sensitivity_lower_bound_is_the_exact_binomial_bound():
    from streamcad.train.evaluate import sensitivity_lower_bound

    # k = n has the closed form alpha ** (1 / n); k = 0 is 0
    assert sensitivity_lower_bound(29, 29) == pytest.approx(0.05 ** (1 / 29), abs=1e-9)
    assert sensitivity_lower_bound(0, 10) == 0.0
    # the bound is the p at which P(X >= k | n, p) = 5%: check it against the binomial tail
    from scipy.stats import binom

    lb = sensitivity_lower_bound(62, 64)
    assert binom.sf(61, 64, lb) == pytest.approx(0.05, abs=1e-6)
    with pytest.raises(ConfigError, match="expected 0 <= k <= n"):
        sensitivity_lower_bound(5, 4)


def test_choose_threshold_with_a_lower_bound():
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(80, int), np.ones(64, int)]
    s = np.r_[rng.beta(2, 5, 80), rng.beta(5, 2, 64)]
    point = choose_threshold(y, s, "sens90", target_sensitivity=0.95)
    lb = choose_threshold(y, s, "sens90", target_sensitivity=0.95, lower_bound=0.90)
    assert lb <= point  # the bound only ever lowers the point rule's threshold
    found = int((s[y == 1] >= lb).sum())
    assert found >= 62  # 62 of 64 is the fewest whose 95% lower bound reaches 0.90
    assert lb <= np.sort(s[y == 1])[::-1][61]  # never above the 62nd highest positive score
    assert point == pytest.approx(np.sort(s[y == 1])[::-1][60]) or point < np.sort(s[y == 1])[::-1][60]
    assert lb < point  # here the bound asks for one more positive than the point rule's 61
    # 29 positives vouch for 0.90 only with all 29 found: the threshold is the lowest positive score
    y29 = np.r_[np.zeros(80, int), np.ones(29, int)]
    s29 = np.r_[rng.beta(2, 5, 80), rng.beta(5, 2, 29)]
    assert choose_threshold(y29, s29, "sens90", target_sensitivity=0.95, lower_bound=0.90) == pytest.approx(s29[y29 == 1].min())
    # 28 cannot: a clear error naming the size needed
    with pytest.raises(ConfigError, match="28 positives cannot vouch .* at least 29"):
        choose_threshold(y29[:-1], s29[:-1], "sens90", target_sensitivity=0.95, lower_bound=0.90)


def test_stratified_bootstrap_keeps_class_counts():
    labels = np.array([0] * 5 + [1] * 30 + [2] * 11)
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = stratified_bootstrap_indices(labels, rng)
        assert np.bincount(labels[idx], minlength=3).tolist() == [5, 30, 11]


def test_bootstrap_ci_contains_point_and_shrinks_with_n():
    widths = []
    for n in (150, 1500):
        labels, probs = synthetic(n, seed=4, normals=False)
        out = bootstrap_metrics(labels, probs, 0.4, n_boot=300, seed=0)
        for k in ("auc", "f1", "sensitivity", "specificity", "ece", "brier"):
            assert out[k]["ci_low"] <= out[k]["value"] <= out[k]["ci_high"], k
        assert out["auc"]["ci_low"] < out["auc"]["ci_high"]
        widths.append(out["auc"]["ci_high"] - out["auc"]["ci_low"])
        assert out["n"] == n and out["n_normal"] == 0
    assert widths[1] < 0.6 * widths[0]  # ~1/sqrt(10) in theory


def test_bootstrap_is_seeded_and_covers_truth():
    labels, probs = synthetic(300, seed=5, normals=False)
    a = bootstrap_metrics(labels, probs, 0.4, n_boot=100, seed=7)
    b = bootstrap_metrics(labels, probs, 0.4, n_boot=100, seed=7)
    c = bootstrap_metrics(labels, probs, 0.4, n_boot=100, seed=8)
    assert a == b and a["auc"]["ci_low"] != c["auc"]["ci_low"]
    # The population AUC (estimated on a huge sample from the same generator) lies in the CI.
    big_l, big_p = synthetic(200_000, seed=99, normals=False)
    true_auc = compute_metrics(big_l, big_p, 0.4)["auc"]
    assert a["auc"]["ci_low"] <= true_auc <= a["auc"]["ci_high"]


def test_bad_inputs_raise_config_error():
    with pytest.raises(ConfigError):
        compute_metrics(np.array([1, 2]), np.zeros((2, 2)), 0.5)
    with pytest.raises(ConfigError):
        compute_metrics(np.array([1, 5]), np.full((2, 3), 1 / 3), 0.5)
    with pytest.raises(ConfigError):  # only benign images: AUC undefined
        compute_metrics(np.array([1, 1, 0]), np.full((3, 3), 1 / 3), 0.5)


def test_plots_write_png(tmp_path):
    labels, probs = synthetic(200, seed=6)
    roc = plot_roc({"fold0": (labels, probs), "pooled": (labels, probs)}, tmp_path / "roc.png")
    rel = plot_reliability(labels, probs, tmp_path / "rel.png")
    for p in (roc, rel):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert p.stat().st_size > 5000


@pytest.mark.parametrize("normals", [True, False])
def test_fast_bootstrap_metrics_equal_sklearn_on_resamples(normals):
    from streamcad.train.evaluate import fast_metrics

    labels, probs = synthetic(500, seed=8, normals=normals)
    probs = np.round(probs, 2)  # ties in the scores
    probs /= probs.sum(1, keepdims=True)
    thr = np.where(np.arange(500) % 3 == 0, 0.3, 0.45)
    rng = np.random.default_rng(0)
    for _ in range(5):
        idx = stratified_bootstrap_indices(labels, rng)
        ref = compute_metrics(labels[idx], probs[idx], thr[idx])
        fast = fast_metrics(labels[idx], probs[idx], thr[idx])
        assert fast.keys() == ref.keys()
        for k in ref:
            assert fast[k] == pytest.approx(ref[k], abs=1e-12), k


def test_group_bootstrap_moves_duplicates_together():
    """Copying every image 4 times inside its own group changes neither the AUC nor the group
    CI (the same groups are drawn, the AUC of a resample is unchanged by duplication); treating
    the copies as independent images shrinks the CI, which is the optimism this corrects."""
    labels, probs = synthetic(120, seed=3)
    p = probs[:, 2]
    base = group_bootstrap_auc(labels, p, np.arange(labels.size), n_boot=300, seed=1)
    keep = labels != 0
    assert base["value"] == pytest.approx(roc_auc_score(labels[keep] == 2, p[keep]))
    assert base["ci_low"] < base["value"] < base["ci_high"] and base["n_groups"] == keep.sum()
    dup_labels, dup_p, dup_groups = np.repeat(labels, 4), np.repeat(p, 4), np.repeat(np.arange(labels.size), 4)
    grouped = group_bootstrap_auc(dup_labels, dup_p, dup_groups, n_boot=300, seed=1)
    assert grouped["value"] == pytest.approx(base["value"])
    assert (grouped["ci_low"], grouped["ci_high"]) == pytest.approx((base["ci_low"], base["ci_high"]))
    naive = group_bootstrap_auc(dup_labels, dup_p, np.arange(dup_labels.size), n_boot=300, seed=1)
    assert naive["ci_high"] - naive["ci_low"] < 0.7 * (grouped["ci_high"] - grouped["ci_low"])


def test_group_bootstrap_refuses_bad_input():
    labels, probs = synthetic(40, seed=0)
    with pytest.raises(ConfigError, match="equal-length"):
        group_bootstrap_auc(labels, probs[:, 2], np.arange(39))
    with pytest.raises(ConfigError, match="benign and malignant"):
        group_bootstrap_auc(np.ones(10, int), np.linspace(0, 1, 10), np.arange(10))
