"""Preview frames for viewers: a downscaled JPEG of a scored frame, its overlays kept as data.

Data flow (streamcad.sinks.preview.PreviewSink drives it; nothing here runs on the infer thread)::

    publish thread:  due(t_capture_ns)? (a rate grid, `fps`) -> a copy of the frame (~0.1 ms for
                     1024x768, only for the frames due)
    publish thread:  offer(...) after the frame's score went out: ONE pending slot, a newer
                     offer replaces an older one that the encoder has not taken (counted in
                     `skipped`); never waits
    encoder thread:  shrink (INTER_AREA: ~5 ms for 1024x768 -> 480 px, so never on the publish
                     thread), JPEG (cv2.imencode, `quality`), saliency map -> uint8 grid -> fields
    publish thread:  take() (the sink's poll(), between scores) -> Publisher.write_preview:
                     previews go out after their score, and are the first thing skipped

The overlays are not burnt into the pixels: the ROI box, the saliency map (with the box it
covers in frame pixels) and the lesion box travel as fields of the `preview` message
(streamcad.messages.Preview), so a viewer toggles them. The image is grayscale, as the
pipeline scores it. Numpy + OpenCV + stdlib only.
"""

from __future__ import annotations

import logging
import threading

import cv2
import numpy as np

from streamcad.errors import StreamcadError
from streamcad.lesion import input_to_frame
from streamcad.ratelimit import LogLimiter

__all__ = ["PreviewEncoder", "MAX_PREVIEW_BYTES"]

log = logging.getLogger(__name__)

# a subscriber refuses frames over 1 MiB (MAXMSGSIZE, and drops the link); JSON base64 adds 1/3
MAX_PREVIEW_BYTES = 640 * 1024


class PreviewEncoder:
    """Rate-limited, lossy preview encoding on its own thread. See the module docstring.

    `fps`: previews per second at most; `max_side`: long side of the JPEG in pixels (never
    upscaled); `quality`: JPEG quality 1-100; `saliency_kind` and `input_size` come from the
    model (manifest and PreprocessSpec), to map its saliency grid back onto the frame."""

    def __init__(self, *, fps: float, max_side: int, quality: int, saliency_kind: str, input_size: int) -> None:
        if not (0 < fps <= 60 and 16 <= max_side <= 4096 and 1 <= quality <= 100 and input_size > 0):
            raise StreamcadError(f"preview: fps={fps}, max_side={max_side}, quality={quality}: expected "
                                 "0 < fps <= 60, 16 <= max_side <= 4096, 1 <= quality <= 100")
        if saliency_kind not in ("attention", "lesion_probability"):
            raise StreamcadError(f"preview: saliency_kind {saliency_kind!r}: expected 'attention' or 'lesion_probability'")
        self.interval_ns = int(1e9 / fps)
        self.max_side = int(max_side)
        self.quality = int(quality)
        self.saliency_kind = saliency_kind
        self.input_size = int(input_size)
        self.encoded = 0  # previews encoded
        self.skipped = 0  # due previews replaced before the encoder took them, or too large
        self._t_due = None  # capture time the next preview is due at (None: the first frame)
        self._cv = threading.Condition()
        self._pending: dict | None = None  # offer() -> encoder
        self._ready: dict | None = None  # encoder -> take()
        self._closed = False
        self._limiter = LogLimiter(10.0)
        self._thread = threading.Thread(target=self._loop, name="streamcad-preview", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ prepare thread
    def due(self, t_capture_ns: int) -> bool:
        """Is a preview due for a frame captured at t_capture_ns? (True at most `fps` times a second.)"""
        # a grid of due times 1/fps apart (not "1/fps since the last one": 30 fps frames would
        # then miss a 100 ms interval by a nanosecond and give 7.5 previews/s); a tenth of an
        # interval early still counts; a source that stalled restarts the grid
        if self._t_due is not None and t_capture_ns < self._t_due - self.interval_ns // 10:
            return False
        behind = self._t_due is None or t_capture_ns - self._t_due > self.interval_ns
        self._t_due = (t_capture_ns if behind else self._t_due) + self.interval_ns
        return True

    def shrink(self, image: np.ndarray) -> np.ndarray:
        """(H, W) uint8 frame -> a new array, long side <= max_side (INTER_AREA; never upscaled)."""
        h, w = image.shape[:2]
        scale = self.max_side / max(h, w)
        if scale >= 1.0:
            return image.copy()
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    # ------------------------------------------------------------------ publish thread
    def offer(self, *, frame_index: int, t_capture_ns: int, image: np.ndarray,
              roi: tuple[int, int, int, int] | None, saliency: np.ndarray | None, lesion) -> None:
        """Hand one frame (an (H, W) uint8 array the encoder may keep) to the encoder; replaces
        (and counts) one it has not started yet."""
        job = dict(frame_index=frame_index, t_capture_ns=t_capture_ns, image=image, roi=roi,
                   saliency=saliency, lesion=lesion)
        with self._cv:
            if self._pending is not None:
                self.skipped += 1
            self._pending = job
            self._cv.notify()

    def take(self) -> dict | None:
        """The newest encoded preview's fields (for Publisher.publish_preview), or None."""
        with self._cv:
            out, self._ready = self._ready, None
        if out is not None:
            out["skipped"] = self.skipped
        return out

    # ------------------------------------------------------------------ encoder thread
    def _loop(self) -> None:
        while True:
            with self._cv:
                while self._pending is None and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                job, self._pending = self._pending, None
            try:
                fields = self.encode(**job)
            except Exception:  # the preview must never take the pipeline down: say so, keep going
                log.exception("preview of frame %d could not be encoded", job["frame_index"])
                continue
            with self._cv:
                if fields is None:
                    self.skipped += 1
                    continue
                if self._ready is not None:
                    self.skipped += 1  # the publish thread was busy with scores: the newer one wins
                self._ready = fields
                self.encoded += 1

    def encode(self, *, frame_index, t_capture_ns, image, roi, saliency, lesion) -> dict | None:
        """One job -> Preview fields (without the publisher's own), or None when it is too large."""
        small = self.shrink(image)
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise StreamcadError(f"OpenCV could not JPEG-encode a {small.shape} preview")
        data = buf.tobytes()
        if len(data) > MAX_PREVIEW_BYTES:
            self._limiter.warning(log, "big", "preview of %d bytes exceeds %d: skipped; lower preview.max_side "
                                  "or preview.quality", len(data), MAX_PREVIEW_BYTES)
            return None
        fh, fw = image.shape[:2]
        return {
            "frame_index": int(frame_index),
            "t_capture_ns": int(t_capture_ns),
            "format": "jpeg",
            "image": data,
            "width": int(small.shape[1]),
            "height": int(small.shape[0]),
            "frame_width": int(fw),
            "frame_height": int(fh),
            "roi": None if roi is None else [int(v) for v in roi],
            "saliency": None if saliency is None or roi is None else self.saliency_map(saliency, roi),
            "lesion": _lesion_dict(lesion),
        }

    def saliency_map(self, sal: np.ndarray, roi: tuple[int, int, int, int]) -> dict:
        """(h, w) saliency -> SaliencyMap fields: uint8 cells and the frame box the grid covers."""
        sal = np.asarray(sal, np.float32)
        if sal.ndim != 2 or not np.isfinite(sal).all():
            raise StreamcadError(f"saliency map must be a finite (h, w) array; got shape {sal.shape}")
        if self.saliency_kind == "attention":  # relative: 255 = this frame's peak
            peak = float(sal.max())
            sal = sal / peak if peak > 0 else np.zeros_like(sal)
        q = np.clip(np.rint(sal * 255.0), 0, 255).astype(np.uint8)
        S = self.input_size
        x0, y0 = input_to_frame(0.0, 0.0, roi, S)  # the whole model input, letterbox padding included
        x1, y1 = input_to_frame(float(S), float(S), roi, S)
        return {"width": int(q.shape[1]), "height": int(q.shape[0]), "kind": self.saliency_kind,
                "box": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "data": q.tobytes()}

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=1.0)


def _lesion_dict(lesion) -> dict | None:
    """A LesionBox, a msgspec Lesion or a {box, confidence} dict -> a plain dict (None stays None)."""
    if lesion is None:
        return None
    if isinstance(lesion, dict):
        box, conf = lesion["box"], lesion["confidence"]
    else:
        box, conf = lesion.box, lesion.confidence
    return {"box": [int(v) for v in box], "confidence": float(conf)}
