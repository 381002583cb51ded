"""Metrics of the paper's tables, with stratified-bootstrap 95% confidence intervals.

In engines/ (docs/ARCHITECTURE.md, "Layers"): `streamcad evaluate` (engines/evaluate.py) scores a
model with them, and train/ (experiments, cross-validation, the release) imports them from
here; train.evaluate re-exports them beside its torch helper (predict_logits).

    probs (N, 3) [normal, benign, malignant] (after temperature scaling), labels (N,) int
      --binary_view-->  benign/malignant images only: y (malignant=1), score = p(malignant)
      --compute_metrics(threshold)-->  {auc, f1, sensitivity, specificity, balanced_accuracy,
                                        ece, brier, (auc_macro_ovr, balanced_accuracy_3class)}
      --bootstrap_metrics-->  {name: {"value", "ci_low", "ci_high"}}

Definitions (docs/TRAINING.md repeats them):
- **AUC** benign vs malignant: ROC AUC of score = p(malignant) over the images whose truth is
  benign or malignant. Normal images (BUSI only) are left out, so BUSI and BUS-BRA numbers
  mean the same thing. p(malignant) is the model's 3-way softmax output, not renormalised
  over {benign, malignant}: that is the number the runtime publishes.
- **auc_macro_ovr** (BUSI only, when all three classes are present): macro-averaged
  one-vs-rest ROC AUC of the 3-class probabilities.
- **Threshold metrics** (F1 of the malignant class, sensitivity, specificity, balanced
  accuracy) binarise p(malignant) at a threshold chosen on the *validation* part of the
  training fold (never on the scored fold): by default the one maximising Youden's
  J = sensitivity + specificity - 1 (`choose_threshold(method='sens90')` picks the highest
  threshold with sensitivity >= 0.9 instead). Pooled out-of-fold metrics use each image's own
  fold threshold (`threshold` may be an array).
- **ECE**: expected calibration error of p(malignant) with 15 equal-width bins (the binning of
  sklearn.calibration.calibration_curve(strategy='uniform')), sum_b n_b/N |acc_b - conf_b|.
- **Brier**: mean squared error of p(malignant) against y (sklearn.metrics.brier_score_loss).
- **CIs**: percentile bootstrap, resampling images with replacement *within each class* (a
  stratified bootstrap keeps every resample's class counts, so AUC is always defined),
  `n_boot` resamples, seeded. Resamples are scored by `fast_metrics` (the same formulas
  without scikit-learn's per-call validation; a test holds the two equal). Images in one near-duplicate group / patient are resampled
  independently (documented limitation: the CI is slightly optimistic).

Only numpy, scipy, scikit-learn and matplotlib (the `eval` extra) are needed; never torch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import (
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from streamcad.engines.gate import softmax  # the one softmax (float64, stable)
from streamcad.errors import ConfigError
from streamcad.manifest import CLASS_NAMES as CLASSES

__all__ = [
    "CLASSES",
    "METRIC_NAMES",
    "binary_view",
    "choose_threshold",
    "threshold_by_rule",
    "sensitivity_lower_bound",
    "LOWER_BOUND_CONFIDENCE",
    "expected_calibration_error",
    "compute_metrics",
    "bootstrap_metrics",
    "group_bootstrap_auc",
    "fast_metrics",
    "stratified_bootstrap_indices",
    "auc_ranks",
    "softmax",
    "plot_roc",
    "plot_reliability",
]

log = logging.getLogger(__name__)


BENIGN, MALIGNANT = 1, 2
METRIC_NAMES: tuple[str, ...] = (
    "auc",
    "f1",
    "sensitivity",
    "specificity",
    "balanced_accuracy",
    "ece",
    "brier",
    "auc_macro_ovr",
    "balanced_accuracy_3class",
)


# ----------------------------------------------------------------------------- inputs


def _check(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.ndim != 1 or probs.ndim != 2 or probs.shape != (labels.shape[0], 3):
        raise ConfigError(
            f"labels {labels.shape} / probs {probs.shape}; expected labels (N,) and probs (N, 3) "
            f"for classes {list(CLASSES)}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 2):
        raise ConfigError(f"labels must index {list(CLASSES)} (0..2); got values {np.unique(labels).tolist()}")
    if not np.all(np.isfinite(probs)):
        raise ConfigError("probs contain NaN or inf; expected softmax probabilities")
    return labels.astype(np.int64), probs


def binary_view(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (keep mask (N,) bool, y (M,) {0,1} malignant, score (M,) = p(malignant)) over the
    images whose truth is benign or malignant."""
    labels, probs = _check(labels, probs)
    keep = labels != 0
    return keep, (labels[keep] == MALIGNANT).astype(np.int64), probs[keep, MALIGNANT]


# ----------------------------------------------------------------------------- single metrics


# The confidence of the sensitivity lower bound in threshold rules (rule R2, docs/TRAINING.md).
LOWER_BOUND_CONFIDENCE = 0.95


def sensitivity_lower_bound(k: int, n: int, confidence: float = LOWER_BOUND_CONFIDENCE) -> float:
    """One-sided Clopper-Pearson lower confidence bound of a sensitivity k/n (k of n positives
    found): the true sensitivity is >= it with probability `confidence` (exact binomial)."""
    from scipy.stats import beta

    if not 0 <= k <= n or n < 1:
        raise ConfigError(f"sensitivity_lower_bound: k={k} of n={n} positives; expected 0 <= k <= n, n >= 1")
    return 0.0 if k == 0 else float(beta.ppf(1 - confidence, k, n - k + 1))


def choose_threshold(
    y_true: np.ndarray, score: np.ndarray, method: str = "youden", target_sensitivity: float = 0.9,
    lower_bound: float = 0.0, confidence: float = LOWER_BOUND_CONFIDENCE,
) -> float:
    """Operating point from validation scores (never from the scored fold).

    'youden': the ROC point maximising sensitivity + specificity - 1 (ties -> higher threshold).
    'sens90': the highest threshold whose sensitivity is >= target_sensitivity and, when
    lower_bound > 0, whose one-sided Clopper-Pearson lower bound (at `confidence`) is >= lower_bound
    too: a sensitivity the validation split's size can vouch for, not only its point value.
    Returns a finite threshold in [0, 1]; predictions are `score >= threshold`.
    """
    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) != 2:
        raise ConfigError(
            f"choose_threshold needs both classes in the validation set; got labels {np.unique(y_true).tolist()}"
        )
    fpr, tpr, thr = roc_curve(y_true, score)
    thr = np.clip(thr, 0.0, 1.0)  # sklearn's first threshold is +inf (nothing positive)
    if method == "youden":
        i = int(np.argmax(tpr - fpr))  # argmax returns the first max = highest threshold
    elif method == "sens90":
        ok = tpr >= target_sensitivity
        if lower_bound > 0:
            n_pos = int((y_true == 1).sum())
            tp = np.rint(tpr * n_pos).astype(int)
            ok &= np.array([sensitivity_lower_bound(k, n_pos, confidence) >= lower_bound for k in tp])
            if not ok.any():
                need = int(np.ceil(np.log(1 - confidence) / np.log(lower_bound)))
                raise ConfigError(f"choose_threshold: {n_pos} positives cannot vouch for a sensitivity of {lower_bound} at "
                                  f"{confidence:.0%} confidence; expected at least {need} (a larger calibration split)")
        i = int(np.nonzero(ok)[0][0])
    else:
        raise ConfigError(f"threshold method {method!r}; expected 'youden' or 'sens90'")
    return float(thr[i])


def threshold_by_rule(y_true: np.ndarray, score: np.ndarray, rule: dict) -> float:
    """choose_threshold under a stored rule {'method', 'target_sensitivity', 'lower_bound', 'confidence'}:
    the form a training run and a manifest (notes.operating_threshold_rule) record it in."""
    return choose_threshold(y_true, score, rule["method"], target_sensitivity=rule["target_sensitivity"],
                            lower_bound=rule.get("lower_bound", 0.0), confidence=rule.get("confidence", LOWER_BOUND_CONFIDENCE))


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 15) -> float:
    """ECE with n_bins equal-width bins on [0, 1]: sum_b (n_b / N) * |mean(y_b) - mean(prob_b)|.

    Bin assignment is sklearn.calibration.calibration_curve's (strategy='uniform'): a value on
    an inner edge falls in the lower bin.
    """
    y_true = np.asarray(y_true, np.float64)
    prob = np.asarray(prob, np.float64)
    if y_true.shape != prob.shape or y_true.ndim != 1 or y_true.size == 0:
        raise ConfigError(f"ECE needs two equal-length non-empty 1-D arrays; got {y_true.shape} and {prob.shape}")
    if prob.min() < 0 or prob.max() > 1:
        raise ConfigError("ECE: probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], prob)  # (N,) bin index 0..n_bins-1
    acc = np.bincount(ids, weights=y_true, minlength=n_bins)
    conf = np.bincount(ids, weights=prob, minlength=n_bins)
    return float(np.abs(acc - conf).sum() / y_true.size)  # sum_b |sum y - sum p| / N


def compute_metrics(
    labels: np.ndarray, probs: np.ndarray, threshold: float | np.ndarray, n_bins: int = 15
) -> dict[str, float]:
    """All point metrics for one set of predictions (see the module docstring).

    labels (N,) int in {0,1,2}; probs (N, 3); threshold scalar or (N,) per image (pooled
    out-of-fold). Metrics that are undefined here (no normals -> no 3-class AUC) are absent.
    """
    labels, probs = _check(labels, probs)
    keep, y, s = binary_view(labels, probs)
    thr = np.broadcast_to(np.asarray(threshold, np.float64), labels.shape)[keep]
    if len(np.unique(y)) != 2:
        raise ConfigError(f"metrics need benign and malignant images; got binary labels {np.unique(y).tolist()}")
    pred = (s >= thr).astype(np.int64)
    out = {
        "auc": float(roc_auc_score(y, s)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "sensitivity": float(recall_score(y, pred, pos_label=1, zero_division=0)),
        "specificity": float(recall_score(y, pred, pos_label=0, zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "ece": expected_calibration_error(y, s, n_bins),
        "brier": float(brier_score_loss(y, s)),
    }
    if len(np.unique(labels)) == 3:  # BUSI: normals present
        out["auc_macro_ovr"] = float(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
        out["balanced_accuracy_3class"] = float(balanced_accuracy_score(labels, probs.argmax(1)))
    return out


# ----------------------------------------------------------------------------- bootstrap


def stratified_bootstrap_indices(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One resample: for each class, draw that class's count of its own indices with replacement."""
    parts = []
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        parts.append(rng.choice(idx, size=idx.size, replace=True))
    return np.concatenate(parts)


def auc_ranks(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney form of the ROC AUC (ties count 1/2): equal to sklearn's roc_auc_score."""
    r = rankdata(s)  # average ranks for ties
    n1 = int(y.sum())
    n0 = y.size - n1
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def fast_metrics(labels: np.ndarray, probs: np.ndarray, threshold: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """compute_metrics for bootstrap resamples: the same numbers without sklearn's per-call
    input validation (~30 ms a call, i.e. 30 s per 1,000 resamples). Inputs are trusted (already
    checked by bootstrap_metrics); tests hold it equal to compute_metrics."""
    keep = labels != 0
    y = (labels[keep] == MALIGNANT).astype(np.int64)
    s = probs[keep, MALIGNANT]
    pred = s >= threshold[keep]
    tp = int(np.sum(pred & (y == 1)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    fp = int(np.sum(pred & (y == 0)))
    sens, spec = tp / (tp + fn), tn / (tn + fp)
    out = {
        "auc": auc_ranks(y, s),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": (sens + spec) / 2,
        "ece": expected_calibration_error(y, s, n_bins),
        "brier": float(np.mean((s - y) ** 2)),
    }
    if len(np.unique(labels)) == 3:
        out["auc_macro_ovr"] = float(np.mean([auc_ranks((labels == c).astype(np.int64), probs[:, c]) for c in range(3)]))
        am = probs.argmax(1)
        out["balanced_accuracy_3class"] = float(np.mean([np.mean(am[labels == c] == c) for c in range(3)]))
    return out


def bootstrap_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    threshold: float | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    metric_fn: Callable[..., dict[str, float]] = fast_metrics,
) -> dict[str, dict[str, float]]:
    """Point estimates (compute_metrics, scikit-learn) + percentile (1-alpha) CIs from a
    stratified bootstrap (metric_fn on each resample).

    -> {metric: {"value": point estimate on all data, "ci_low", "ci_high", "n_boot"}}, plus
    "n", "n_benign", "n_malignant", "n_normal" counts as plain ints.
    """
    labels, probs = _check(labels, probs)
    if n_boot < 1 or not 0 < alpha < 1:
        raise ConfigError(f"n_boot={n_boot}, alpha={alpha}; expected n_boot >= 1 and 0 < alpha < 1")
    thr = np.broadcast_to(np.asarray(threshold, np.float64), labels.shape)
    point = compute_metrics(labels, probs, thr)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n_boot):
        idx = stratified_bootstrap_indices(labels, rng)
        for k, v in metric_fn(labels[idx], probs[idx], thr[idx]).items():
            samples[k].append(v)
    out: dict = {}
    for k, v in point.items():
        arr = np.asarray(samples[k])
        lo, hi = np.quantile(arr, [alpha / 2, 1 - alpha / 2])
        out[k] = {"value": v, "ci_low": float(lo), "ci_high": float(hi), "n_boot": n_boot}
    counts = np.bincount(labels, minlength=3)
    out["n"] = int(labels.size)
    out["n_normal"], out["n_benign"], out["n_malignant"] = (int(c) for c in counts)
    return out


def group_bootstrap_auc(
    labels: np.ndarray, p_malignant: np.ndarray, groups: np.ndarray, n_boot: int = 1000, seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Benign-vs-malignant AUC with a cluster-bootstrap CI: resample whole groups (BUS-BRA
    patients, BUSI near-duplicate groups) with replacement, so images that share a patient
    move together. bootstrap_metrics resamples images independently, which is narrower when
    groups hold several images. Resamples with a single class are skipped (counted).

    labels (N,) in {0,1,2} (normals are left out), p_malignant (N,), groups (N,) any hashable.
    -> {"value", "ci_low", "ci_high", "n_boot", "n_groups", "skipped"}
    """
    labels, p_malignant, groups = np.asarray(labels), np.asarray(p_malignant, np.float64), np.asarray(groups)
    if not labels.shape == p_malignant.shape == groups.shape or labels.ndim != 1:
        raise ConfigError(f"labels {labels.shape}, p_malignant {p_malignant.shape}, groups {groups.shape}: "
                          "expected three equal-length 1-D arrays")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ConfigError(f"n_boot={n_boot}, alpha={alpha}; expected n_boot >= 1 and 0 < alpha < 1")
    keep = labels != 0
    y = (labels[keep] == MALIGNANT).astype(np.int64)
    s, g = p_malignant[keep], groups[keep]
    if len(np.unique(y)) != 2:
        raise ConfigError(f"AUC needs benign and malignant images; got binary labels {np.unique(y).tolist()}")
    uniq, inv = np.unique(g, return_inverse=True)
    members = np.split(np.argsort(inv, kind="stable"), np.cumsum(np.bincount(inv))[:-1])
    rng = np.random.default_rng(seed)
    aucs, skipped = [], 0
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, uniq.size, uniq.size)])
        if y[idx].min() == y[idx].max():
            skipped += 1
            continue
        aucs.append(auc_ranks(y[idx], s[idx]))
    if not aucs:
        raise ConfigError("group bootstrap: every resample held a single class; too few groups")
    lo, hi = np.quantile(aucs, [alpha / 2, 1 - alpha / 2])
    return {"value": float(roc_auc_score(y, s)), "ci_low": float(lo), "ci_high": float(hi), "n_boot": n_boot,
            "n_groups": int(uniq.size), "skipped": skipped}


# ----------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | os.PathLike) -> Path:
    """tight layout, write the PNG (creating its folder), free the figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike, title: str = "") -> Path:
    """ROC curves (benign vs malignant) of several prediction sets: {name: (labels, probs)} -> PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for name, (labels, probs) in curves.items():
        _, y, s = binary_view(labels, probs)
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=7)
    return _save(plt, fig, path)


def plot_reliability(
    labels: np.ndarray, probs: np.ndarray, path: str | os.PathLike, n_bins: int = 15, title: str = ""
) -> Path:
    """Reliability diagram of p(malignant) (benign/malignant images), with the ECE in the legend."""
    from sklearn.calibration import calibration_curve

    plt = _pyplot()
    _, y, s = binary_view(labels, probs)
    frac_pos, mean_pred = calibration_curve(y, s, n_bins=n_bins, strategy="uniform")
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect calibration")
    ax.plot(mean_pred, frac_pos, "o-", lw=1.5, ms=4, label=f"model (ECE {expected_calibration_error(y, s, n_bins):.3f})")
    ax.hist(s, bins=n_bins, range=(0, 1), weights=np.full(s.size, 1.0 / s.size), alpha=0.25, label="share of images")
    ax.set(xlabel="predicted p(malignant)", ylabel="fraction malignant", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left", fontsize=7)
    return _save(plt, fig, path)
