"""The per-frame processor: one frame's way from pixels to a score, with no threads and no sockets.

    Frame --prepare()-->     Item: sector box (RoiTracker), quality flags (QualityChecker), the
                             letterboxed model input (streamcad.preprocess) [+ the 2S view of a zoom model]
          --infer()-->       Item: the backend's logits, saliency[, embedding] (copies); a model whose
                             manifest has `zoom` is run twice, full view + lesion zoom (streamcad.zoom)
          --postprocess()--> Item: out-of-domain gate (streamcad.gate_ood), class probabilities,
                             saliency peak and lesion box in frame pixels (streamcad.lesion)
          --smooth()-->      SmoothResult: smoothed p(malignant) and state (streamcad.smoothing)
    process(frame) = the four in order -> (Item, SmoothResult)

Stateful where its stages are (the ROI tracker's temporal evidence, the smoother's EMA and
state): one processor per stream, fed its frames in order. streamcad.pipeline runs the stages on
its threads (prepare, infer, publish); its naive baseline (run_sequential), re-scoring a
recording (streamcad.rescore) and tests call these same methods, so they all compute
the same answer for the same frames. Each stage stamps its end in ``item.t`` (monotonic ns),
which the pipeline turns into the message's ``latency_ms``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamcad.config import RunConfig
from streamcad.errors import StreamcadError
from streamcad.lesion import input_to_frame, lesion_box
from streamcad.preprocess import preprocess
from streamcad.quality import QualityChecker, QualityConfig, doppler_fraction, is_blank
from streamcad.roi import RoiTracker
from streamcad.smoothing import Smoother, SmoothResult
from streamcad.zoom import hi_view, two_view

__all__ = ["FrameProcessor", "Item"]

_BUFFERS = 6  # model inputs reused round-robin: the pipeline's queue capacity + one per stage in flight


@dataclass(slots=True)
class Item:
    """One frame on its way through the stages (also a 'no_signal' marker with no frame)."""

    index: int
    t_capture_ns: int
    label: str | None = None
    roi: tuple[int, int, int, int] | None = None
    flags: frozenset = frozenset()
    x: np.ndarray | None = None  # (1, S, S) float32 view into a reused buffer
    hi: np.ndarray | None = None  # (2S, 2S) uint8 sector letterbox: the zoom's source (zoom models only)
    logits: np.ndarray | None = None  # (3,) raw model output, set by infer(), turned into probs by postprocess()
    saliency: np.ndarray | None = None  # (h, w) saliency map (a copy: the backend may reuse its buffers)
    embedding: np.ndarray | None = None  # (D,) the model's 'embedding' output (a copy), when it has one
    ood_score: float | None = None  # the out-of-domain gate's score; None without a gate
    probs: tuple[float, float, float] | None = None
    saliency_peak: tuple[int, int] | None = None
    lesion: dict | None = None  # {'box': (x, y, w, h), 'confidence': p} in frame pixels (streamcad.lesion)
    t: dict = field(default_factory=dict)  # stage -> monotonic ns at the stage's end
    frame: object | None = None  # the delivered Frame, kept only while a sink wants frames (the recorder)


class FrameProcessor:
    """ROI -> quality -> preprocess -> infer -> postprocess -> smooth for one stream.

    `keep_frames`: items carry their Frame to the end (sinks that record pixels); `keep_saliency`:
    scored items keep their saliency map after postprocess (the preview sink draws it)."""

    def __init__(self, config: RunConfig, model, *, keep_frames: bool = False, keep_saliency: bool = False) -> None:
        self.model = model
        name = model.model_id
        if model.manifest is None and config.model.path:
            name = f"{Path(config.model.path).name} (no manifest)"
        # the 'suspicious' state on the model's validated operating point: a model without a
        # threshold and no config value stops here
        self.smoother = Smoother(config.smoothing, model.threshold, name)
        self.spec = model.spec
        manifest = getattr(model, "manifest", None)
        self.lesion_head = manifest is not None and manifest.saliency_kind == "lesion_probability"
        self.zoom = getattr(model, "zoom", None)  # streamcad.zoom.ZoomSpec: two looks per frame
        box = tuple(config.roi.box) if config.roi.box else None
        self.roi_tracker = RoiTracker(override=box, warmup_frames=config.roi.warmup_frames)
        try:
            qcfg = QualityConfig(**config.quality.thresholds)
        except TypeError as exc:
            raise StreamcadError(f"quality.thresholds: {exc}") from exc
        self.quality = QualityChecker(qcfg) if config.quality.enabled else None
        self.keep_frames = bool(keep_frames)
        self.keep_saliency = bool(keep_saliency)
        S = self.spec.size
        self._buffers = np.zeros((_BUFFERS, 1, S, S), np.float32)
        self._buf_i = 0

    def prepare(self, frame) -> Item:
        """ROI + quality + preprocess of one Frame (the pipeline's prepare thread)."""
        t0 = time.monotonic_ns()
        item = Item(index=frame.index, t_capture_ns=frame.t_capture_ns, label=frame.label)
        item.t["grab"] = t0
        if self.keep_frames:
            item.frame = frame
        image = frame.image
        roi = self.roi_tracker.update(image)
        item.roi = roi.as_tuple()
        x, y, w, h = item.roi
        if roi.confidence == 0.0:
            # no image sector anywhere on the screen (tracker returned the whole frame): a black
            # or uniform screen (start-up, probe unplugged) is 'blank', anything else is not ultrasound
            cfg = self.quality.config if self.quality is not None else None
            item.flags = frozenset({"blank" if is_blank(image, cfg) else "not_ultrasound"})
        elif self.quality is not None:
            # stale=False: this frame did arrive; staleness is the pipeline's (a no_signal item)
            colour = doppler_fraction(getattr(frame, "colour", None), image.shape, item.roi)
            item.flags = self.quality.check(image[y : y + h, x : x + w], frame.chroma, False, colour)
        if not item.flags:
            buf = self._buffers[self._buf_i]
            self._buf_i = (self._buf_i + 1) % len(self._buffers)
            item.x = preprocess(image, self.spec, item.roi, out=buf)
            if self.zoom is not None:
                item.hi = hi_view(image, item.roi, self.spec.size, self.zoom)
        item.t["preprocess"] = time.monotonic_ns()
        return item

    def infer(self, item: Item) -> Item:
        """Model outputs for one prepared item (the infer thread). Flagged items pass through.

        Only the model runs here: the infer thread is the pipeline's slowest stage, so the
        softmax and the saliency peak (Python-level work that holds the GIL) are left to
        postprocess() on the publish thread (measured with benchmarks.profile)."""
        item.t["queue"] = time.monotonic_ns()
        if item.x is not None:
            if self.zoom is None:
                out = self.model.backend.infer(item.x[None])
            else:
                out = two_view(self.model.backend, item.x[None], item.hi[None], self.spec, self.zoom)
                item.hi = None
            item.logits = np.array(out["logits"][0], np.float64)
            item.saliency = np.array(out["saliency"][0, 0])
            if "embedding" in out:
                item.embedding = np.array(out["embedding"][0])
            item.x = None  # the buffer may be reused from here on
        item.t["infer"] = time.monotonic_ns()
        return item

    def postprocess(self, item: Item) -> None:
        """Out-of-domain gate on the embedding; logits -> class probabilities; saliency map -> its
        peak (and, from a lesion head, the lesion box) in frame pixels. A frame the gate flags
        keeps no probabilities (no malignancy update)."""
        gate = getattr(self.model, "gate", None)
        if gate is not None and item.logits is not None:
            if item.embedding is None:
                raise StreamcadError(
                    f"model {self.model.model_id}: its manifest has an out-of-domain gate but the backend "
                    "returned no 'embedding'; expected the backend to return every output of the graph"
                )
            item.ood_score = float(gate.score(item.embedding)[0])
            if not item.ood_score <= gate.threshold:  # NaN counts as out of domain
                item.flags = item.flags | {"out_of_domain"}
                item.logits = item.saliency = item.embedding = None
        item.embedding = None
        if item.logits is not None:
            e = np.exp(item.logits - item.logits.max())
            p = e / e.sum()
            item.probs = (float(p[0]), float(p[1]), float(p[2]))
            item.saliency_peak = self.saliency_peak(item.saliency, item.roi)
            if self.lesion_head:
                box = lesion_box(item.saliency, item.roi, self.spec.size)
                item.lesion = None if box is None else {"box": box.box, "confidence": box.confidence}
            item.logits = None
            if not self.keep_saliency:
                item.saliency = None

    def smooth(self, item: Item) -> SmoothResult:
        """The smoothed p(malignant) and the state after this item (at its inference time)."""
        return self.smoother.update(item.probs, item.t["infer"], item.flags)

    def process(self, frame) -> tuple[Item, SmoothResult]:
        """All stages, in order, on the calling thread."""
        item = self.infer(self.prepare(frame))
        self.postprocess(item)
        return item, self.smooth(item)

    def saliency_peak(self, sal: np.ndarray, roi) -> tuple[int, int]:
        """argmax of the (h, w) saliency map -> (x, y) in frame pixels, clipped to the ROI (the
        letterbox undone by streamcad.lesion.input_to_frame, the one inverse of the letterbox)."""
        h, w = sal.shape
        iy, ix = np.unravel_index(int(np.argmax(sal)), sal.shape)
        S = self.spec.size
        fx, fy = input_to_frame((ix + 0.5) * S / w, (iy + 0.5) * S / h, roi, S)  # cell centre, model-input px
        rx, ry, rw, rh = roi
        return min(max(int(fx), rx), rx + rw - 1), min(max(int(fy), ry), ry + rh - 1)
