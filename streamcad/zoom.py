"""The lesion zoom: a second look at the lesion region at twice the input's resolution.

    train: image at 2S + its mask --box_from_mask (jittered square around the lesion)--> box
    test:  full view (S) --lesion map (S/8)--> box_from_map (square around the strongest region)
    box --crop (from the 2S image: twice the detail of the full view)--> (S, S) zoomed view

A run with `RecipeConfig.zoom = p` trains on zoomed views in place of the full view for a share p
of each batch (same step count, so the same training time), and scores every image as the mean
of the full view's and the zoomed view's logits (docs/TRAINING.md, "Addendum: the lesion zoom").
The box is a square (aspect ratio kept: taller-than-wide is a malignancy sign), `margin` times
the lesion's longer side, never smaller than `min_side` of the image, moved inside the image.
Pure numpy + OpenCV, the same crop at training and test time and at run time on the sector.

At run time a model whose manifest has `zoom` (ZoomSpec) is scored the same way (`two_view`):

    sector --letterbox S--> full view --backend--> logits_full, saliency (p(lesion)), embedding
    sector --letterbox 2S--> hi view; box_from_map(saliency) --crop--> zoomed view --backend--> logits_zoom
    logits = (logits_full + logits_zoom) / 2; saliency, lesion box and embedding (the gate's) from the full view
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from streamcad.errors import ArtifactError, ConfigError
from streamcad.preprocess import letterbox, normalise

__all__ = ["MARGIN", "TRAIN_MARGIN", "MIN_SIDE", "ZoomSpec", "square_box", "box_from_mask", "box_from_map", "crop",
           "zoom_views", "hi_view", "two_view"]

MARGIN = 2.0  # test-time box side / lesion's longer side: the lesion plus its surroundings (margins, halo)
TRAIN_MARGIN = (1.6, 2.4)  # uniform at training time, around MARGIN
CENTRE_JITTER = 0.1  # of the box side, each axis, at training time
MIN_SIDE = 0.2  # of the image side: a tiny or missed lesion still gets some context
_MAP_LEVEL = 0.5  # lesion probability that counts as lesion; below it, half the map's maximum


@dataclass(frozen=True)
class ZoomSpec:
    """The manifest's `zoom`: how the runtime takes the second, zoomed look (what training used)."""

    kind: str = "lesion_zoom"
    margin: float = MARGIN
    min_side: float = MIN_SIDE
    scale: int = 2  # the zoom is cut from the sector letterboxed at scale x S

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest") -> ZoomSpec:
        if not isinstance(d, dict) or set(d) - set(asdict(cls())):
            raise ArtifactError(f"{where}: zoom={d!r}; expected an object with some of {sorted(asdict(cls()))}")
        z = cls(**d)
        if z.kind != "lesion_zoom" or not 1 <= z.margin <= 8 or not 0 < z.min_side <= 1 or z.scale not in (1, 2, 3, 4):
            raise ArtifactError(f"{where}: zoom={d!r}; expected kind 'lesion_zoom', margin in [1, 8], min_side in (0, 1], "
                                "scale 1-4")
        return z


def square_box(cx: float, cy: float, side: float, size: int, min_side: float = MIN_SIDE) -> tuple[int, int, int]:
    """Centre and side in pixels of a size x size image -> (x0, y0, side) integers, the square moved
    (not cut) to lie inside the image, side clipped to [min_side x size, size]."""
    side = int(round(min(max(side, min_side * size), size)))
    x0 = int(round(min(max(cx - side / 2, 0), size - side)))
    y0 = int(round(min(max(cy - side / 2, 0), size - side)))
    return x0, y0, side


def box_from_mask(mask: np.ndarray, rng: np.random.Generator | None = None) -> tuple[int, int, int]:
    """Lesion mask (H, H) {0, 255} -> (x0, y0, side): the lesion's bounding box, squared, times MARGIN
    (rng None) or a margin drawn from TRAIN_MARGIN with the centre jittered (rng given). An empty
    mask (normal tissue) gives a random square of 0.4-0.8 of the image (rng) or the whole image."""
    size = mask.shape[0]
    ys, xs = np.nonzero(mask > 127)
    if xs.size == 0:
        if rng is None:
            return 0, 0, size
        side = rng.uniform(0.4, 0.8) * size
        return square_box(rng.uniform(side / 2, size - side / 2), rng.uniform(side / 2, size - side / 2), side, size)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    long_side = max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if rng is None:
        return square_box(cx, cy, MARGIN * long_side, size)
    side = rng.uniform(*TRAIN_MARGIN) * long_side
    cx += rng.uniform(-CENTRE_JITTER, CENTRE_JITTER) * side
    cy += rng.uniform(-CENTRE_JITTER, CENTRE_JITTER) * side
    return square_box(cx, cy, side, size)


def box_from_map(pmap: np.ndarray, size: int, margin: float = MARGIN, min_side: float = MIN_SIDE) -> tuple[int, int, int]:
    """Lesion probability map (h, w) in [0, 1] of a size x size view -> (x0, y0, side) in that view's
    pixels: the connected region around the map's maximum where p >= 0.5 (or >= half the maximum
    when nothing reaches 0.5), its bounding box squared times `margin`."""
    if pmap.ndim != 2 or pmap.shape[0] != pmap.shape[1]:
        raise ConfigError(f"lesion map of shape {pmap.shape}; expected a square (h, h) map")
    peak = float(pmap.max())
    level = _MAP_LEVEL if peak >= _MAP_LEVEL else peak / 2
    region = (pmap >= level).astype(np.uint8)
    _, lab = cv2.connectedComponents(region, connectivity=8)
    iy, ix = np.unravel_index(int(np.argmax(pmap)), pmap.shape)
    ys, xs = np.nonzero(lab == lab[iy, ix])
    cell = size / pmap.shape[0]
    x0, x1, y0, y1 = xs.min() * cell, (xs.max() + 1) * cell, ys.min() * cell, (ys.max() + 1) * cell
    return square_box((x0 + x1) / 2, (y0 + y1) / 2, margin * max(x1 - x0, y1 - y0), size, min_side)


def crop(image: np.ndarray, box: tuple[int, int, int], out: int, nearest: bool = False) -> np.ndarray:
    """(x0, y0, side) of a 2-D uint8 image -> (out, out) uint8: area averaging when shrinking,
    bilinear when enlarging (nearest for masks)."""
    x0, y0, side = box
    if side < 1 or x0 < 0 or y0 < 0 or x0 + side > image.shape[1] or y0 + side > image.shape[0]:
        raise ConfigError(f"zoom box {box} outside the {image.shape[1]}x{image.shape[0]} image")
    patch = image[y0:y0 + side, x0:x0 + side]
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if side > out else cv2.INTER_LINEAR)
    return cv2.resize(patch, (out, out), interpolation=interp)


def zoom_views(images_hi: np.ndarray, boxes_lo: list[tuple[int, int, int]], out: int) -> np.ndarray:
    """Boxes in the full view's pixels (size `out`) -> crops of the 2x images (N, 2*out, 2*out)."""
    scale = images_hi.shape[-1] / out
    return np.stack([crop(img, (round(x0 * scale), round(y0 * scale), round(s * scale)), out)
                     for img, (x0, y0, s) in zip(images_hi, boxes_lo, strict=True)])


def hi_view(image: np.ndarray, roi: tuple[int, int, int, int] | None, size: int, zoom: ZoomSpec) -> np.ndarray:
    """The sector (ROI x, y, w, h of a grayscale uint8 frame) letterboxed at zoom.scale x S: the zoom's source."""
    if roi is not None:
        x, y, w, h = roi
        image = image[y : y + h, x : x + w]
    return letterbox(image, zoom.scale * size)


def two_view(backend, x: np.ndarray, images_hi: np.ndarray, spec, zoom: ZoomSpec) -> dict:
    """The full views x (N, 1, S, S) (model input) and their hi views (N, scale*S, scale*S) uint8 ->
    the backend's outputs for the full view, with 'logits' the mean of both views' logits, beside
    'logits_full', 'logits_zoom' and 'zoom_boxes' (full-view pixels). Two backend calls of N."""
    out = backend.infer(x)
    sal = np.asarray(out["saliency"])
    size = spec.size
    boxes = [box_from_map(sal[i, 0], size, zoom.margin, zoom.min_side) for i in range(len(sal))]
    views = zoom_views(images_hi, boxes, size)
    zx = np.empty_like(x)
    for i, v in enumerate(views):
        normalise(v, spec, out=zx[i])  # the crops are S x S already: no second letterbox
    zoom_logits = np.asarray(backend.infer(zx)["logits"])
    full = np.asarray(out["logits"])
    return {**out, "logits": (full + zoom_logits) / 2, "logits_full": full, "logits_zoom": zoom_logits, "zoom_boxes": boxes}
