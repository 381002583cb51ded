"""Evaluation in training: the metrics (streamcad.engines.metrics, re-exported) and predict_logits.

The metrics with bootstrap CIs and the ROC / reliability plots are defined once, in
engines/metrics.py, because `streamcad evaluate` (engines/) needs them and engines never import
train/ (docs/ARCHITECTURE.md, "Layers"); the definitions (AUC, threshold metrics, ECE, Brier,
CIs) are in that module's docstring. What only training needs stays here: predict_logits, a
model in eval mode over letterboxed uint8 images (torch is imported when it is called).
"""

from __future__ import annotations

import numpy as np

from streamcad.engines.metrics import (
    CLASSES,
    METRIC_NAMES,
    auc_ranks,
    binary_view,
    bootstrap_metrics,
    choose_threshold,
    compute_metrics,
    expected_calibration_error,
    fast_metrics,
    group_bootstrap_auc,
    plot_reliability,
    plot_roc,
    sensitivity_lower_bound,
    softmax,
    stratified_bootstrap_indices,
    threshold_by_rule,
)
from streamcad.errors import ConfigError

__all__ = [
    "CLASSES",
    "METRIC_NAMES",
    "binary_view",
    "choose_threshold",
    "threshold_by_rule",
    "sensitivity_lower_bound",
    "expected_calibration_error",
    "compute_metrics",
    "bootstrap_metrics",
    "group_bootstrap_auc",
    "fast_metrics",
    "stratified_bootstrap_indices",
    "auc_ranks",
    "softmax",
    "predict_logits",
    "plot_roc",
    "plot_reliability",
]


# ----------------------------------------------------------------------------- model outputs


def predict_logits(
    model,
    images: np.ndarray,
    mean: float = 0.0,
    std: float = 1.0,
    batch_size: int = 128,
    device=None,
    amp: bool = False,
    channels_last: bool = False,
) -> np.ndarray:
    """uint8 letterboxed images (N, S, S) -> float32 logits (N, 3), model in eval mode.

    Normalisation is streamcad.preprocess's: (x / 255 - mean) / std. Shared by fine-tuning
    (validation, test) and by pretraining's probe evaluations.
    """
    import torch

    from streamcad.preprocess import PreprocessSpec
    from streamcad.train.common import autocast_context, model_input

    if images.dtype != np.uint8 or images.ndim != 3:
        raise ConfigError(f"images {images.dtype} {images.shape}; expected uint8 (N, S, S)")
    device = device or next(model.parameters()).device
    spec = PreprocessSpec(size=max(16, images.shape[-1]), mean=mean, std=std)  # only mean / std are used
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = model_input(torch.from_numpy(images[i : i + batch_size]).to(device), spec)  # (B, 1, S, S)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_context(device, enabled=amp):
                logits, _ = model(x)
            out.append(logits.float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 3), np.float32)
