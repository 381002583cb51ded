"""The out-of-domain gate: is this frame breast B-mode ultrasound the model can speak about?

    model graph output 'embedding' (N, D) float32  (pooled multi-scale features + the
        classifier's embedding; engines/export.py)
      --standardise (mean, scale per dimension, from the breast training frames)--> z
      --class means mu_c (normal / benign / malignant) and one shared covariance, kept as its
        top-k principal axes U (k, D) with variances lam (k,) plus one residual variance r:
            d2_c = sum_j ((z - mu_c) . U_j)^2 / lam_j + |(z - mu_c) - U^T U (z - mu_c)|^2 / r
      --score = min_c d2_c / D   (a class-conditional Mahalanobis distance with a probabilistic-
        PCA covariance, Lee et al., NeurIPS 2018; Tipping & Bishop 1999)
      --score > threshold--> the frame is flagged 'out_of_domain' (no malignancy update)

The parameters, the threshold, how it was chosen and the rates measured at ship time live in
the model's manifest (`ood`), written by train/ood.py (`streamcad train gate MODEL.onnx`).
numpy only; per frame one (k, D) and one (3, D) product: microseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from streamcad.errors import ArtifactError

__all__ = ["OOD_METHOD", "BREAST_BUDGET", "OodGate"]

OOD_METHOD = "mahalanobis-ppca"  # the only method this runtime knows; a manifest naming another is refused
# The share of breast frames the gate may flag (docs/MODEL.md): fitting aims under it
# (train.ood.TARGET_RATE), the gate studies hold designs to it, `streamcad evaluate` warns above it.
BREAST_BUDGET = 0.05


@dataclass(frozen=True)
class OodGate:
    """Fitted gate parameters (float64 arrays) + threshold. Build with from_dict / fit (train/ood.py)."""

    center: np.ndarray  # (D,) per-dimension mean of the breast training embeddings
    scale: np.ndarray  # (D,) per-dimension std (> 0)
    class_means: np.ndarray  # (C, D) class means in standardised units
    axes: np.ndarray  # (k, D) orthonormal principal axes of the within-class covariance
    variances: np.ndarray  # (k,) variance along each axis (> 0)
    residual: float  # variance of what the k axes leave out, per remaining dimension (> 0)
    threshold: float  # score above this = out of domain
    info: dict  # how the threshold was chosen, rates measured at fitting, what it was fitted on

    @property
    def dim(self) -> int:
        return int(self.center.shape[0])

    def score(self, embedding: np.ndarray) -> np.ndarray:
        """(N, D) or (D,) embeddings -> (N,) scores (float64); larger = farther from the training data."""
        e = np.asarray(embedding, np.float64)
        if e.ndim == 1:
            e = e[None]
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise ArtifactError(
                f"out-of-domain gate: embedding of shape {tuple(np.shape(embedding))}; expected (N, {self.dim})"
            )
        z = (e - self.center) / self.scale  # (N, D)
        d = z[:, None, :] - self.class_means[None]  # (N, C, D)
        proj = d @ self.axes.T  # (N, C, k)
        inside = (proj**2 / self.variances).sum(-1)  # (N, C)
        outside = np.maximum((d**2).sum(-1) - (proj**2).sum(-1), 0.0) / self.residual
        return (inside + outside).min(axis=1) / self.dim

    def out_of_domain(self, embedding: np.ndarray) -> np.ndarray:
        """(N, D) -> (N,) bool: True where the score is above the threshold (NaN counts as out)."""
        s = self.score(embedding)
        return ~(s <= self.threshold)

    # ------------------------------------------------------------------ manifest round trip
    def to_dict(self) -> dict:
        r = lambda a: np.round(np.asarray(a, np.float64), 7).tolist()  # noqa: E731  (7 digits: 1e-7 relative is far below any threshold margin)
        return {
            "method": OOD_METHOD,
            "dim": self.dim,
            "threshold": float(self.threshold),
            "params": {
                "center": r(self.center),
                "scale": r(self.scale),
                "class_means": r(self.class_means),
                "axes": r(self.axes),
                "variances": r(self.variances),
                "residual": float(self.residual),
            },
            **{k: v for k, v in self.info.items() if k not in ("method", "dim", "threshold", "params")},
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest ood") -> OodGate:
        """Validate a manifest's `ood` entry -> OodGate. ArtifactError names what is wrong."""
        if not isinstance(d, dict):
            raise ArtifactError(f"{where}: expected an object; got {type(d).__name__}")
        if d.get("method") != OOD_METHOD:
            raise ArtifactError(f"{where}: method {d.get('method')!r}; this streamcad knows {OOD_METHOD!r}")
        p = d.get("params")
        if not isinstance(p, dict):
            raise ArtifactError(f"{where}: no 'params' object")
        try:
            dim = int(d["dim"])
            center = np.asarray(p["center"], np.float64)
            scale = np.asarray(p["scale"], np.float64)
            means = np.asarray(p["class_means"], np.float64)
            axes = np.asarray(p["axes"], np.float64)
            var = np.asarray(p["variances"], np.float64)
            residual = float(p["residual"])
            threshold = float(d["threshold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}: missing or malformed field: {exc}") from exc
        k = var.shape[0] if var.ndim == 1 else -1
        shapes_ok = (
            dim >= 1
            and center.shape == (dim,)
            and scale.shape == (dim,)
            and means.ndim == 2
            and means.shape[1] == dim
            and means.shape[0] >= 1
            and axes.shape == (k, dim)
            and 0 <= k <= dim
        )
        if not shapes_ok:
            raise ArtifactError(
                f"{where}: parameter shapes center {center.shape}, scale {scale.shape}, class_means {means.shape}, "
                f"axes {axes.shape}, variances {var.shape}; expected (D,), (D,), (C, D), (k, D), (k,) with D = dim = {dim}"
            )
        arrays = (center, scale, means, axes, var)
        if not all(np.all(np.isfinite(a)) for a in arrays) or not math.isfinite(residual) or not math.isfinite(threshold):
            raise ArtifactError(f"{where}: non-finite parameter or threshold")
        if np.any(scale <= 0) or np.any(var <= 0) or residual <= 0:
            raise ArtifactError(f"{where}: scale, variances and residual must be > 0")
        info = {k_: v for k_, v in d.items() if k_ not in ("method", "dim", "threshold", "params")}
        return cls(center, scale, means, axes, var, residual, threshold, info)
