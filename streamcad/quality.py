"""Per-frame quality flags: is this crop worth a malignancy score?

    ROI crop (h, w) uint8 --INTER_AREA to <= 128 px--> g (float32)
        blank           g nearly uniform, or nearly all black
        frozen          mean |g - g_prev| (64 px) below a noise floor for >= N consecutive frames
        no_signal       the source reports itself stale (no new frame for a while)
        not_ultrasound  chroma (colourfulness of the original frame) above a threshold, or
                        no speckle: too few local intensity maxima inside solid tissue
                        (desktop screens, rendered text, smooth gradients)
        doppler         colour-flow pixels (the source's colour mask: saturated red/orange or
                        blue) cover more than a small fraction of the sector: a colour-Doppler
                        box, whose colours the grayscale model was never meant to read

The pipeline publishes the flags with each score; consumers should not trust a score that
carries any flag. Only numpy and OpenCV; one small resize plus a few 128-px ops per frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from streamcad.errors import ConfigError, FrameError
from streamcad.messages import FLAGS as _MESSAGE_FLAGS

__all__ = ["FLAGS", "QualityConfig", "QualityChecker", "doppler_fraction", "is_blank", "speckle_density"]

# the flags this checker raises: every message flag (streamcad.messages.FLAGS, the one list)
# but 'out_of_domain', which is the out-of-domain gate's (streamcad.gate_ood)
FLAGS: tuple[str, ...] = tuple(f for f in _MESSAGE_FLAGS if f != "out_of_domain")


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds, each measured on the real data in ../shared/data (see the comments)."""

    # The checks run on a copy whose longest side is this: area averaging removes pixel noise,
    # and 128 px still resolves speckle grains of real scanners (about 3-8 px at full size).
    work_side: int = 128
    # blank: std of the downsampled crop below this (a uniform screen of any brightness).
    # Real BUSI / BUS-BRA images and the scanner recordings have std >= 20.
    blank_std: float = 2.0
    # blank: 99th percentile at or below this (nearly all black; a probe in air or unplugged).
    # Real images have p99 >= 100.
    black_level: float = 10.0
    # frozen: compared on a 64-px copy (float, area-averaged), where re-encoding noise averages
    # out faster than speckle change does.
    frozen_side: int = 64
    # frozen: mean |difference| to the previous frame (grey levels, 64-px copy) below this counts
    # as "unchanged". Measured: a frozen screen through an mp4v round trip gives <= 0.18 (its
    # keyframe refresh is the largest); the Clarius recording's duplicated frames <= 0.07; a live
    # but still probe >= 0.30 (the end of the Butterfly phantom recording), because speckle and
    # electronic noise decorrelate. 0.24 sits between (geometric mean).
    frozen_diff: float = 0.24
    # frozen: this many consecutive unchanged frames (a third of a second at 30 fps). Capture
    # cards running faster than the scanner repeat single frames; those never reach this.
    frozen_frames: int = 10
    # not_ultrasound: Hasler-Suesstrunk colourfulness of the original frame above this. Gray
    # scanner screens with a colour logo measure 0.9-2.7; BUSI's colour-Doppler images reach
    # 14.2 and are still ultrasound; photos and desktop screens are usually above 30.
    chroma_max: float = 20.0
    # not_ultrasound: strict local maxima per pixel of solid tissue (pixels > 10 whose 5x5
    # neighbourhood is all tissue). Real images: >= 0.022 (BUS-BRA, BUSI, both recordings);
    # gradients, desktop screens and rendered text: <= 0.001.
    min_speckle: float = 0.008
    # not_ultrasound: below this fraction of solid tissue the density is taken over this
    # fraction instead (thin text strokes on black have no solid tissue at all). The Clarius
    # crop, mostly a black eyeball, has 0.29.
    min_tissue: float = 0.05
    # doppler: fraction of the sector's colour-mask samples that are colour flow (after a 3x3
    # opening that removes thin coloured lines) above this. BUSI's colour-Doppler images measure
    # 0.0024-0.0038 (one with a single small flow spot 0.0005); its yellow calipers and the
    # recordings' green overlay box and ECG trace 0 (hue excluded or opened away).
    doppler_min_fraction: float = 0.001

    def __post_init__(self) -> None:
        for key in (
            "blank_std",
            "black_level",
            "frozen_diff",
            "chroma_max",
            "min_speckle",
            "min_tissue",
            "doppler_min_fraction",
        ):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"quality.{key}={v!r}: expected a finite number >= 0")
        for key, low in (("work_side", 8), ("frozen_side", 8), ("frozen_frames", 1)):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(f"quality.{key}={v!r}: expected an integer >= {low}")


_TISSUE = 10.0  # grey level above which a pixel is tissue rather than background
_NB = np.ones((3, 3), np.uint8)
_NB[1, 1] = 0  # 8-neighbourhood, centre excluded
_CORE = np.ones((5, 5), np.uint8)


def speckle_density(g: np.ndarray, min_tissue: float = 0.05) -> float:
    """Strict local maxima per pixel of solid tissue in a float32 (h, w) image (speckle grains)."""
    tissue = (g > _TISSUE).astype(np.uint8)
    core = cv2.erode(tissue, _CORE, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    peaks = (g > cv2.dilate(g, _NB) + 0.5) & core
    return float(peaks.sum()) / max(float(core.sum()), min_tissue * g.size, 1.0)


def doppler_fraction(colour: np.ndarray | None, frame_shape: tuple[int, int], roi: tuple[int, int, int, int]) -> float:
    """Fraction of the sector's colour-mask samples that are colour flow (Frame.colour, strided),
    after a 3x3 opening (a caliper cross or a 1-2 px line never survives it). 0.0 for gray frames."""
    if colour is None:
        return 0.0
    if not isinstance(colour, np.ndarray) or colour.ndim != 2 or colour.size == 0:
        raise FrameError(f"colour mask must be a non-empty (h, w) array; got {getattr(colour, 'shape', colour)!r}")
    s = max(1, -(-frame_shape[0] // colour.shape[0]))  # the stride: ceil(H / rows)
    x, y, w, h = roi
    crop = colour[y // s : -(-(y + h) // s), x // s : -(-(x + w) // s)]
    if crop.size == 0:
        return 0.0
    opened = cv2.morphologyEx(np.ascontiguousarray(crop, np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    return float(np.count_nonzero(opened)) / crop.size


def _blank(g: np.ndarray, cfg: QualityConfig) -> bool:
    """A downsampled float32 image that is nearly uniform or nearly all black."""
    return float(g.std()) < cfg.blank_std or float(np.percentile(g, 99)) <= cfg.black_level


def is_blank(image: np.ndarray, config: QualityConfig | None = None) -> bool:
    """Is a whole (H, W) uint8 frame black or uniform (start-up, a probe in air or unplugged)?

    The pipeline asks this when no image sector was found on the screen, so that a black
    opening frame is flagged 'blank' and not 'not_ultrasound'.
    """
    cfg = config if config is not None else QualityConfig()
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 2 or image.size == 0:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '?')} shape {getattr(image, 'shape', '?')}"
        raise FrameError(f"is_blank expects a non-empty grayscale uint8 frame of shape (H, W); got {got}")
    return _blank(QualityChecker._downsample(image, cfg.work_side), cfg)


class QualityChecker:
    """Flags per frame. Keeps one downsampled previous frame and a counter; reset() on resize.

    checker = QualityChecker(QualityConfig())
    flags = checker.check(frame.image[y:y+h, x:x+w], frame.chroma, stale=source.state == 'stale')
    """

    def __init__(self, config: QualityConfig | None = None) -> None:
        self.config = config if config is not None else QualityConfig()
        if not isinstance(self.config, QualityConfig):
            raise ConfigError(
                f"QualityChecker expects a QualityConfig; got {type(self.config).__name__}"
            )
        self._prev: np.ndarray | None = None
        self._unchanged = 0

    def reset(self) -> None:
        """Forget the previous frame (call when the resolution or the ROI changes)."""
        self._prev, self._unchanged = None, 0

    @staticmethod
    def _downsample(image: np.ndarray, side: int) -> np.ndarray:
        """(h, w) -> float32 with the longest side <= side (area averaging, no rounding)."""
        h, w = image.shape
        k = max(h, w) // side
        if image.dtype == np.uint8 and k >= 2 and min(h, w) >= 2 * k:
            # A fast uint8 pass first: OpenCV's area resize is ~4x faster at an integer factor,
            # so crop to a multiple of k (dropping < k edge pixels). Its rounding (+-0.5)
            # averages out in the float pass below, so the frozen check keeps its precision.
            h, w = h // k, w // k
            image = cv2.resize(image[: h * k, : w * k], (w, h), interpolation=cv2.INTER_AREA)
        s = min(1.0, side / max(h, w))
        image = image.astype(np.float32)
        if s < 1.0:
            image = cv2.resize(
                image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA
            )
        return image

    def check(self, roi_image: np.ndarray, chroma: float, stale: bool, colour_fraction: float = 0.0) -> frozenset[str]:
        """ROI crop (h, w) uint8 + chroma of the original frame + source staleness (+ the sector's
        colour-flow fraction, doppler_fraction) -> set of FLAGS."""
        if (
            not isinstance(roi_image, np.ndarray)
            or roi_image.dtype != np.uint8
            or roi_image.ndim != 2
        ):
            got = f"{type(roi_image).__name__} {getattr(roi_image, 'dtype', '?')} shape {getattr(roi_image, 'shape', '?')}"
            raise FrameError(
                f"quality check expects a grayscale uint8 ROI image of shape (h, w); got {got}"
            )
        if roi_image.size == 0:
            raise FrameError(f"quality check got an empty ROI image (shape {roi_image.shape})")
        try:
            chroma = float(chroma)
        except (TypeError, ValueError) as exc:
            raise FrameError(f"quality check expects chroma as a number; got {chroma!r}") from exc
        if not math.isfinite(chroma) or chroma < 0:
            raise FrameError(
                f"quality check expects chroma as a finite number >= 0; got {chroma!r}"
            )
        cfg = self.config
        g = self._downsample(
            roi_image, cfg.work_side
        )  # (h', w') float32, longest side <= work_side
        small = self._downsample(g, cfg.frozen_side)  # (h'', w'') float32 for the frozen check
        flags = set()
        if stale:
            flags.add("no_signal")

        if _blank(g, cfg):
            flags.add("blank")
        elif chroma > cfg.chroma_max or speckle_density(g, cfg.min_tissue) < cfg.min_speckle:
            flags.add("not_ultrasound")  # not evaluated on blank crops: blank says it better

        if self._prev is not None and self._prev.shape == small.shape:
            if float(np.abs(small - self._prev).mean()) < cfg.frozen_diff:
                self._unchanged += 1
            else:
                self._unchanged = 0
        else:
            self._unchanged = 0  # first frame, or the crop changed size: nothing to compare
        self._prev = small
        if self._unchanged >= cfg.frozen_frames:
            flags.add("frozen")
        if not (0.0 <= colour_fraction <= 1.0):
            raise FrameError(f"quality check expects colour_fraction in [0, 1]; got {colour_fraction!r}")
        if colour_fraction > cfg.doppler_min_fraction:
            flags.add("doppler")
        return frozenset(flags)
