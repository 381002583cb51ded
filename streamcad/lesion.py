"""The lesion box: from the model's lesion-probability map to a box in frame pixels.

    saliency (h, w) in [0, 1], p(lesion) per cell of the model input's grid (models whose manifest
    says `saliency_kind = "lesion_probability"`, e.g. lite0: S/8 cells)
      -> cells >= threshold -> largest 8-connected component
      -> its bounding box in model-input pixels -> undo letterbox and ROI -> (x, y, w, h) frame pixels
      -> confidence = the highest p(lesion) inside the component

A map with no cell at or above the threshold gives no box (None): the model sees no lesion there.
Attention maps (`saliency_kind = "attention"`, max-normalised per frame) have no absolute scale,
so no box is derived from them; only their peak is published.
Numpy + OpenCV only; ~20 us for a 20 x 20 map.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["LesionBox", "lesion_box", "input_to_frame"]

DEFAULT_THRESHOLD = 0.5  # the lesion head is trained with BCE: 0.5 is its decision point


@dataclass(frozen=True)
class LesionBox:
    box: tuple[int, int, int, int]  # x, y, w, h in frame pixels
    confidence: float  # max p(lesion) inside the box's component, in [0, 1]


def input_to_frame(u: float, v: float, roi: tuple[int, int, int, int], size: int) -> tuple[float, float]:
    """A point (u, v) in model-input pixels (S x S letterbox of the ROI) -> frame pixels (float).
    The inverse of streamcad.preprocess.letterbox applied to the ROI crop."""
    rx, ry, rw, rh = roi
    scale = size / max(rw, rh)
    left, top = (size - max(1, round(rw * scale))) // 2, (size - max(1, round(rh * scale))) // 2
    return rx + (u - left) / scale, ry + (v - top) / scale


def lesion_box(prob: np.ndarray, roi: tuple[int, int, int, int], size: int,
               threshold: float = DEFAULT_THRESHOLD) -> LesionBox | None:
    """(h, w) lesion-probability map of one frame -> its lesion box in frame pixels, or None."""
    prob = np.asarray(prob, np.float32)
    if prob.ndim != 2 or not np.isfinite(prob).all():
        raise ValueError(f"lesion map must be a finite (h, w) array; got shape {prob.shape}")
    on = (prob >= threshold).astype(np.uint8)
    if not on.any():
        return None
    n, lab, stats, _ = cv2.connectedComponentsWithStats(on, connectivity=8)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))  # label 0 is the background
    x, y, w, h = (int(stats[k, i]) for i in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
    gh, gw = prob.shape
    x0, y0 = input_to_frame(x * size / gw, y * size / gh, roi, size)
    x1, y1 = input_to_frame((x + w) * size / gw, (y + h) * size / gh, roi, size)
    rx, ry, rw, rh = roi
    x0, y0 = max(rx, int(np.floor(x0))), max(ry, int(np.floor(y0)))  # clip to the ROI: the letterbox pad is not image
    x1, y1 = min(rx + rw, int(np.ceil(x1))), min(ry + rh, int(np.ceil(y1)))
    if x1 <= x0 or y1 <= y0:
        return None  # the component lies in the letterbox padding only
    conf = float(prob[lab == k].max())
    return LesionBox(box=(x0, y0, x1 - x0, y1 - y0), confidence=min(1.0, max(0.0, conf)))
