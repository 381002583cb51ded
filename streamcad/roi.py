"""Find the ultrasound image sector (ROI) inside a scanner screen.

A capture card delivers the whole scanner screen: a dark background, UI text, icons, a depth
ruler, perhaps a colour logo, colour and grey bars, an ECG trace, on a duplex screen a scrolling
spectral-Doppler panel, and the image sector (a rectangle for linear probes, a fan or an annulus
for curved ones). The classifier must see the sector and nothing else. docs/ROI.md has the
measured accuracy per recording, the cost and the limits.

    gray uint8 frames (H, W) --downscale (longest side 256)--> small frames (T of them)
        signal:   temporal max > border background + margin (the sector is brighter than the
                  screen) --close (join speckle) -> open (drop text strokes, ruler ticks, thin
                  lines, the ECG trace) -> fill holes (dark anechoic regions inside the sector)
        --> connected components
        traces:   with T >= 3, a component whose frame-to-frame change is a rigid sideways
                  shift (scrolling) or sits in a narrow band of columns (an erase bar sweeping)
                  is a spectral-Doppler / M-mode / ECG trace: out of the running (_trace_like)
        score:    area x speckle texture inside the component (x liveness: temporal std, when
                  the frames move; the UI is static) --> the best component
        pieces:   other thick, textured components beside it, within its row or column span,
                  across gaps of <= 5% of the screen (a sector split by dark water) join it
        box:      bounding box -> full resolution -> edges snapped to the full-resolution frame
        fan:      a curved sector is symmetric about the line through its apex: the flank seen
                  further out sets both sides (a flank without echo is still sector)
        --> Roi(x, y, w, h, shape, confidence)

`detect_roi` works on one frame or many. `RoiTracker` runs per frame in the pipeline: it detects
on the first frame (single-frame cues: a box from frame 0), refines once after `warmup_frames`
frames (temporal cues), re-detects on a window every `redetect_every` frames and when the frame
size changes, and otherwise returns the same box (no jitter, near-zero cost). A frame without
any sector (a black screen) gets confidence 0 and the whole frame. Only numpy and OpenCV.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from streamcad.errors import ConfigError, FrameError

__all__ = ["Roi", "RoiTracker", "detect_roi", "parse_roi", "iou"]

log = logging.getLogger(__name__)

_WORK_SIDE = 256  # detection runs on a copy whose longest side is this: ~1-3 ms per frame
_MIN_SIDE = 16  # smaller frames cannot hold a sector plus UI; refuse them with a FrameError
_DARK_MARGIN = 6.0  # grey levels above the background that count as "signal" (after area-averaging)
_LIVE_STD = 1.5  # temporal std (grey levels, downscaled) above which a pixel is "live"
_TEXTURE_RESID = 1.0  # |g - blur3(g)| above this is speckle-like texture
_MIN_AREA_FRAC = 0.02  # a sector smaller than 2% of the screen is not a usable image
_CURVED_FILL = 0.85  # sector area / box area below this -> a fan or annulus ('curved')
_EARLY_FRAMES = 3  # the tracker detects once more on its first 3 frames (the first temporal cues)
_MIN_PIECE_FRAC = 0.002  # components below 0.2% of the screen are never traces or sector pieces
_MIN_PIECE_SIDE = (
    0.03  # ... and must be this thick (x the working side): bars and rulers are thinner
)
_STILL_PIECE_MAX = (
    0.25  # with moving frames, a still piece may join only up to this x the sector's area
)
_MERGE_REACH = 0.05  # sector pieces join across dark gaps of up to 5% of the working side
_MOVE_MIN = 0.5  # mean |frame difference| (grey levels) below which a frame pair shows no motion
_MAX_SHIFT = (
    6  # scroll test: horizontal shifts up to this many working pixels per frame (half steps) ...
)
_TRACE_PAIRS = 4  # ... tested on at most this many frame pairs of the window
_SCROLL_RESID = (
    0.35  # a rigid shift leaving < 35% of the change: scrolling (speckle never does that)
)
_SWEEP_CONC = 0.8  # > 80% of a frame's change in 15% of the columns: an erase bar sweeping
_FAN_END_RATIO = 0.6  # a fan's narrow end is < 60% as wide as its far end
_FAN_MIRROR_MAX = 0.75  # mirroring may not widen the box by more than half again (a bad axis)
_FAN_AXIS_OFFSET = 0.15  # ... and the apex must lie within 15% of the box width of its middle


@dataclass(frozen=True)
class Roi:
    """The image sector's bounding box in full-resolution pixels."""

    x: int
    y: int
    w: int
    h: int
    shape: str = "linear"  # 'linear' (rectangle) or 'curved' (fan / annulus)
    confidence: float = 1.0  # 0 = no sector found (the box is then the whole frame)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def parse_roi(text: str) -> tuple[int, int, int, int]:
    """Parse the `--roi x,y,w,h` flag into a tuple of four ints (x, y >= 0; w, h > 0)."""
    expected = "expected four integers 'x,y,w,h' with x, y >= 0 and w, h > 0, e.g. '100,80,640,480'"
    if not isinstance(text, str):
        raise ConfigError(f"--roi {text!r}: {expected}")
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise ConfigError(f"--roi {text!r} has {len(parts)} fields; {expected}")
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError as exc:
        raise ConfigError(f"--roi {text!r} is not all integers; {expected}") from exc
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise ConfigError(f"--roi {text!r} is out of range; {expected}")
    return (x, y, w, h)


def _check_frame(image: object, what: str = "frame") -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 2:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '?')} shape {getattr(image, 'shape', '?')}"
        raise FrameError(
            f"ROI detection expects a grayscale uint8 {what} of shape (H, W); got {got}"
        )
    if min(image.shape) < _MIN_SIDE:
        raise FrameError(
            f"ROI detection needs a {what} of at least {_MIN_SIDE}x{_MIN_SIDE} pixels; got shape {image.shape}"
        )
    return image


def _downscale(image: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (h, w) uint8 with max(h, w) <= _WORK_SIDE (area averaging kills pixel noise)."""
    h, w = image.shape
    s = min(1.0, _WORK_SIDE / max(h, w))
    if s >= 1.0:
        return image
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the background regions not reachable from the image border (dark areas inside the sector)."""
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = padded.copy()
    ffmask = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(flood, ffmask, (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return (mask.astype(bool) | holes).astype(np.uint8)


def _edge(lines: np.ndarray, inside: np.ndarray, background: float) -> int | None:
    """Index of the first line (scanning from index 0, outside the box inwards) that holds sector image.

    lines: (n, L) uint8 rows or columns of the frame across the box span; inside: (n, L) bool,
    the detected sector region (dilated) at full resolution, so UI outside it never counts. A
    sector line has >= 3 signal pixels with speckle spread; a UI separator line is uniform.
    """
    a = lines.astype(np.float32)
    sig = (a > background + _DARK_MARGIN) & inside  # (n, L)
    cnt = sig.sum(axis=1)  # (n,)
    n = np.maximum(cnt, 1)
    mean = (a * sig).sum(axis=1) / n
    spread = np.sqrt(
        np.maximum((a * a * sig).sum(axis=1) / n - mean * mean, 0.0)
    )  # std of signal pixels
    # Small blobs touching the edge (a ruler dot, a logo) have few pixels next to the sector's
    # full lines; a fan corner grows steadily inwards. Relative count + contiguity keep the corner.
    ok = (cnt >= max(3.0, 0.05 * float(cnt.max()))) & (spread > 2.5)
    if not ok.any():
        return None
    if ok[-1]:
        bad = np.nonzero(~ok)[0]
        return int(bad[-1]) + 1 if len(bad) else 0
    return int(np.argmax(ok))


def _refine_edges(
    full: np.ndarray,
    region: np.ndarray,
    box: tuple[int, int, int, int],
    band: int,
    background: float,
) -> tuple[int, int, int, int]:
    """Snap each edge of a coarse (x0, y0, x1, y1) box to the outermost sector line at full resolution.

    region: (H, W) bool, the sector component upsampled and dilated: only signal inside it counts.
    """
    H, W = full.shape
    x0, y0, x1, y1 = box
    ys, xs = (
        slice(max(0, y0 - band), min(H, y1 + band)),
        slice(max(0, x0 - band), min(W, x1 + band)),
    )
    edges = []
    for lo, hi, rows, flip in [
        (y0 - band, y0 + band, True, False),
        (y1 - band, y1 + band, True, True),
        (x0 - band, x0 + band, False, False),
        (x1 - band, x1 + band, False, True),
    ]:
        n = H if rows else W
        lo, hi = max(0, lo), min(n, hi)
        if rows:
            lines, inside = full[lo:hi, xs], region[lo:hi, xs]
        else:
            lines, inside = full[ys, lo:hi].T, region[ys, lo:hi].T
        if flip:
            lines, inside = lines[::-1], inside[::-1]
        e = _edge(lines, inside, background)
        edges.append(None if e is None else (hi - e if flip else lo + e))
    nx0, ny0, nx1, ny1 = (
        old if new is None else new
        for old, new in zip((x0, y0, x1, y1), (edges[2], edges[0], edges[3], edges[1]), strict=True)
    )
    if nx1 - nx0 < 2 or ny1 - ny0 < 2:
        return box
    return nx0, ny0, nx1, ny1


def _trace_like(sub: np.ndarray, mask: np.ndarray) -> bool:
    """Is this live component a scrolling trace (spectral Doppler, M-mode, ECG) and not an image?

    sub: (T, h, w) float32 frames cropped to the component's box; mask: (h, w) bool component.
    A trace moves in one of two ways, both unlike a B-mode image (whose speckle changes all over
    and does not translate rigidly):
      scroll: the whole panel shifts sideways each frame, so frame t+1 is frame t shifted by s
              pixels (half-pixel steps, linear interpolation): the best shift leaves
              < _SCROLL_RESID of the change;
      sweep:  an erase bar runs across a still panel, so each frame's change sits in a narrow band
              of columns: the busiest 15% of columns hold > _SWEEP_CONC of it.
    At most _TRACE_PAIRS frame pairs are tested (cost: ~1 ms per large component).
    """
    T, h, w = sub.shape
    M = _MAX_SHIFT + 1
    if T < 3 or w < 4 * M or h < 8:
        return False
    m = mask.astype(np.float32)
    core = m[:, M:-M]  # (h, w - 2M): columns every tested shift can fill from inside the crop
    n_core = max(float(core.sum()), 1.0)
    k = max(1, int(np.ceil(0.15 * w)))
    scroll, sweep = [], []
    pairs = np.unique(np.linspace(0, T - 2, min(T - 1, _TRACE_PAIRS)).round().astype(int))
    for t in pairs:
        a, b = sub[t], sub[t + 1]
        d = np.abs(b - a)
        bc = b[:, M:-M]
        e0 = float((d[:, M:-M] * core).sum()) / n_core
        col = (d * m).sum(axis=0)  # (w,) change per column
        if float((col / np.maximum(m.sum(axis=0), 1.0)).max()) >= 4 * _MOVE_MIN:
            # some column changed clearly (an erase bar moves only a few of them)
            sweep.append(float(np.sort(col)[-k:].sum()) / max(float(col.sum()), 1e-6))
        if e0 < _MOVE_MIN:  # no change overall (a repeated capture frame): no scroll evidence
            continue
        # a[:, M - s : w - M - s] is frame t moved right by s pixels, aligned with bc
        shifted = {s: a[:, M - s : w - M - s] for s in range(-_MAX_SHIFT, _MAX_SHIFT + 1)}
        best = e0
        for s in range(-_MAX_SHIFT, _MAX_SHIFT + 1):
            cands = [shifted[s]] if s != 0 else []
            if s < _MAX_SHIFT:
                cands.append(0.5 * (shifted[s] + shifted[s + 1]))  # s + 0.5
            for c in cands:
                best = min(best, float((np.abs(bc - c) * core).sum()) / n_core)
        scroll.append(best / e0)
    is_scroll = len(scroll) >= 2 and float(np.median(scroll)) < _SCROLL_RESID
    is_sweep = len(sweep) >= 2 and float(np.median(sweep)) > _SWEEP_CONC
    return is_scroll or is_sweep


def _gap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int]:
    """Horizontal and vertical gap (>= 0) between two (x0, y0, x1, y1) boxes (end exclusive)."""
    gx = max(0, max(a[0], b[0]) - min(a[2], b[2]))
    gy = max(0, max(a[1], b[1]) - min(a[3], b[3]))
    return gx, gy


def _merge_pieces(best: int, stats: np.ndarray, ok: np.ndarray, reach: float) -> list[int]:
    """Grow the chosen component by the other sector-like pieces next to it.

    A sector broken by dark water, a cyst or a shadow falls apart into pieces. A piece joins
    when it is sector-like (ok) and lies beside the region within `reach` working pixels,
    inside the region's column span (a piece above or below) or row span (a piece beside it):
    text and logos off to a corner of the screen stay out. Repeats until nothing joins.
    """
    x, y, w, h = (int(v) for v in stats[best, :4])
    region = (x, y, x + w, y + h)
    members = [best]
    pending = [i for i in range(1, len(stats)) if i != best and ok[i]]
    changed = True
    while changed and pending:
        changed = False
        for i in list(pending):
            cx, cy, cw, ch = (int(v) for v in stats[i, :4])
            box = (cx, cy, cx + cw, cy + ch)
            gx, gy = _gap(region, box)
            within_cols = box[0] >= region[0] and box[2] <= region[2]
            within_rows = box[1] >= region[1] and box[3] <= region[3]
            if (gx == 0 and gy <= reach and within_cols) or (
                gy == 0 and gx <= reach and within_rows
            ):
                members.append(i)
                pending.remove(i)
                region = (
                    min(region[0], box[0]),
                    min(region[1], box[1]),
                    max(region[2], box[2]),
                    max(region[3], box[3]),
                )
                changed = True
    return members


def _fan_axis(mask: np.ndarray) -> float | None:
    """x of a fan's symmetry axis (through its apex), from the narrow end of the (h, w) mask.

    A phased or convex fan is drawn symmetric about the vertical line through its apex. The
    narrow end (apex or probe face) is the top or bottom tenth of rows with the smaller width;
    its centre is the axis. None when neither end is clearly narrower (not a fan).
    """
    rows = np.nonzero(mask.any(axis=1))[0]
    if len(rows) < 10:
        return None
    sub = mask[rows[0] : rows[-1] + 1]
    has = sub.any(axis=1)
    left = np.where(has, sub.argmax(axis=1), 0)
    right = np.where(has, sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1), 0)
    width = (right - left + 1) * has
    k = max(2, len(sub) // 10)
    top, bottom = width[:k].mean(), width[-k:].mean()
    end = slice(0, k) if top < bottom else slice(len(sub) - k, len(sub))
    if min(top, bottom) > _FAN_END_RATIO * max(top, bottom):
        return None
    centre = ((left + right) / 2.0)[end][has[end]]
    return float(np.median(centre)) if len(centre) else None


def _mirror_fan(
    hull: np.ndarray,
    small_shape: tuple[int, int],
    sx: float,
    W: int,
    edges: tuple[int, int],
    coarse: tuple[int, int],
) -> tuple[int, int]:
    """Left and right edges (full resolution) of a fan, made symmetric about its apex.

    A fan flank that shows no echo in these frames (lateral dropout, lung, a dark chamber) is
    still part of the sector: fans are drawn symmetric about the vertical line through the apex,
    so the flank seen further out sets both sides. hull: the sector's convex hull in working
    pixels; edges: the snapped (x0, x1); coarse: the unsnapped ones (snapping counts signal
    pixels per column, which a sparse dim flank may not reach, so the outer of the two counts).
    """
    x0, x1 = edges
    hull_mask = np.zeros(small_shape, np.uint8)
    cv2.fillConvexPoly(hull_mask, hull, 1)
    axis = _fan_axis(hull_mask.astype(bool))
    if axis is None:
        return x0, x1
    a = (axis + 0.5) * sx
    half = max(a - min(x0, coarse[0]), max(x1, coarse[1]) - a)
    # only a fan whose apex sits near the middle of what is seen: a linear image with a shadowed
    # corner also has a 'narrow end', but far off its centre
    centred = abs(a - (x0 + x1) / 2.0) <= _FAN_AXIS_OFFSET * (x1 - x0)
    if not centred or half > _FAN_MIRROR_MAX * (x1 - x0):
        return x0, x1
    return max(0, int(np.floor(a - half))), min(W, int(np.ceil(a + half)))


def _detect_small(
    small: Sequence[np.ndarray], full_shape: tuple[int, int], full: np.ndarray | None = None
) -> Roi:
    """Detect on downscaled frames (all of one shape); return the box in full-resolution pixels.

    full: one full-resolution frame (or a per-pixel max of a few) to snap the edges to; optional.
    """
    stack = np.stack(small).astype(np.float32)  # (T, h, w)
    T, h, w = stack.shape
    H, W = full_shape
    sx, sy = W / w, H / h

    peak = stack.max(axis=0)  # (h, w): the temporal max covers dark regions that flicker
    border = np.concatenate([peak[0], peak[-1], peak[:, 0], peak[:, -1]])
    background = float(np.median(border))
    signal = (peak > background + _DARK_MARGIN).astype(np.uint8)

    # Morphology scaled to the working image: a 3 px close joins speckle; a 5 px open (about
    # 20 full-resolution px at 1280 wide) removes text strokes, ruler ticks and 1-2 px lines.
    k = 3 if min(h, w) >= 48 else 1
    closed = _fill_holes(cv2.morphologyEx(signal, cv2.MORPH_CLOSE, np.ones((k, k), np.uint8)))
    ko = 5 if min(h, w) >= 64 else (3 if min(h, w) >= 24 else 1)
    filled = _fill_holes(cv2.morphologyEx(closed, cv2.MORPH_OPEN, np.ones((ko, ko), np.uint8)))

    n, labels, stats, _ = cv2.connectedComponentsWithStats(filled, connectivity=8)
    if n <= 1:
        raise FrameError(
            f"no ultrasound sector found in the {W}x{H} frame: nothing brighter than the background "
            f"(grey level {background:.0f}); is the scanner showing an image? Pass --roi x,y,w,h to set it"
        )
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.float64)  # (n,)
    flat = labels.ravel()
    min_piece = _MIN_PIECE_FRAC * h * w

    # Scrolling traces (the spectral panel of a duplex screen, M-mode, a sweeping ECG) are live
    # and textured like the image: find them by how they move, and take them out of the running.
    trace = np.zeros(n, bool)
    std = stack.std(axis=0) if T >= 3 else None
    if std is not None:
        for i in range(1, n):
            x, y, cw, ch = (int(v) for v in stats[i, :4])
            if areas[i] >= min_piece:
                trace[i] = _trace_like(
                    stack[:, y : y + ch, x : x + cw], labels[y : y + ch, x : x + cw] == i
                )

    # Speckle texture: high-pass residual of the mean frame (uniform panels and gradients have none),
    # counted inside each component (eroded), so that the outline of a smooth bar is not texture.
    mean = stack.mean(axis=0)
    texture = np.abs(mean - cv2.blur(mean, (3, 3))) > _TEXTURE_RESID
    core = cv2.erode(filled, np.ones((3, 3), np.uint8)).astype(bool)
    texture &= core
    live = None
    if std is not None:
        live = (std > _LIVE_STD) & ~trace[labels]
        # nothing moves but traces (a frozen image or a still start): no temporal evidence
        if live.mean() < 0.002:
            live = None

    # Score every component at once: area x speckle texture (x liveness when frames move).
    core_area = np.bincount(flat, weights=core.ravel(), minlength=n)
    tex_frac = np.bincount(flat, weights=texture.ravel(), minlength=n) / np.maximum(core_area, 1)
    score = areas * (0.1 + tex_frac)
    live_frac = None
    if live is not None:
        live_frac = np.bincount(flat, weights=live.ravel(), minlength=n) / np.maximum(areas, 1)
        score *= 0.1 + live_frac
    score[0] = -1.0  # label 0 is the background
    score[trace] = -1.0
    best = int(np.argmax(score))
    if score[best] <= 0:
        raise FrameError(
            f"no ultrasound sector found in the {W}x{H} frame: the only live regions scroll like a "
            "Doppler or ECG trace; pass --roi x,y,w,h to set it"
        )
    total_area = float(areas[1:][~trace[1:]].sum())

    # Pieces of the same sector (split by dark water, a cyst, a shadow): textured, thick (not a
    # grey or colour bar) and not traces, joined by geometry (_merge_pieces). They need not be
    # live: the probe-face reverberation band of a convex probe stands still.
    thick = np.minimum(
        stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    ) >= _MIN_PIECE_SIDE * max(h, w)
    ok = (tex_frac >= 0.5 * tex_frac[best]) & (areas >= min_piece) & thick & ~trace
    if live_frac is not None:
        # ... but a large still region beside a live image is another display (the frozen half
        # of a dual view, a reference image, thumbnails), not a piece of the live sector
        ok &= (live_frac >= 0.5 * live_frac[best]) | (areas <= _STILL_PIECE_MAX * areas[best])
    members = _merge_pieces(best, stats, ok, _MERGE_REACH * max(h, w))
    comp = np.isin(labels, members)
    area = int(areas[members].sum())

    # Give back what the opening shaved off the sector (pointed fan corners): grow the chosen
    # component by the opening size, but only over signal. Thin UI lines touching it come back
    # by at most ko pixels; the full-resolution edge snapping below drops them again.
    kernel = np.ones((ko, ko), np.uint8)
    region = cv2.dilate(comp.astype(np.uint8), kernel) & closed
    pts = cv2.findNonZero(region)
    x, y, bw, bh = cv2.boundingRect(pts)
    if area < _MIN_AREA_FRAC * h * w or bw < 4 or bh < 4:
        raise FrameError(
            f"no ultrasound sector found in the {W}x{H} frame: the largest textured region is "
            f"{bw * sx:.0f}x{bh * sy:.0f} px ({area / (h * w):.1%} of the screen, need >= {_MIN_AREA_FRAC:.0%}); "
            "pass --roi x,y,w,h to set it"
        )
    # Shape from the convex hull, so that dark notches along a linear sector's edge do not count.
    pts = cv2.findNonZero(comp.astype(np.uint8))
    hull = cv2.convexHull(pts)
    hull_area = cv2.contourArea(hull) if len(pts) >= 3 else area
    _, _, cw, ch = cv2.boundingRect(pts)
    fill = hull_area / float(max(1, (cw - 1) * (ch - 1)))  # hull of pixel centres over their box
    shape = "curved" if fill < _CURVED_FILL else "linear"

    # Map back to full resolution: floor the start, ceil the end, clip to the frame.
    x0, y0 = max(0, int(np.floor(x * sx))), max(0, int(np.floor(y * sy)))
    x1, y1 = min(W, int(np.ceil((x + bw) * sx))), min(H, int(np.ceil((y + bh) * sy)))
    if full is not None and (sx > 1.0 or sy > 1.0):
        band = int(
            np.ceil((ko // 2 + 2) * max(sx, sy))
        )  # the coarse edge is within a few working px
        grown = cv2.dilate(region, np.ones((3, 3), np.uint8))
        region_full = cv2.resize(grown, (W, H), interpolation=cv2.INTER_NEAREST).astype(
            bool
        )  # (H, W)
        coarse = (x0, x1)
        x0, y0, x1, y1 = _refine_edges(full, region_full, (x0, y0, x1, y1), band, background)
    else:
        coarse = (x0, x1)

    if shape == "curved":
        x0, x1 = _mirror_fan(hull, (h, w), sx, W, (x0, x1), coarse)

    dominance = area / max(total_area, 1.0)  # 1.0 when nothing else on screen looks like signal
    conf = dominance * min(1.0, 2.0 * float(tex_frac[best]))
    if live_frac is not None:
        conf *= 0.5 + 0.5 * min(1.0, 2.0 * float(live_frac[best]))
    else:
        conf *= 0.8  # a single frame (or a still one) gives less evidence than a live sequence
    return Roi(x0, y0, x1 - x0, y1 - y0, shape, round(float(np.clip(conf, 0.0, 1.0)), 3))


def detect_roi(frames: Sequence[np.ndarray]) -> Roi:
    """Detect the image sector in one or more gray uint8 frames of one size.

    frames: sequence of (H, W) uint8; several frames add the temporal cue (the live image
    changes, the UI does not). Returns a Roi in full-resolution pixels. Raises FrameError on bad
    frames or when no sector can be found.
    """
    if isinstance(frames, np.ndarray) and frames.ndim == 2:
        frames = [frames]
    try:
        frames = list(frames)
    except TypeError as exc:
        raise FrameError(
            f"detect_roi expects a sequence of (H, W) uint8 frames; got {type(frames).__name__}"
        ) from exc
    if not frames:
        raise FrameError("detect_roi got no frames; expected at least one (H, W) uint8 frame")
    first = _check_frame(frames[0])
    for i, f in enumerate(frames[1:], start=1):
        _check_frame(f, f"frame {i}")
        if f.shape != first.shape:
            raise FrameError(
                f"detect_roi frames differ in size: frame 0 is {first.shape}, frame {i} is {f.shape}"
            )
    # Edges are snapped on the per-pixel max of up to 4 frames (covers dark flickering edges).
    full = np.maximum.reduce(frames[:: max(1, len(frames) // 4)][:4]) if len(frames) > 1 else first
    return _detect_small([_downscale(f) for f in frames], first.shape, full)


class RoiTracker:
    """Per-frame ROI for the pipeline: detect once, refine once, then return the same box.

    frame (H, W) uint8 --update()--> Roi
      override given      -> the override (checked against the frame size)
      first frame / resize -> detect on that frame (single-frame cues)
      3 frames seen       -> detect on them (first temporal cues: traces, live vs still)
      warmup_frames seen  -> re-detect on their downscaled copies (the temporal cues settle)
      every redetect_every frames (or redetect_every_s seconds)
                          -> collect warmup_frames frames again and re-detect (a depth or layout
                             change on the scanner); the box changes only if the new one differs
                             clearly (IoU < 0.9), so it never jitters
    If no sector is found yet (a black screen at start-up), update returns the whole frame with
    confidence 0.0, logs a warning, and retries on later frames.
    """

    _REPLACE_IOU = 0.9  # a re-detected box replaces the current one only below this overlap

    def __init__(
        self,
        override: tuple[int, int, int, int] | None = None,
        warmup_frames: int = 8,
        redetect_every_s: float | None = None,
        redetect_every: int | None = 150,
    ) -> None:
        if override is not None:
            try:
                ok = len(override) == 4 and all(isinstance(v, (int, np.integer)) for v in override)
            except TypeError:
                ok = False
            if not ok or override[0] < 0 or override[1] < 0 or override[2] <= 0 or override[3] <= 0:
                raise ConfigError(
                    f"ROI override {override!r}: expected four integers (x, y, w, h) with x, y >= 0 and w, h > 0"
                )
            override = tuple(int(v) for v in override)
        if not isinstance(warmup_frames, int) or warmup_frames < 1:
            raise ConfigError(f"warmup_frames={warmup_frames!r}: expected an integer >= 1")
        if redetect_every_s is not None and not (redetect_every_s > 0):
            raise ConfigError(
                f"redetect_every_s={redetect_every_s!r}: expected a positive number of seconds or None"
            )
        if redetect_every is not None and (
            not isinstance(redetect_every, int)
            or isinstance(redetect_every, bool)
            or redetect_every < 1
        ):
            raise ConfigError(
                f"redetect_every={redetect_every!r}: expected a positive number of frames or None"
            )
        self.override = override
        self.warmup_frames = warmup_frames
        self.redetect_every = redetect_every
        self._since = 0  # frames since the last detection
        self.redetect_every_s = redetect_every_s
        self._shape: tuple[int, int] | None = None
        self._roi: Roi | None = None
        self._buffer: list[np.ndarray] = []  # downscaled frames while collecting
        self._collecting = False
        self._last_detect = 0.0
        self._warned = False
        self._refined = False

    @property
    def roi(self) -> Roi | None:
        """The current box, or None before the first frame."""
        return self._roi

    def reset(self) -> None:
        """Forget the box; the next frame is detected afresh."""
        self._shape, self._roi, self._buffer, self._collecting = None, None, [], False

    def update(self, image: np.ndarray) -> Roi:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 2:
            got = f"{type(image).__name__} {getattr(image, 'dtype', '?')} shape {getattr(image, 'shape', '?')}"
            raise FrameError(
                f"RoiTracker.update expects a grayscale uint8 frame of shape (H, W); got {got}"
            )
        shape = image.shape
        if shape != self._shape:
            if self._shape is not None:
                log.info(
                    "frame size changed from %sx%s to %sx%s: re-detecting the ROI",
                    self._shape[1],
                    self._shape[0],
                    shape[1],
                    shape[0],
                )
            self.reset()
            self._shape = shape
            if self.override is not None:
                x, y, w, h = self.override
                if x + w > shape[1] or y + h > shape[0]:
                    self._shape = None  # check again on the next frame
                    raise FrameError(
                        f"ROI override x={x}, y={y}, w={w}, h={h} does not fit the {shape[1]}x{shape[0]} frame "
                        f"(needs x + w <= {shape[1]} and y + h <= {shape[0]})"
                    )
                self._roi = Roi(x, y, w, h, "linear", 1.0)
            else:
                self._first_detect(image)
            return self._roi

        if self.override is not None:
            return self._roi
        if self._roi.confidence == 0.0:  # nothing found yet: keep trying on each frame
            self._first_detect(image)
            return self._roi
        if self._collecting:
            self._buffer.append(_downscale(image))
            if len(self._buffer) >= self.warmup_frames:
                self._refine(image)
            elif not self._refined and len(self._buffer) == _EARLY_FRAMES:
                self._early(image)
        else:
            self._since += 1
            if (self.redetect_every is not None and self._since >= self.redetect_every) or (
                self.redetect_every_s is not None
                and time.monotonic() - self._last_detect >= self.redetect_every_s
            ):
                self._collecting, self._buffer = True, [_downscale(image)]
        return self._roi

    def _first_detect(self, image: np.ndarray) -> None:
        small = _downscale(image)
        try:
            self._roi = (
                _detect_small([small], image.shape, image)
                if min(image.shape) >= _MIN_SIDE
                else None
            )
        except FrameError as exc:
            self._roi = None
            if not self._warned:
                log.warning("%s; using the whole frame until a sector appears", exc)
                self._warned = True
        if self._roi is None:
            self._roi = Roi(0, 0, image.shape[1], image.shape[0], "linear", 0.0)
            return
        self._warned = False
        self._last_detect = time.monotonic()
        self._collecting, self._buffer = True, [small]
        self._refined = False
        if len(self._buffer) >= self.warmup_frames:
            self._refine(image)

    def _early(self, image: np.ndarray) -> None:
        """First temporal evidence, before the warm-up window is full: 3 frames already show a
        trace scrolling and a live image beside a still one. The buffer keeps filling."""
        try:
            new = _detect_small(self._buffer, self._shape, image)
        except FrameError:
            return  # the single-frame box stays until the warm-up refinement
        if new.as_tuple() != self._roi.as_tuple():
            log.debug(
                "ROI %s -> %s after %d frames", self._roi.as_tuple(), new.as_tuple(), _EARLY_FRAMES
            )
        self._roi = new

    def _refine(self, image: np.ndarray) -> None:
        buffer, self._buffer, self._collecting = self._buffer, [], False
        self._last_detect, self._since = time.monotonic(), 0
        try:
            new = _detect_small(buffer, self._shape, image)
        except FrameError as exc:
            log.warning("ROI re-detection failed (%s); keeping %s", exc, self._roi.as_tuple())
            return
        # The warm-up refinement is always taken (it has the temporal cue); a periodic re-detection
        # replaces the box only when it moved clearly, so that the crop does not jitter.
        if not self._refined or iou(new.as_tuple(), self._roi.as_tuple()) < self._REPLACE_IOU:
            if new.as_tuple() != self._roi.as_tuple():
                log.info(
                    "ROI %s -> %s (confidence %.2f)",
                    self._roi.as_tuple(),
                    new.as_tuple(),
                    new.confidence,
                )
            self._roi = new
        self._refined = True
