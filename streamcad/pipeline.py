"""The streaming pipeline: one process per probe; the threads around the per-frame processor.

    source reader thread (newest frame only; overwrites counted)
        -> prepare thread:  ROI crop, quality flags, preprocess into a reused buffer
                            (FrameProcessor.prepare, streamcad.processor)
        -> infer thread:    backend.infer (ONNX Runtime / torch / TensorRT) (FrameProcessor.infer)
        -> publish thread:  out-of-domain gate on the model's embedding (streamcad.gate_ood:
                            'out_of_domain' flag, probs dropped), smoothing, then the
                            ScoreStream builds the message (streamcad.messages: seq, stamps,
                            validation) and every sink gets it (streamcad.sinks: the ZeroMQ
                            Publisher, the Recorder, ...): a score per frame, a status >= 1 Hz

Who owns what. The source owns capture, reconnects and its counters; the FrameProcessor
(streamcad.processor) the per-frame work, with no threads: RoiTracker the sector box,
QualityChecker the flags, the Backend the model's outputs, the gate / softmax / saliency peak /
lesion box, the Smoother the state and the operating point; the ScoreStream every message and the one status heartbeat (this class decides
when a status is due and sends it to every sink, so no sink keeps a timer of its own); a sink
only delivers what it is given and counts its drops. This class owns the threads, the queues
between them, the per-stage timestamps and the run's counters. Adding a source, a backend or a
sink needs no change here: see streamcad/sources/__init__.py, streamcad/backends/base.py and
streamcad/sinks/base.py.

Stages hand over through bounded queues, so a slow stage pushes back to the source, where the
newest frame wins and the lost ones are counted (never queued: latency stays bounded).
Smoothing runs on the publish thread: it costs microseconds, and a thread hop would cost more;
it is still timed as its own stage. Every item carries monotonic timestamps per stage, which
become the message's `latency_ms`.

`Pipeline.run_sequential` is the naive baseline (read -> prepare -> infer -> publish in one
thread), built from the very same processor, so benchmarks compare like with like and a test
checks both give the same scores for the same frames (tests/test_pipeline.py; the processor on
its own gives them too, tests/test_processor.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from streamcad.config import RunConfig
from streamcad.errors import SourceError, StreamcadError
from streamcad.manifest import CLASS_NAMES
from streamcad.messages import STAGES, ScoreStream
from streamcad.processor import FrameProcessor, Item

log = logging.getLogger(__name__)

__all__ = ["Pipeline", "PipelineReport", "Item", "STAGES", "DEFAULT_MODEL"]

# the shipped model: streamcad/engines/models in a wheel, engines/models beside streamcad/ in a checkout
_PACKAGE = Path(__file__).resolve().parent
DEFAULT_MODEL = (_PACKAGE / "engines" if (_PACKAGE / "engines").is_dir() else _PACKAGE.parent / "engines") / "models" / "default.onnx"
_POLL_S = 0.05  # every blocking wait wakes this often to check for shutdown (< 1 s contract)
# A status is due this much before heartbeat_s: the publish loop may wait one poll before it
# looks, and the contract is at least one status per heartbeat_s, not one every heartbeat_s + poll.
_STATUS_LEAD_S = _POLL_S + 0.02


@dataclass
class PipelineReport:
    frames_in: int = 0
    frames_out: int = 0
    flagged: int = 0
    overwritten: int = 0
    rejected: int = 0
    dropped_publish: int = 0
    reconnects: int = 0
    wall_s: float = 0.0
    latency_ms: dict = field(default_factory=dict)  # stage -> {p50, p99, ...}
    errors: list = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames_out / self.wall_s if self.wall_s > 0 else 0.0


class _Stats:
    """Ring buffers of per-stage latencies (ms) and the recent scores, for the dashboard."""

    def __init__(self, n: int = 2048) -> None:
        self.lat = {s: deque(maxlen=n) for s in STAGES}
        self.malignancy = deque(maxlen=120)
        self.last_probs: tuple | None = None
        self.last_state = "no_lesion"
        self.last_flags: frozenset = frozenset()
        self.t_out = deque(maxlen=n)  # publish times (ns) for fps_out

    def percentiles(self, qs=(50, 90, 99)) -> dict:
        out = {}
        for s, d in self.lat.items():
            if d:
                a = np.fromiter(d, float)
                out[s] = {f"p{q}": float(np.percentile(a, q)) for q in qs}
        return out

    def fps_out(self) -> float:
        if len(self.t_out) < 2:
            return 0.0
        return (len(self.t_out) - 1) / ((self.t_out[-1] - self.t_out[0]) / 1e9)


class Pipeline:
    """Build from a RunConfig; components may be injected (tests, benchmarks)."""

    def __init__(self, config: RunConfig, *, model=None, source=None, publisher=None, sinks=None) -> None:
        """`publisher`: a Publisher to publish through instead of the configured one (its
        ScoreStream becomes the pipeline's, so its publisher_id is the messages' id). `sinks`:
        the outputs besides `publisher`; None = the configured ones (streamcad.sinks.open_sinks:
        ZeroMQ unless `publisher` is given, the recorder when [record] dir is set)."""
        self.config = config
        self.model = model if model is not None else _load_model(config)
        try:
            # ROI, quality, preprocess, infer, postprocess, smooth: the per-frame work, no threads
            # (before the source and the socket open: a model without a threshold and no config
            # value stops here, in the smoother)
            self.processor = FrameProcessor(config, self.model)
        except StreamcadError:
            if model is None:
                self.model.close()
            raise
        self.spec = self.model.spec
        self.source = source if source is not None else _open_source(config)
        # ONE ScoreStream builds every message (seq, stamps, the heartbeat timer): the status has
        # one owner, this pipeline's publish thread, and every sink gets the same messages
        self.scores = publisher.scores if publisher is not None else ScoreStream(
            config.publish.stream, heartbeat_s=config.publish.heartbeat_s)
        try:
            self.sinks = self._open_sinks(publisher, sinks)
        except BaseException:
            if source is None:
                self.source.close()
            raise
        # the ZeroMQ sink (benchmarks and the dashboard read its counters); None without one
        self.publisher = next((s for s in self.sinks if getattr(s, "name", None) == "zmq"), None)
        self._frame_sinks = [s for s in self.sinks if s.wants_frames]
        # sinks that also take the model's saliency map of each frame (the preview sink)
        self._saliency_sinks = [s for s in self.sinks if getattr(s, "wants_saliency", False)]
        self.processor.keep_frames = bool(self._frame_sinks)
        self.processor.keep_saliency = bool(self._saliency_sinks)  # the preview sink draws the map
        self.stats = _Stats()
        self.report = PipelineReport()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._q_infer: queue.Queue = queue.Queue(maxsize=2)
        self._q_pub: queue.Queue = queue.Queue(maxsize=2)
        self._stale_reported = False
        self._last_index = -1
        self._stopped = False  # stop() was called (Ctrl-C, SIGTERM), not a source end
        self._outage_published = False
        self._t_start_ns = 0

    # ---------------------------------------------------------------- stage functions
    # the per-frame work is the processor's (streamcad.processor); these name the thread each runs on
    @property
    def smoother(self):
        return self.processor.smoother

    @property
    def roi_tracker(self):
        return self.processor.roi_tracker

    @property
    def quality(self):
        return self.processor.quality

    def prepare(self, frame) -> Item:
        """ROI + quality + preprocess of one Frame (prepare thread)."""
        return self.processor.prepare(frame)

    def infer(self, item: Item) -> Item:
        """Model outputs for one prepared item (infer thread)."""
        return self.processor.infer(item)

    def finish(self, item: Item) -> None:
        """Post-processing, smoothing and publishing (publish thread)."""
        t_pick = time.monotonic_ns()  # the publish thread has the item: waits before this are queueing
        self.processor.postprocess(item)
        res = self.processor.smooth(item)
        t_smooth = time.monotonic_ns()
        lat = {
            "grab": (item.t["grab"] - item.t_capture_ns) / 1e6,
            "preprocess": (item.t["preprocess"] - item.t["grab"]) / 1e6,
            "queue": (item.t["queue"] - item.t["preprocess"] + t_pick - item.t["infer"]) / 1e6,
            "infer": (item.t["infer"] - item.t["queue"]) / 1e6,
            "smooth": (t_smooth - t_pick) / 1e6,
        }
        probs = None
        if item.probs is not None:
            probs = dict(zip(CLASS_NAMES, item.probs, strict=True))
        if self._status_due():
            self.publish_status()
        t_pub = time.monotonic_ns()
        lat["publish"] = (t_pub - t_smooth) / 1e6
        lat["total"] = (t_pub - item.t_capture_ns) / 1e6
        msg = self.scores.score(
            frame_index=item.index,
            t_capture_ns=item.t_capture_ns,
            t_publish_ns=t_pub,
            latency_ms=lat,
            probs=probs,
            malignancy=res.malignancy,
            state=res.state,
            flags=sorted(item.flags),
            roi=item.roi,
            model_sha256=self.model.sha256,
            model=self.model.model_id,
            saliency_peak=item.saliency_peak,
            lesion=item.lesion,
            label=item.label,
            ood_score=item.ood_score,
        )
        frame, item.frame = item.frame, None
        saliency, item.saliency = item.saliency, None
        for sink in self.sinks:
            if frame is not None and sink.wants_frames:
                sink.write_frame(frame)
            if sink in self._saliency_sinks:
                sink.write_saliency(item.index, saliency if item.probs is not None else None)
            sink.write_score(msg)
        st = self.stats
        for k, v in lat.items():
            st.lat[k].append(v)
        st.t_out.append(t_pub)
        st.last_state, st.last_flags = res.state, item.flags
        if item.probs is not None:
            st.last_probs = item.probs
        if res.malignancy is not None:
            st.malignancy.append(res.malignancy)
        self.report.frames_out += 1
        if item.flags:
            self.report.flagged += 1
        self._last_index = item.index
        # after the counters: a subscriber that joined gets a status counting this score
        self._poll_sinks()
        outage = "no_signal" in item.flags
        if outage != self._outage_published:  # the source went away or came back: say so now
            self._outage_published = outage
            self.publish_status()
        elif self.report.frames_out == 1:  # the first score: the start-up status said 'connecting, 0/0'
            self.publish_status()

    # ---------------------------------------------------------------- helpers
    def _open_sinks(self, publisher, sinks) -> list:
        from streamcad.sinks import open_sinks, sink_names

        out = [publisher] if publisher is not None else []
        if sinks is not None:
            out += list(sinks)
            for sink in sinks:
                sink.open()
            return out
        path = Path(self.config.model.path) if self.config.model.path else DEFAULT_MODEL
        context = {"model": self.model, "source": self.source, "model_path": str(path.resolve())}
        if publisher is not None:
            context["zmq"] = publisher  # the preview sink sends through it
        if publisher is None:
            return open_sinks(self.config, self.scores, context)
        return out + open_sinks(self.config, self.scores, context, only=[n for n in sink_names(configured=True) if n != "zmq"])

    def _no_signal_item(self) -> Item:
        now = time.monotonic_ns()
        it = Item(index=max(self._last_index, 0), t_capture_ns=now, flags=frozenset({"no_signal"}))
        it.t.update(grab=now, preprocess=now, queue=now, infer=now)
        return it

    def _read(self):
        """Newest frame or None; reports a stale source once per outage as a no_signal item."""
        frame = self.source.read(timeout=_POLL_S)
        if frame is not None:
            self._stale_reported = False
            self.report.frames_in += 1
            return frame
        state = str(self.source.state)
        if state in ("stale", "reconnecting", "error") and not self._stale_reported:
            self._stale_reported = True
            return self._no_signal_item()
        return None

    def _status_due(self) -> bool:
        return self.scores.status_due(_STATUS_LEAD_S)  # the one heartbeat timer: the sinks keep none

    def _poll_sinks(self) -> None:
        """Sink housekeeping; a client that joined (a new subscriber) gets a status at once."""
        joined = 0
        for sink in self.sinks:
            joined += sink.poll()
        if joined:
            self.publish_status()

    @property
    def dropped(self) -> int:
        """What the sinks dropped, all together (each sink's own ``dropped``: messages, or frames
        for a frame sink such as OpenIGTLink). The status' counters.dropped_publish is only the
        ZeroMQ publisher's: what a subscriber can see as gaps (docs/PROTOCOL.md)."""
        return sum(s.dropped for s in self.sinks)

    def publish_status(self) -> None:
        src = self.source
        stats = src.stats
        info = src.info
        state = str(src.state)
        self.report.overwritten = stats.frames_overwritten
        self.report.rejected = stats.frames_rejected
        self.report.reconnects = stats.reconnects
        self.report.dropped_publish = dropped = self.publisher.dropped if self.publisher is not None else 0
        uptime = (time.monotonic_ns() - self._t_start_ns) / 1e9
        msg = self.scores.status(
            dropped=dropped,
            source={
                "uri": getattr(info, "uri", None) or self.config.source.uri,
                "state": state,
                "width": getattr(info, "width", None),
                "height": getattr(info, "height", None),
                "fps": getattr(info, "fps", None),
                "fourcc": getattr(info, "fourcc", None),
                "backend": getattr(info, "backend", None),
            },
            counters={
                "frames_in": stats.frames_grabbed,
                "frames_out": self.report.frames_out,
                "overwritten": stats.frames_overwritten,
                "rejected": stats.frames_rejected,
                "flagged": self.report.flagged,
                "dropped_publish": dropped,
                "reconnects": stats.reconnects,
            },
            fps_in=self.report.frames_in / uptime if uptime > 0 else 0.0,
            fps_out=self.stats.fps_out(),
            backend=self.model.backend.name,
            model=self.model.model_id,
            model_sha256=self.model.sha256,
            uptime_s=uptime,
            ood_gate="absent" if getattr(self.model, "gate", None) is None else "active",
            operating_threshold=self.smoother.point.operating_threshold,
            on_threshold=self.smoother.point.on,
            off_threshold=self.smoother.point.off,
            threshold_source=self.smoother.point.source,
        )
        for sink in self.sinks:
            sink.write_status(msg)

    def _target_reached(self) -> bool:
        n = self.config.frames
        return n is not None and self.report.frames_out >= n

    def _finished(self) -> bool:
        return self._stop.is_set() or self._target_reached()

    # ---------------------------------------------------------------- threads
    def _put(self, q: queue.Queue, item) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue, timeout: float = _POLL_S):
        try:
            return q.get(timeout=timeout)
        except queue.Empty:
            return None

    def _guard(self, name, fn) -> None:
        try:
            fn()
        except BaseException as exc:  # a stage died: record it, stop the others, re-raise in run()
            if isinstance(exc, StreamcadError):  # our own, already worded error: the caller prints it
                log.debug("pipeline %s thread stopped: %s", name, exc, exc_info=True)
            else:
                log.exception("pipeline %s thread failed", name)
            self.report.errors.append(exc)
            self._stop.set()

    def _prepare_loop(self) -> None:
        while not self._stop.is_set():
            got = self._read()
            if got is None:
                if self.source.ended:
                    self._put(self._q_infer, None)  # end-of-stream marker
                    return
                continue
            item = got if isinstance(got, Item) else self.prepare(got)
            if not self._put(self._q_infer, item):
                return

    def _infer_loop(self) -> None:
        while not self._stop.is_set():
            item = self._get(self._q_infer)
            if item is None:
                if self._q_infer_ended():
                    self._put(self._q_pub, None)
                    return
                continue
            if not self._put(self._q_pub, self.infer(item)):
                return

    def _q_infer_ended(self) -> bool:
        return self.source.ended and self._q_infer.empty() and not self._threads[0].is_alive()

    def _publish_loop(self) -> None:
        while not self._finished():
            if self._status_due():
                self.publish_status()
            self._poll_sinks()
            item = self._get(self._q_pub)
            if item is None:
                if self.source.ended and not self._threads[1].is_alive() and self._q_pub.empty():
                    break
                continue
            self.finish(item)
        self._done.set()

    # ---------------------------------------------------------------- entry points
    def run(self, on_tick=None, tick_s: float = 0.25) -> PipelineReport:
        """Threaded run until config.frames, source end, or stop(). Returns the report."""
        self._begin()
        self._threads = [
            threading.Thread(target=self._guard, args=(n, f), name=f"streamcad-{n}", daemon=True)
            for n, f in (("prepare", self._prepare_loop), ("infer", self._infer_loop), ("publish", self._publish_loop))
        ]
        for t in self._threads:
            t.start()
        try:
            while not self._done.wait(tick_s):
                if self._stop.is_set():
                    break
                if on_tick is not None:
                    on_tick(self)
        finally:
            self._stop.set()
            for t in self._threads:
                t.join(timeout=1.0)
            self._end()
        return self.report

    def run_sequential(self) -> PipelineReport:
        """The naive baseline: one thread does read -> prepare -> infer -> publish."""
        self._begin()
        try:
            while not self._finished():
                if self._status_due():
                    self.publish_status()
                self._poll_sinks()
                got = self._read()
                if got is None:
                    if self.source.ended:
                        break
                    continue
                item = got if isinstance(got, Item) else self.prepare(got)
                self.finish(self.infer(item))
        finally:
            self._end()
        return self.report

    def stop(self) -> None:
        """Ask every stage to end (signal handlers call this); run() returns within ~0.1 s."""
        self._stopped = True
        self._stop.set()

    def _begin(self) -> None:
        self._t_start_ns = time.monotonic_ns()
        self._wait_for_subscribers()
        if self.source.info is None:
            self.source.start()
        self.publish_status()

    def wait_subscribers(self, n: int = 1, timeout_s: float = 10.0) -> bool:
        """Before run(): wait until the ZeroMQ sink has seen `n` subscriptions (a condition with
        a timeout, where a fixed sleep would race a slow joiner). The status each subscriber
        needs first goes out when the run begins. False after timeout_s or stop()."""
        if self.publisher is None:
            raise StreamcadError("wait_subscribers: this pipeline has no ZeroMQ sink to be subscribed to")
        end = time.monotonic() + timeout_s
        while self.publisher.subscriptions < n:
            if time.monotonic() >= end or self._stop.is_set():
                return False
            for sink in self.sinks:
                sink.poll()
            self._stop.wait(0.005)
        return True

    def _wait_for_subscribers(self) -> None:
        """Recorded media read unpaced (lossless) would otherwise start scoring before a UI that
        is still connecting is there, and it would never see those frames: wait for
        publish.wait_subscribers subscribers of this stream's statuses, i.e. UIs (every Subscriber
        takes them; a raw SUB counts when its prefix covers them) (up to publish.wait_timeout_s, then start with a
        warning; the late UI sees the seq it joined at, Subscriber.joined_at)."""
        want = self.config.publish.wait_subscribers
        if not want or not getattr(self.source, "lossless", False) or self.publisher is None:
            return
        pub = self.publisher
        deadline = time.monotonic() + self.config.publish.wait_timeout_s
        log.info("waiting for %d subscriber(s) before starting %s (up to %.0f s)",
                 want, self.config.source.uri, self.config.publish.wait_timeout_s)
        while pub.status_subscribers < want and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("%d of %d subscriber(s) after %.0f s: starting anyway; a UI joining later "
                            "misses the first messages (it sees the seq it joined at)",
                            pub.status_subscribers, want, self.config.publish.wait_timeout_s)
                return
            self._poll_sinks()  # a join is answered with a status, to every sink
            self._stop.wait(min(left, 0.05))

    def _end(self) -> None:
        self.report.wall_s = (time.monotonic_ns() - self._t_start_ns) / 1e9
        self.report.latency_ms = self.stats.percentiles((50, 90, 99))
        try:
            self.publish_status()  # last word: final counters
        except StreamcadError:
            log.warning("final status could not be published")
        if self.report.errors:
            raise self.report.errors[0]
        if str(self.source.state) == "error" and not self._stopped and not self._target_reached():
            # a file broken midway, a feed given up on: the run ends with the reason
            raise SourceError(self.source.stats.error or f"{self.config.source.uri}: the source failed")

    def close(self) -> None:
        """Release source, sinks and backend (each bounded in time)."""
        self._stop.set()
        for part in (self.source, *self.sinks, self.model.backend):
            try:
                part.close()
            except StreamcadError:
                log.exception("error while closing %s", type(part).__name__)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -------------------------------------------------------------------- factories
def _load_model(config: RunConfig):
    """The [model] section -> a loaded model, built by the backend registry from the backend's own
    options (streamcad.backends: options_from_model refuses a [model] key the backend does not
    honour; check_backend a device or precision it does not really run on): never a silent
    CPU / FP32 run."""
    from streamcad.backends import check_backend, options_from_model
    from streamcad.manifest import load_model

    m = config.model
    path = Path(m.path) if m.path else DEFAULT_MODEL
    options = msgspec.structs.asdict(options_from_model(m))
    model = load_model(path, backend=m.backend, allow_unverified=m.allow_unverified, **options)
    try:
        check_backend(m, model.backend, path)
    except BaseException:
        model.close()
        raise
    return model


def _open_source(config: RunConfig):
    """The [source] section -> its (not started) source, built by the sources registry from the
    scheme's own options (streamcad.sources: a [source] key the scheme cannot honour is an error)."""
    from streamcad.sources import source_from_config

    return source_from_config(config.source)
