"""``sweep:DIR``: a simulated probe sweep over still images, the breast-video stand-in.

    images (BUSI class folders | BUS-BRA Images/ + bus_data.csv | labels.csv | a plain folder)
      -> seeded order; each image dwells (dwell_s) then hands over (transition_s: cross-fade or
         probe lift) to the next
      -> per frame: smooth pan / zoom / small rotation, multiplicative speckle that decorrelates
         between frames, slow gain drift
      -> drawn into the image sector (linear rectangle or curved fan) of a synthetic scanner
         screen (dark background, UI text, depth ruler, logo, running clock)
      -> Frame(image (H, W) uint8, index=i, label=class mostly shown, roi=true sector box)

``SweepRenderer.render(i)`` is pure and thread-free: the same seed and i give the same pixels.
``SweepSource`` paces it in a reader thread like any other source (pace='native' at fps, or
'none').

A still that does not decode (corrupt, truncated, not an image) is dropped from the rotation
when the sweep first reaches it (``render`` raises ``CorruptImage``; ``drop()``): the sweep goes
on with the next image, the still is logged once and counted as one rejected frame. A folder
with no decodable image is an error (SourceFailed), not an endless retry. (Purity then holds
for the images that remain.)
"""

from __future__ import annotations

import csv
import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from streamcad.errors import ConfigError, SourceError
from streamcad.sources.base import Frame, Pacer, SourceFailed, SourceInfo, ThreadedSource

__all__ = ["SAMPLE_DIR", "CorruptImage", "SweepRenderer", "SweepSource", "load_image_list"]

log = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "sample"

_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
_ImageRef = Path | np.ndarray


def load_image_list(src: str | Path | Sequence) -> list[tuple[_ImageRef, str | None]]:
    """(image path or array, label) pairs from a folder or a sequence.

    Folder layouts, tried in this order: ``labels.csv`` (columns file,label; files beside it or
    in images/), BUS-BRA (``bus_data.csv`` with ID and Pathology + ``Images/``), class folders
    (``benign/``, ``malignant/``, ``normal/``: label = folder name; ``*_mask*`` files skipped),
    a plain folder of images (label None). A sequence holds arrays, paths, or (item, label)."""
    if not isinstance(src, (str, Path)):
        items = []
        for it in src:
            item, label = it if isinstance(it, tuple) else (it, None)
            items.append((item if isinstance(item, np.ndarray) else Path(item), label))
        if not items:
            raise SourceError("sweep: the image list is empty")
        return items
    root = Path(src).expanduser()
    if not root.is_dir():
        raise SourceError(f"sweep:{root}: no such image folder")
    if (root / "labels.csv").is_file():
        items = []
        with open(root / "labels.csv", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"file", "label"} <= set(reader.fieldnames):
                raise SourceError(f"{root / 'labels.csv'}: expected columns file,label; got {reader.fieldnames}")
            for row in reader:
                p = root / row["file"]
                if not p.is_file():
                    p = root / "images" / row["file"]
                items.append((p, row["label"] or None))
    elif (root / "bus_data.csv").is_file() and (root / "Images").is_dir():
        with open(root / "bus_data.csv", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"ID", "Pathology"} <= set(reader.fieldnames):
                raise SourceError(f"{root / 'bus_data.csv'}: expected columns ID,Pathology; got {reader.fieldnames}")
            items = [(root / "Images" / f"{row['ID']}.png", row["Pathology"]) for row in reader]
    else:
        subdirs = sorted(d for d in root.iterdir() if d.is_dir())
        items = []
        for d in subdirs:
            items += [(p, d.name) for p in _images_in(d)]
        if not items:
            items = [(p, None) for p in _images_in(root)]
    missing = [str(p) for p, _ in items if not p.is_file()]
    if missing:
        raise SourceError(f"sweep:{root}: {len(missing)} listed image(s) missing, e.g. {missing[0]}")
    if not items:
        raise SourceError(f"sweep:{root}: no images found (expected labels.csv, BUS-BRA, class folders or image files)")
    return items


class CorruptImage(SourceError):
    """An image of the sweep does not decode. ``k`` is its index in ``items``."""

    def __init__(self, k: int, ref: object) -> None:
        super().__init__(f"sweep: cannot decode image {ref}: corrupt or not an image")
        self.k = k
        self.ref = ref


def _images_in(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir()
                  if p.suffix.lower() in _IMAGE_EXT and "_mask" not in p.stem and p.is_file())


class SweepRenderer:
    """Deterministic sweep frames. ``render(i)`` -> Frame; ``len(r)`` == ``r.period`` frames per
    pass over all images (the sweep repeats after that with the same pixels)."""

    def __init__(
        self,
        dir_or_images: str | Path | Sequence,
        *,
        seed: int = 0,
        screen: tuple[int, int] = (1024, 768),  # (width, height) of the scanner screen
        sector: str = "linear",
        fps: float = 30.0,
        dwell_s: float = 4.0,  # time on one image: long enough for the smoother to settle
        transition_s: float = 1.0,  # hand-over to the next image
        speckle: float = 0.3,  # std of the multiplicative speckle
        cache_images: int = 8,
    ):
        import cv2

        if sector not in ("linear", "curved"):
            raise ConfigError(f"sector: expected 'linear' or 'curved', got {sector!r}")
        if fps <= 0 or dwell_s <= 0 or transition_s < 0:
            raise ConfigError(f"sweep: expected fps > 0, dwell_s > 0, transition_s >= 0; got {fps}, {dwell_s}, {transition_s}")
        w, h = int(screen[0]), int(screen[1])
        if w < 320 or h < 240:
            raise ConfigError(f"screen: expected at least (320, 240), got {screen}")
        self.items = load_image_list(dir_or_images)
        self.seed = int(seed)
        self.screen = (w, h)
        self.sector = sector
        self.fps = float(fps)
        self.dwell_s = float(dwell_s)
        self.transition_s = float(transition_s)
        self.speckle = float(speckle)
        self.order = np.random.default_rng(self.seed).permutation(len(self.items))
        self.corrupt: list[object] = []  # images dropped from the rotation (drop())
        self.segment_frames = max(1, round((self.dwell_s + self.transition_s) * self.fps))
        self._dwell_frames = min(self.segment_frames, round(self.dwell_s * self.fps))
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = max(2, cache_images)
        self._build_geometry()
        self._template = self._draw_screen()
        self._cv2 = cv2

    # ---- geometry and static screen ---------------------------------------------------------
    def _build_geometry(self) -> None:
        w, h = self.screen
        if self.sector == "linear":
            rw, rh = round(0.5 * w), round(0.76 * h)
            x0, y0 = (w - rw) // 2, round(0.13 * h)
            self.roi = (x0, y0, rw, rh)
            self._canvas_size = (rw, rh)
            self._mask = None
            self._depth_px = rh
            return
        alpha = 0.6  # half opening angle (rad), about 34 degrees
        # fan of radii r0..r1 = k*(0.3..1.3); bbox height 1.3k - 0.3k*cos(alpha), width 2*1.3k*sin(alpha)
        k = min(0.76 * h / (1.3 - 0.3 * math.cos(alpha)), 0.62 * w / (2.6 * math.sin(alpha)))
        r0, r1 = 0.3 * k, 1.3 * k
        top = round(0.13 * h)
        apex_y = top - r0 * math.cos(alpha)
        cx = w / 2
        x0 = math.floor(cx - r1 * math.sin(alpha))
        x1 = math.ceil(cx + r1 * math.sin(alpha))
        y0, y1 = top, math.ceil(apex_y + r1)
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)  # (bh, bw) screen coords
        dx, dy = xs - cx, ys - apex_y
        r = np.hypot(dx, dy)
        th = np.arctan2(dx, dy)
        mask = (r >= r0) & (r <= r1) & (np.abs(th) <= alpha)
        bh, bw = mask.shape
        rw, rh = bw, bh
        self._map_x = ((th + alpha) / (2 * alpha) * (rw - 1)).astype(np.float32)
        self._map_y = ((r - r0) / (r1 - r0) * (rh - 1)).astype(np.float32)
        yy, xx = np.nonzero(mask)
        # crop the box to the mask exactly, so roi is the true sector bounding box
        ya, yb, xa, xb = yy.min(), yy.max() + 1, xx.min(), xx.max() + 1
        self._mask = mask[ya:yb, xa:xb]
        self._map_x = self._map_x[ya:yb, xa:xb]
        self._map_y = self._map_y[ya:yb, xa:xb]
        self.roi = (int(x0 + xa), int(y0 + ya), int(xb - xa), int(yb - ya))
        self._canvas_size = (rw, rh)
        self._depth_px = r1 - r0

    def _draw_screen(self) -> np.ndarray:
        import cv2

        w, h = self.screen
        img = np.full((h, w), 10, np.uint8)
        font = cv2.FONT_HERSHEY_SIMPLEX
        s = h / 768
        # logo: a ring with a probe-like wedge, and the vendor name
        c = (round(40 * s), round(40 * s))
        cv2.circle(img, c, round(18 * s), 200, 2, cv2.LINE_AA)
        pts = np.array([[c[0] - 8 * s, c[1] - 10 * s], [c[0] + 8 * s, c[1] - 10 * s], [c[0], c[1] + 12 * s]], np.int32)
        cv2.fillConvexPoly(img, pts, 170, cv2.LINE_AA)
        put = lambda text, x, y, scale=0.55, val=190: cv2.putText(  # noqa: E731
            img, text, (round(x * w), round(y * h)), font, scale * s, val, 1, cv2.LINE_AA)
        put("SIMSCAN", 0.075, 0.045, 0.6, 210)
        put(f"PATIENT ANON-{self.seed:04d}", 0.22, 0.045)
        put("2024-05-17", 0.55, 0.045)
        put("12L  BREAST", 0.02, 0.16)
        put("D 4.0 cm", 0.02, 0.20)
        put("G 52  DR 66", 0.02, 0.24)
        put(f"FR {self.fps:.0f} Hz", 0.02, 0.28)
        put("MI 1.1  TIs 0.3", 0.02, 0.32)
        # depth ruler to the right of the sector: 4 cm, ticks every 0.5 cm, labels every 1 cm
        x, y, rw, rh = self.roi
        xr = x + rw + round(14 * s)
        top = y + (0 if self._mask is None else 0)
        cv2.line(img, (xr, top), (xr, top + round(self._depth_px)), 120, 1)
        for k in range(9):
            yt = top + round(k * self._depth_px / 8)
            ln = round((10 if k % 2 == 0 else 5) * s)
            cv2.line(img, (xr, yt), (xr + ln, yt), 160, 1)
            if k % 2 == 0:
                cv2.putText(img, str(k // 2), (xr + ln + 3, yt + 5), font, 0.4 * s, 160, 1, cv2.LINE_AA)
        # focus marker
        yf = top + round(0.45 * self._depth_px)
        cv2.fillConvexPoly(img, np.array([[xr - 2, yf], [xr - 10, yf - 5], [xr - 10, yf + 5]], np.int32), 200)
        return img

    # ---- timeline ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.period

    @property
    def period(self) -> int:
        """Frames in one pass over all images."""
        return self.segment_frames * len(self.order)

    def segment(self, i: int) -> tuple[int, int, float]:
        """(current image, next image, transition progress in [0, 1)) at frame i; progress 0
        during the dwell. Images are indices into ``items``."""
        s, local = divmod(i, self.segment_frames)
        n = len(self.order)
        cur = int(self.order[s % n])
        nxt = int(self.order[(s + 1) % n])
        if local < self._dwell_frames:
            return cur, nxt, 0.0
        return cur, nxt, (local - self._dwell_frames) / max(1, self.segment_frames - self._dwell_frames)

    def label(self, i: int) -> str | None:
        """Ground truth at frame i: the class of the image mostly shown."""
        cur, nxt, a = self.segment(i)
        return self.items[nxt if a >= 0.5 else cur][1]

    # ---- pixels -----------------------------------------------------------------------------
    def _image(self, k: int) -> np.ndarray:
        img = self._cache.get(k)
        if img is not None:
            self._cache.move_to_end(k)
            return img
        ref = self.items[k][0]
        if isinstance(ref, np.ndarray):
            img = ref if ref.ndim == 2 else self._cv2.cvtColor(ref, self._cv2.COLOR_BGR2GRAY)
        else:
            img = self._cv2.imread(str(ref), self._cv2.IMREAD_GRAYSCALE)
            if img is None:
                raise CorruptImage(k, ref)
        self._cache[k] = img
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return img

    def drop(self, k: int) -> int:
        """Take image k out of the rotation (it does not decode). Returns the images left; 0
        means none: the caller must give up."""
        if k in self.order:
            self.order = self.order[self.order != k]
            self.corrupt.append(self.items[k][0])
        return len(self.order)

    def _moving(self, k: int, seg: int, t: float) -> np.ndarray:
        """Image k as seen at time t with the probe motion of segment seg: float32 (rh, rw)."""
        cv2 = self._cv2
        img = self._image(k)
        rw, rh = self._canvas_size
        ph = np.random.default_rng([self.seed, seg, 1]).uniform(0, 2 * math.pi, 4)
        zoom = 1.12 + 0.08 * math.sin(2 * math.pi * t / 5.3 + ph[0])
        angle = 2.5 * math.sin(2 * math.pi * t / 6.7 + ph[1])  # degrees
        px = 0.4 * (zoom - 1) * rw * math.sin(2 * math.pi * t / 4.1 + ph[2])
        py = 0.4 * (zoom - 1) * rh * math.sin(2 * math.pi * t / 4.7 + ph[3])
        ih, iw = img.shape
        sc = max(rw / iw, rh / ih) * zoom  # cover the sector
        m = cv2.getRotationMatrix2D((iw / 2, ih / 2), angle, sc)
        m[:, 2] += (rw / 2 + px - iw / 2, rh / 2 + py - ih / 2)
        out = cv2.warpAffine(img, m, (rw, rh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        return out.astype(np.float32)

    def render(self, i: int) -> Frame:
        """Frame i of the sweep (any i >= 0; pure: same seed and i -> same pixels)."""
        if i < 0:
            raise ValueError(f"frame index must be >= 0, got {i}")
        cv2 = self._cv2
        t = i / self.fps
        s = i // self.segment_frames
        cur, nxt, a = self.segment(i)
        if a == 0.0:
            canvas = self._moving(cur, s, t)
        elif (s + self.seed) % 2 == 0:  # cross-fade
            canvas = (1 - a) * self._moving(cur, s, t) + a * self._moving(nxt, s + 1, t)
        else:  # probe lift: the image darkens to nothing, then the next one comes up
            canvas = (self._moving(cur, s, t) * (1 - 2 * a) if a < 0.5
                      else self._moving(nxt, s + 1, t) * (2 * a - 1))
        rw, rh = self._canvas_size
        rng = np.random.default_rng([self.seed, i, 2])
        # speckle: correlated over ~2 px (generated at half resolution), new every frame
        noise = rng.standard_normal(((rh + 1) // 2, (rw + 1) // 2), dtype=np.float32)
        noise = cv2.resize(noise, (rw, rh), interpolation=cv2.INTER_LINEAR)
        gain = 1.0 + 0.12 * math.sin(2 * math.pi * t / 9.0 + self.seed)
        canvas *= np.maximum(0.0, 1.0 + self.speckle * noise) * gain
        sector = np.clip(canvas, 0, 255).astype(np.uint8)
        screen = self._template.copy()
        x, y, w, h = self.roi
        if self._mask is None:
            screen[y:y + h, x:x + w] = sector
        else:
            fan = cv2.remap(sector, self._map_x, self._map_y, cv2.INTER_LINEAR)
            region = screen[y:y + h, x:x + w]
            region[self._mask] = fan[self._mask]
        sec = int(t)
        cv2.putText(screen, f"{sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}",
                    (round(0.86 * self.screen[0]), round(0.045 * self.screen[1])),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.55 * self.screen[1] / 768, 190, 1, cv2.LINE_AA)
        return Frame(screen, 0, i, 0.0, self.items[nxt if a >= 0.5 else cur][1], self.roi)


class SweepSource(ThreadedSource):
    """``sweep:DIR`` (``sweep:`` or ``sweep:sample`` = the bundled BUS-BRA sample). Options:
    the SweepRenderer ones, ``pace`` ('native' = fps, 'none' = as fast as it renders), ``loop``
    (default True; False ends after one pass), ``start_index``."""

    backend_name = "sweep"

    def __init__(self, spec: str | Path = "", *, seed: int = 0, screen: tuple[int, int] = (1024, 768),
                 sector: str = "linear", fps: float = 30.0, dwell_s: float = 4.0,
                 transition_s: float = 1.0, speckle: float = 0.3, pace: str = "native",
                 loop: bool = True, start_index: int = 0, **kwargs):
        if pace not in ("native", "none"):
            raise ConfigError(f"pace: expected 'native' or 'none', got {pace!r}")
        folder = SAMPLE_DIR if str(spec) in ("", "sample") else Path(spec)
        self.renderer = SweepRenderer(folder, seed=seed, screen=screen, sector=sector, fps=fps,
                                      dwell_s=dwell_s, transition_s=transition_s, speckle=speckle)
        super().__init__(f"sweep:{folder}", **kwargs)
        self.pace = pace
        self.lossless = pace == "none"  # rendered as fast as consumed: every frame, none skipped
        self.loop = bool(loop)
        self._i = int(start_index)
        self._pacer = Pacer(fps if pace == "native" else 0.0, self._stop)

    def _open(self) -> SourceInfo:
        r = self.renderer
        return SourceInfo(
            uri=self.uri, width=r.screen[0], height=r.screen[1], fps=r.fps, fourcc="GREY",
            backend="sweep",
            extra={"images": len(r.items), "period": r.period, "sector": r.sector, "seed": r.seed,
                   "roi": r.roi, "pace": self.pace, "loop": self.loop},
        )

    def _grab(self) -> Frame | None:
        if not self._pacer.wait():
            return None
        while True:
            if not self.loop and self._i >= self.renderer.period:
                return None
            try:
                frame = self.renderer.render(self._i)
            except CorruptImage as exc:
                self._skip(exc)
                continue
            self._i += 1
            return frame

    def _skip(self, exc: CorruptImage) -> None:
        """A still that does not decode: out of the rotation, counted as one rejected frame."""
        left = self.renderer.drop(exc.k)
        with self._lock:  # grabbed and rejected together: the SourceStats invariant holds
            self._counts["frames_grabbed"] += 1
            self._counts["frames_rejected"] += 1
        log.warning("%s; skipped (%d image(s) skipped so far, %d left)", exc, len(self.renderer.corrupt), left)
        if left == 0:
            raise SourceFailed(
                f"{self.uri}: none of the {len(self.renderer.items)} images decodes "
                f"(e.g. {self.renderer.corrupt[0]}): expected PNG/JPEG/BMP/TIFF stills"
            ) from exc

    def _at_end(self) -> bool:
        return not self.loop and self._i >= self.renderer.period

    def _release(self) -> None:
        pass
