"""PreviewSink: the `preview` topic (streamcad.preview), sent through the ZeroMQ publisher.

Data flow (every call on the pipeline's publish thread, as the Sink contract says)::

    write_frame(frame)           due (<= fps)? keep a copy of the frame (downscaled by the encoder)
    write_saliency(index, map)   the model's saliency map of that frame (None: not scored)
    write_score(score)           -> PreviewEncoder.offer(image, roi, saliency, lesion): never waits
    poll()                       -> an encoded preview ready? build the Preview message (its own
                                    seq) -> Publisher.write_preview (NOBLOCK)

The JPEG encoding runs on the encoder's own thread, not on the infer or the publish thread.
Previews are the first thing dropped: a due frame whose predecessor the encoder has not taken
yet replaces it (counted in the message's ``skipped``), and none of this ever counts as a
dropped score (``dropped`` stays 0; the ZeroMQ publisher counts refused previews apart, in
``preview_dropped``).
"""

from __future__ import annotations

import time
from typing import Annotated

import msgspec

from streamcad.errors import MessageError, StreamcadError
from streamcad.messages import SCHEMA_VERSION, Preview, Score, Status
from streamcad.sinks.base import Sink, SinkOptions, register_sink

__all__ = ["PreviewSink", "PreviewConfig"]


class PreviewConfig(SinkOptions):
    # The 'preview' topic (streamcad.preview): a downscaled JPEG of scored frames with the ROI,
    # saliency and lesion box as data, for `streamcad view` and other UIs. Off by default: a
    # pipeline nobody watches spends no CPU on JPEGs. CLI: run --preview.
    enabled: bool = False
    fps: Annotated[float, msgspec.Meta(gt=0, le=30.0)] = 10.0  # enough to follow the probe; <= 15 keeps the encoder's CPU small
    max_side: Annotated[int, msgspec.Meta(ge=64, le=1280)] = 480  # px, the JPEG's long side (~20-40 KB a frame)
    quality: Annotated[int, msgspec.Meta(ge=10, le=95)] = 70  # JPEG quality: enough to check the crop box


class PreviewSink(Sink):
    """Previews of one stream through `publisher` (a streamcad.transport.Publisher)."""

    name = "preview"
    wants_frames = True
    wants_saliency = True  # write_saliency(frame_index, map) before the frame's score

    def __init__(self, publisher, *, fps: float = 10.0, max_side: int = 480, quality: int = 70,
                 saliency_kind: str = "attention", input_size: int = 160) -> None:
        from streamcad.preview import PreviewEncoder  # cv2: imported when a preview sink is built

        self.publisher = publisher
        self.encoder = PreviewEncoder(fps=fps, max_side=max_side, quality=quality,
                                      saliency_kind=saliency_kind, input_size=input_size)
        self.written = 0
        self.dropped = 0  # never: a skipped preview is not a lost message (see the module docstring)
        self._seq = 0
        self._frame = None  # (index, t_capture_ns, image copy) of the frame due a preview
        self._saliency = None  # (index, map)
        self._closed = False
        set_rate = getattr(publisher, "set_preview_rate", None)
        if set_rate is not None:
            set_rate(fps)  # subscriber queues sized for the previews too: scores keep their lag allowance

    @property
    def skipped(self) -> int:
        return self.encoder.skipped

    def write_frame(self, frame) -> bool:
        if not self.encoder.due(frame.t_capture_ns):
            self._frame = None
            return False
        self._frame = (frame.index, frame.t_capture_ns, frame.image.copy())  # the frame is shared: copy
        return True

    def write_saliency(self, frame_index: int, saliency) -> None:
        self._saliency = (frame_index, saliency) if saliency is not None else None

    def write_score(self, msg: Score) -> bool:
        held, self._frame = self._frame, None
        sal, self._saliency = self._saliency, None
        if held is None or held[0] != msg.frame_index:
            return True
        index, t_cap, image = held
        saliency = sal[1] if sal is not None and sal[0] == index and msg.probs is not None else None
        self.encoder.offer(frame_index=index, t_capture_ns=t_cap, image=image, roi=msg.roi,
                           saliency=saliency, lesion=msg.lesion)
        return True

    def write_status(self, msg: Status) -> bool:
        return True

    def poll(self) -> int:
        fields = self.encoder.take()
        if fields is not None:
            self.send(fields)
        return 0

    def send(self, fields: dict) -> bool:
        """Encoded fields -> the next Preview (this sink's seq, the stream's publisher id) -> wire."""
        full = dict(fields, schema=SCHEMA_VERSION, stream=self.publisher.stream,
                    publisher=self.publisher.publisher_id, seq=self._seq, t_publish_ns=time.monotonic_ns(),
                    t_utc_ns=time.time_ns())
        try:
            msg = msgspec.convert(full, Preview)
        except msgspec.ValidationError as exc:
            raise MessageError(f"invalid preview fields: {exc}") from exc
        self._seq += 1
        ok = self.publisher.write_preview(msg)
        self.written += ok
        return ok

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.encoder.close()


@register_sink("preview", PreviewConfig, section="preview")
def build(options: PreviewConfig, context: dict) -> Sink | None:
    """A PreviewSink of `options` when enabled; context: 'zmq' (the publisher it sends through,
    built before it) and 'model' (its manifest's saliency kind and input size)."""
    if not options.enabled:
        return None
    publisher = context.get("zmq")
    if publisher is None:
        raise StreamcadError("preview.enabled: previews go out through the ZeroMQ publisher, and this run has none")
    model = context.get("model")
    manifest = getattr(model, "manifest", None)
    return PreviewSink(publisher, fps=options.fps, max_side=options.max_side, quality=options.quality,
                       saliency_kind=getattr(manifest, "saliency_kind", None) or "attention",
                       input_size=model.spec.size if model is not None else 160)
