"""The one preprocessing function, shared by training, export and the runtime.

    gray uint8 (H, W)  --crop ROI-->  (h, w)  --letterbox to S x S-->  float32 (1, S, S)
                       --(x / 255 - mean) / std-->  model input

Letterboxing keeps the lesion's aspect ratio (a "taller-than-wide" lesion is a malignancy
sign, so a plain resize would distort evidence); the padding is black, like the background of
an ultrasound sector. Only numpy and OpenCV are needed, so the runtime never imports torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from streamcad.errors import FrameError

__all__ = ["PreprocessSpec", "letterbox", "normalise", "preprocess", "preprocess_batch"]


@dataclass(frozen=True)
class PreprocessSpec:
    """Parameters stored in every model manifest; the runtime reads them from there."""

    size: int = 160  # model input S; 160 keeps CPU training feasible (docs/ARCHITECTURE.md, compute budget)
    mean: float = 0.0  # in [0, 1] units, after /255
    std: float = 1.0
    resize: str = "letterbox"  # the only mode: keeps aspect ratio, pads with black

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        unknown = set(d) - {"size", "mean", "std", "resize"}
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}; expected size, mean, std, resize")
        spec = cls(**d)
        if spec.resize != "letterbox":
            raise ValueError(f"preprocessing resize={spec.resize!r}; expected 'letterbox'")
        if spec.size < 16 or spec.std <= 0:
            raise ValueError(f"preprocessing size={spec.size} std={spec.std}; expected size >= 16 and std > 0")
        return spec


def _check_gray(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 2:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '?')} shape {getattr(image, 'shape', '?')}"
        raise FrameError(f"expected a grayscale uint8 image of shape (H, W); got {got}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise FrameError(f"expected an image of at least 2x2 pixels; got shape {image.shape}")


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a grayscale uint8 image to fit in size x size, centred on black. -> (size, size) uint8."""
    _check_gray(image)
    h, w = image.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    out = np.zeros((size, size), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def preprocess(
    image: np.ndarray,
    spec: PreprocessSpec,
    roi: tuple[int, int, int, int] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Grayscale uint8 frame (+ optional ROI x, y, w, h) -> float32 (1, S, S) model input.

    `out`, if given, is a preallocated float32 (1, S, S) array written in place (the runtime
    reuses one buffer per frame slot instead of allocating on the hot path).
    """
    _check_gray(image)
    if roi is not None:
        x, y, w, h = roi
        H, W = image.shape
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > W or y + h > H:
            raise FrameError(f"ROI {roi} (x, y, w, h) does not fit inside a {W}x{H} frame")
        image = image[y : y + h, x : x + w]
    return normalise(letterbox(image, spec.size), spec, out)


def normalise(boxed: np.ndarray, spec: PreprocessSpec, out: np.ndarray | None = None) -> np.ndarray:
    """An already letterboxed (S, S) uint8 view -> float32 (1, S, S) model input, (x / 255 - mean) / std
    as one fused multiply-add (into `out` when given)."""
    if out is None:
        out = np.empty((1, spec.size, spec.size), np.float32)
    a = 1.0 / (255.0 * spec.std)
    b = -spec.mean / spec.std
    np.multiply(boxed, np.float32(a), out=out[0], casting="unsafe")
    out[0] += np.float32(b)
    return out


def preprocess_batch(
    images: list[np.ndarray], spec: PreprocessSpec, rois: list | None = None
) -> np.ndarray:
    """A list of grayscale frames -> float32 (N, 1, S, S)."""
    batch = np.empty((len(images), 1, spec.size, spec.size), np.float32)
    for i, img in enumerate(images):
        preprocess(img, spec, None if rois is None else rois[i], out=batch[i])
    return batch
