"""Faults mid-stream through the WHOLE pipeline, seen from a real subscriber.

    FaultySource(sweep | video file written by OpenCV)  --stall/drop/corrupt/resize/disconnect/hang-->
    Pipeline (prepare / infer / publish threads, real ONNX graph in ONNX Runtime)
    --> ZeroMQ XPUB on 127.0.0.1 --> Subscriber in this test (recv with timeouts)

For each fault the published stream must show: the outage (a 'no_signal' score and a status with
the source state) within max(3 frame intervals, 0.5 s) of the last frame, reconnects counted,
scores resuming from the SAME publisher (no pipeline restart), seq consecutive throughout
(no gap at the subscriber), and no exception out of the pipeline. Recovery time = fault end ->
first scored (unflagged) frame published; printed as RECOVERY lines for docs/RELIABILITY.md.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamcad.client import Subscriber
from streamcad.config import config_from_dict
from streamcad.manifest import write_manifest
from streamcad.messages import Score, Status
from streamcad.pipeline import Pipeline
from streamcad.sources import open_source
from streamcad.sources.faults import FaultySource
from tests.helpers_onnx import make_contract_onnx

SIZE = 64
FPS = 30.0
W, H = 320, 240
SECTOR = (60, 40, 200, 160)  # x, y, w, h of the textured sector in the written video
STALE_BOUND_S = max(3 / FPS, 0.5)
MARGIN_S = 0.35  # watchdog poll + pipeline poll + thread hand-offs on a loaded 2-core CI box
FAULT_AT = 0.6  # seconds after the first grab: the ROI has settled, scores are flowing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    p = make_contract_onnx(tmp_path_factory.mktemp("rel_model") / "m.onnx", size=SIZE)
    write_manifest(p, class_names=["normal", "benign", "malignant"], operating_threshold=0.5)
    return p


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """A scanner-like screen: changing speckle inside SECTOR, dark margins, burnt-in text."""
    path = tmp_path_factory.mktemp("rel_video") / "scan.avi"
    rng = np.random.default_rng(0)
    x, y, w, h = SECTOR
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    assert vw.isOpened()
    for i in range(90):
        img = np.full((H, W, 3), 12, np.uint8)
        img[y:y + h, x:x + w] = rng.gamma(2.0, 40.0, (h, w)).clip(0, 255).astype(np.uint8)[..., None]
        cv2.putText(img, f"GE 12L {i:03d}", (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (200, 200, 200), 1)
        vw.write(img)
    vw.release()
    return path


def make_inner(kind: str, video: Path, **kw):
    if kind == "sweep":
        return open_source("sweep:", screen=(W, H), fps=FPS, seed=2, pace="native", **kw)
    return open_source(f"file:{video}", pace="native", loop=True, **kw)


def true_sector(kind: str, inner) -> tuple[int, int, int, int]:
    return tuple(inner.renderer.roi) if kind == "sweep" else SECTOR


@dataclass
class Run:
    scores: list = field(default_factory=list)
    statuses: list = field(default_factory=list)
    arrivals: list = field(default_factory=list)  # (monotonic ns at receipt, message)
    report: object = None
    error: BaseException | None = None
    events: list = field(default_factory=list)
    publisher_id: str = ""
    sub_gaps: int = -1

    @property
    def messages(self):
        return [m for _, m in self.arrivals]


def run_pipeline(model_path, source: FaultySource, seconds: float, heartbeat_s: float = 1.0) -> Run:
    """Run the threaded pipeline for `seconds` around `source`, subscribe to everything."""
    cfg = config_from_dict({
        "source": {"uri": "sweep:", "fps": FPS},
        "model": {"path": str(model_path), "threads": 1},
        "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}", "stream": "rel", "heartbeat_s": heartbeat_s},
        "dashboard": False,
    })
    out = Run()
    with Pipeline(cfg, source=source) as pipe, Subscriber(cfg.publish.endpoint, rcvhwm=100_000) as sub:
        assert pipe.wait_subscribers(1, 20.0)  # the subscription reached the publisher

        def target():
            try:
                out.report = pipe.run()
            except BaseException as exc:  # recorded: the test asserts none escaped
                out.error = exc

        t = threading.Thread(target=target, name="test-pipeline")
        t.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            m = sub.recv(timeout=0.1)
            if m is not None:
                out.arrivals.append((time.monotonic_ns(), m))
        pipe.stop()
        t.join(timeout=5)
        assert not t.is_alive(), "pipeline did not stop"
        while (m := sub.recv(timeout=0.2)) is not None:  # the final status
            out.arrivals.append((time.monotonic_ns(), m))
        out.events = source.events
        out.publisher_id = pipe.publisher.publisher_id
        out.sub_gaps = sub.gap_count
    out.scores = [m for m in out.messages if isinstance(m, Score)]
    out.statuses = [m for m in out.messages if isinstance(m, Status)]
    return out


def check_stream_intact(r: Run) -> None:
    """No exception, one publisher throughout, every seq present, scores resumed after the fault."""
    assert r.error is None, f"pipeline raised {r.error!r}"
    assert r.report.errors == []
    assert {m.publisher for m in r.messages} == {r.publisher_id}  # never restarted
    seqs = [m.seq for m in r.messages]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "seq gap at the subscriber"
    assert r.sub_gaps == 0
    assert r.statuses[-1].counters.dropped_publish == 0


def recovery(r: Run, ev) -> float:
    """Seconds from the fault's end to the first scored frame published after it."""
    after = [s for s in r.scores if s.probs is not None and s.t_capture_ns >= ev.t_end_ns]
    assert after, f"no scored frame after the {ev.kind} fault"
    return (after[0].t_publish_ns - ev.t_end_ns) / 1e9


def last_frame_before(r: Run, t_ns: int) -> Score:
    return max((s for s in r.scores if s.probs is not None and s.t_capture_ns <= t_ns), key=lambda s: s.seq)


def outage_seen(r: Run, t_last_frame_ns: int):
    """The first 'no_signal' score after t and the first status reporting a non-live state."""
    ns = next(s for s in r.scores if "no_signal" in s.flags and s.t_publish_ns > t_last_frame_ns)
    st = next(m for m in r.statuses if m.t_publish_ns > t_last_frame_ns and m.source.state != "live")
    return ns, st


def report_line(kind, fault, r, ev, extra=""):
    print(f"RECOVERY {fault:<10s} {kind:<5s} {recovery(r, ev):6.3f} s  {extra}")


SOURCES = ["sweep", "file"]


@pytest.mark.parametrize("kind", SOURCES)
def test_stall_marks_stale_then_resumes(kind, model_path, video):
    src = FaultySource(make_inner(kind, video), [(FAULT_AT, "stall", {"seconds": 1.0})])
    r = run_pipeline(model_path, src, FAULT_AT + 1.0 + 0.6)
    check_stream_intact(r)
    (ev,) = r.events
    last = last_frame_before(r, ev.t_start_ns)
    ns, st = outage_seen(r, last.t_capture_ns)
    assert (ns.t_publish_ns - last.t_capture_ns) / 1e9 < STALE_BOUND_S + MARGIN_S
    assert (ns.t_publish_ns - last.t_capture_ns) / 1e9 >= STALE_BOUND_S - 0.05  # not a false alarm
    assert st.source.state == "stale"
    assert (st.t_publish_ns - last.t_capture_ns) / 1e9 < STALE_BOUND_S + MARGIN_S
    assert sum("no_signal" in s.flags for s in r.scores) == 1  # once per stale episode
    assert recovery(r, ev) < 0.5
    assert r.statuses[-1].source.state in ("live", "ended")
    report_line(kind, "stall", r, ev, f"stale after {(ns.t_publish_ns - last.t_capture_ns) / 1e9:.3f} s")


@pytest.mark.parametrize("kind", SOURCES)
def test_drop_loses_only_the_dropped_frames(kind, model_path, video):
    src = FaultySource(make_inner(kind, video), [(FAULT_AT, "drop", {"count": 8})])
    r = run_pipeline(model_path, src, FAULT_AT + 0.8)
    check_stream_intact(r)
    (ev,) = r.events
    assert ev.frames_lost == 8
    assert not any(s.flags for s in r.scores)  # 8 frames at 30 fps is no outage
    assert r.statuses[-1].counters.reconnects == 0
    report_line(kind, "drop", r, ev)


@pytest.mark.parametrize("kind", SOURCES)
def test_corrupt_frames_rejected_and_counted(kind, model_path, video):
    # 'cycle': empty buffer, float32 dtype, (H, W, 2) shape, undecoded garbage bytes, twice each
    src = FaultySource(make_inner(kind, video), [(FAULT_AT, "corrupt", {"count": 8, "mode": "cycle"})])
    r = run_pipeline(model_path, src, FAULT_AT + 0.8)
    check_stream_intact(r)
    (ev,) = r.events
    assert r.statuses[-1].counters.rejected == 8 == ev.frames_lost
    assert r.statuses[-1].counters.reconnects == 0
    assert all(s.probs is not None for s in r.scores if not s.flags)
    report_line(kind, "corrupt", r, ev)


@pytest.mark.parametrize("kind", SOURCES)
def test_resolution_change_redetects_roi(kind, model_path, video):
    inner = make_inner(kind, video)
    truth = true_sector(kind, inner)
    small = (200, 150)
    src = FaultySource(inner, [(FAULT_AT, "resize", {"size": small}), (FAULT_AT + 0.8, "resize", {"size": None})])
    r = run_pipeline(model_path, src, FAULT_AT + 1.6)
    check_stream_intact(r)
    ev_small, ev_back = r.events
    sx, sy = small[0] / W, small[1] / H
    expect_small = (truth[0] * sx, truth[1] * sy, truth[2] * sx, truth[3] * sy)

    def rois(t0, t1):
        return [s.roi for s in r.scores if t0 <= s.t_capture_ns < t1 and s.roi is not None]

    before, during, back = (rois(0, ev_small.t_start_ns), rois(ev_small.t_end_ns, ev_back.t_start_ns),
                            rois(ev_back.t_end_ns, 1 << 62))
    assert before and during and back
    for box, expect, (fw, fh) in ((before[-1], truth, (W, H)), (during[-1], expect_small, small),
                                  (back[-1], truth, (W, H))):
        assert box[0] + box[2] <= fw and box[1] + box[3] <= fh  # fits the frame it was found on
        tol = 0.06 * fw
        assert all(abs(a - b) <= tol for a, b in zip(box, expect, strict=True)), f"roi {box} vs {expect}"
    # every box published while small frames flowed fits the small frame: none is stale geometry
    assert all(b[0] + b[2] <= small[0] and b[1] + b[3] <= small[1] for b in during[1:])
    report_line(kind, "resize", r, ev_small)


@pytest.mark.parametrize("kind", SOURCES)
def test_disconnect_reconnects_without_restart(kind, model_path, video):
    src = FaultySource(make_inner(kind, video), [(FAULT_AT, "disconnect", {"seconds": 0.8})])
    r = run_pipeline(model_path, src, FAULT_AT + 0.8 + 1.3)
    check_stream_intact(r)
    (ev,) = r.events
    last = last_frame_before(r, ev.t_start_ns)
    ns, st = outage_seen(r, last.t_capture_ns)
    assert (ns.t_publish_ns - last.t_capture_ns) / 1e9 < STALE_BOUND_S + MARGIN_S
    assert st.source.state in ("stale", "reconnecting")
    assert (st.t_publish_ns - last.t_capture_ns) / 1e9 < STALE_BOUND_S + MARGIN_S
    assert sum("no_signal" in s.flags for s in r.scores) == 1
    assert r.statuses[-1].counters.reconnects == 1
    rec = recovery(r, ev)
    assert rec < 2.0 + 0.5  # the back-off cap (reconnect_max_s) + margin
    report_line(kind, "disconnect", r, ev)


@pytest.mark.parametrize("kind", SOURCES)
def test_hung_read_never_blocks_publishing(kind, model_path, video):
    """A grab that never returns: heartbeats keep flowing, the watchdog abandons the reader,
    a fresh one reconnects, scores resume; the abandoned daemon ends after close()."""
    before = set(threading.enumerate())
    inner = make_inner(kind, video, hang_timeout_s=1.0)
    src = FaultySource(inner, [(FAULT_AT, "stall", {"seconds": math.inf})])
    r = run_pipeline(model_path, src, FAULT_AT + 1.0 + 1.0, heartbeat_s=0.5)
    check_stream_intact(r)
    (ev,) = r.events
    last = last_frame_before(r, ev.t_start_ns)
    resumed = next(s for s in r.scores if s.probs is not None and s.t_capture_ns > ev.t_start_ns)
    # statuses received while the reader hung: every gap <= 1 s (heartbeat 0.5 s)
    t_st = [t for t, m in r.arrivals if isinstance(m, Status)]
    window = [t for t in t_st if last.t_capture_ns <= t <= resumed.t_publish_ns]
    assert len(window) >= 2
    gaps = np.diff([last.t_capture_ns] + window + [resumed.t_publish_ns]) / 1e9
    assert gaps.max() <= 1.0, f"status gap {gaps.max():.2f} s during the hang"
    ns, st = outage_seen(r, last.t_capture_ns)
    assert (ns.t_publish_ns - last.t_capture_ns) / 1e9 < STALE_BOUND_S + MARGIN_S
    assert st.source.state == "stale" and (st.t_publish_ns - last.t_capture_ns) / 1e9 < STALE_BOUND_S + MARGIN_S
    assert r.statuses[-1].counters.reconnects == 1
    print(f"RECOVERY hang       {kind:<5s} {(resumed.t_publish_ns - last.t_capture_ns) / 1e9 - 1.0:6.3f} s "
          f"after the 1.0 s hang timeout; max status gap {gaps.max():.3f} s")
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and [t for t in set(threading.enumerate()) - before if t.is_alive()]:
        time.sleep(0.05)
    assert [t.name for t in set(threading.enumerate()) - before if t.is_alive()] == []
