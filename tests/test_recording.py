"""Session recording and replay (streamcad.recording) on a real scanner clip, the shipped ONNX
model, real ZeroMQ sockets on loopback and a real `streamcad run` process killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from streamcad.client import Subscriber
from streamcad.config import config_from_dict
from streamcad.errors import SourceError
from streamcad.messages import Score
from streamcad.pipeline import DEFAULT_MODEL, Pipeline
from streamcad.recording import (
    Recorder,
    Recording,
    RecordingError,
    RecordingSource,
    replay,
)
from streamcad.rescore import rescore
from tests.helpers_stream import free_port

CLIP = "lung-convex-noui-neuruppin.mp4"  # CC BY 4.0 (sectors.json), 370x370, 150 frames at 25 fps
N = 40  # frames per recording: enough for the ROI warm-up and a few status messages


def _collect(sub: Subscriber, done: threading.Event, out: list, idle_s: float = 1.0) -> None:
    """Receive until `done` is set and nothing arrived for idle_s."""
    last = time.monotonic()
    while not (done.is_set() and time.monotonic() - last > idle_s):
        m = sub.recv(timeout=0.1)
        if m is not None:
            out.append(m)
            last = time.monotonic()


def _cfg(tmp_path: Path, uri: str, **extra) -> object:
    d = {
        "source": {"uri": uri, "pace": "none"},
        "model": {"path": str(DEFAULT_MODEL), "threads": 1},
        "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}", "stream": "rec", "wait_subscribers": 1,
                    "wait_timeout_s": 20.0},
        "record": {"dir": str(tmp_path / "session")},
        "frames": N,
        "dashboard": False,
    }
    for k, v in extra.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    return config_from_dict(d)


@pytest.fixture(scope="module")
def recorded(video_dir, tmp_path_factory):
    """One recording of N frames of a real clip, with what a live subscriber received meanwhile."""
    tmp = tmp_path_factory.mktemp("rec")
    cfg = _cfg(tmp, f"file:{video_dir / CLIP}")
    live: list = []
    done = threading.Event()
    with Pipeline(cfg) as pipe, Subscriber(cfg.publish.endpoint, rcvhwm=100_000) as sub:
        th = threading.Thread(target=_collect, args=(sub, done, live))
        th.start()
        try:
            report = pipe.run()  # waits for the subscriber (publish.wait_subscribers), then every frame
        finally:
            done.set()
            th.join(15)
    return Path(cfg.record.dir), live, report, cfg


def test_recording_holds_every_published_message_and_frame(recorded):
    d, live, report, _ = recorded
    rec = Recording(d)
    assert rec.complete and rec.end["dropped_messages"] == 0 and rec.end["dropped_frames"] == 0
    assert rec.drops == {"dropped_messages": 0, "dropped_frames": 0} and (d / "drops.jsonl").read_bytes() == b""
    msgs = rec.messages()
    scores = [m for m in msgs if isinstance(m, Score)]
    assert len(scores) == report.frames_out == N
    # the live subscriber joined before the first message (wait_subscribers): it saw exactly what was recorded
    assert [m.seq for m in msgs] == list(range(len(msgs)))
    assert live == msgs
    frames = rec.frames()
    assert [f.index for f in frames] == [s.frame_index for s in scores]
    # the pixels are the clip's, exactly (PNG is lossless): frame k of the file in gray
    import cv2

    cap = cv2.VideoCapture(str(Path(rec.session["source_uri"].removeprefix("file:"))))
    for f in frames[:5]:
        ok, bgr = cap.read()
        assert ok
        assert np.array_equal(rec.load_frame(f).image, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    cap.release()
    assert rec.session["model"]["sha256"] == scores[0].model_sha256
    assert rec.manifest["sha256"] == scores[0].model_sha256
    assert rec.session["config"]["record"]["dir"] == str(d)


def test_replay_to_a_real_subscriber_is_message_by_message_the_recording(recorded):
    d, _, _, _ = recorded
    msgs = Recording(d).messages()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    got: list = []
    done = threading.Event()
    with Subscriber(endpoint, rcvhwm=100_000) as sub:
        th = threading.Thread(target=_collect, args=(sub, done, got))
        th.start()
        try:
            res = replay(d, endpoint=endpoint, speed=20.0, wait_subscribers=1, wait_timeout_s=20.0)
        finally:
            done.set()
            th.join(15)
    assert res["sent"] == res["messages"] == len(msgs)
    assert got == msgs  # every field: publisher id, seq, stamps, probs, flags, roi


def test_replay_keeps_the_recorded_timing(recorded):
    """At speed 4 the gaps between re-published messages are the recorded ones / 4: the last
    message cannot go out before (its recorded offset / 4); an event, not a timing bound."""
    d, _, _, _ = recorded
    msgs = Recording(d).messages()
    span = (msgs[-1].t_publish_ns - msgs[0].t_publish_ns) / 1e9
    t0 = time.monotonic()
    replay(d, endpoint=f"tcp://127.0.0.1:{free_port()}", speed=4.0, wait_subscribers=0)
    assert time.monotonic() - t0 >= span / 4 * 0.95


def test_rescore_with_the_same_model_gives_identical_probabilities(recorded):
    d, _, _, _ = recorded
    out = rescore(d)
    s = out["summary"]
    assert s["recorded_scores"] == s["compared"] == N and s["not_rescored"] == 0
    assert s["identical_probs"] == N and s["max_abs_delta"] in (0.0, None)
    assert s["flag_changes"] == 0
    assert all(f["recorded_probs"] == f["new_probs"] for f in out["frames"])


def test_a_published_score_is_offline_preprocess_and_infer_of_the_same_frame(tmp_path):
    """The score on the wire = softmax(model(preprocess(frame, roi))) computed here, offline, for
    the frames the pipeline delivered (kept by a MemorySink; the sweep's breast images, so an
    out-of-domain gate in the shipped model leaves them scored)."""
    from streamcad.manifest import load_model
    from streamcad.preprocess import preprocess
    from streamcad.sinks import MemorySink
    from streamcad.sinks.zmq import publisher_from_config

    cfg = _cfg(tmp_path, "sweep:", source={"fps": 30.0, "seed": 4}, record={"dir": None},
               publish={"wait_subscribers": 0}, frames=30)
    kept = MemorySink(wants_frames=True)
    got: list = []
    done = threading.Event()
    with Subscriber(cfg.publish.endpoint, rcvhwm=100_000) as sub:
        th = threading.Thread(target=_collect, args=(sub, done, got))
        th.start()
        try:
            with Pipeline(cfg, publisher=publisher_from_config(cfg), sinks=[kept]) as pipe:
                assert pipe.wait_subscribers(1, 20.0)  # joined before the first message
                pipe.run_sequential()
        finally:
            done.set()
            th.join(15)
    scores = [m for m in got if isinstance(m, Score)]
    assert scores == kept.scores and len(scores) == 30
    images = {i: img for i, _, img in kept.frames}
    checked = 0
    with load_model(DEFAULT_MODEL, intra_op_threads=1) as model:
        for sc in scores[-15:]:
            if sc.probs is None:
                continue
            x = preprocess(images[sc.frame_index], model.spec, tuple(sc.roi))
            logits = np.asarray(model.backend.infer(x[None])["logits"][0], np.float64)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            np.testing.assert_allclose([sc.probs.normal, sc.probs.benign, sc.probs.malignant], p, rtol=0, atol=1e-6)
            checked += 1
    assert checked >= 5


def test_rescore_with_another_model_reports_the_differences(recorded, tmp_path):
    from tests.helpers_onnx import make_contract_onnx

    d, _, _, _ = recorded
    from streamcad.manifest import write_manifest

    other = make_contract_onnx(tmp_path / "other.onnx", size=64, seed=11)
    write_manifest(other, class_names=["normal", "benign", "malignant"], operating_threshold=0.5)  # a fixture threshold
    out = rescore(d, model=other)
    s = out["summary"]
    assert s["compared"] == N and s["new_sha256"] != s["recorded_sha256"]
    assert s["identical_probs"] < N
    if s["both_scored"]:  # (a gate in the shipped model may have left the lung frames unscored)
        assert s["max_abs_delta"] > 0


def test_file_dir_reads_a_recording_as_a_source(recorded):
    d, _, _, _ = recorded
    rec = Recording(d)
    src = RecordingSource(d, pace="none")
    with src:
        got = []
        while (f := src.read(timeout=2.0)) is not None or not src.ended:
            if f is not None:
                got.append(f)
    assert [f.index for f in got] == [e.index for e in rec.frames()]
    first = rec.load_frame(rec.frames()[0])
    assert np.array_equal(got[0].image, first.image) and got[0].chroma == first.chroma
    assert (got[0].colour is None) == (first.colour is None)


def test_recording_refuses_a_used_folder_and_reading_refuses_a_non_recording(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x.txt").write_text("x")
    with pytest.raises(RecordingError, match="not an empty directory"):
        Recorder(tmp_path / "used").open()
    with pytest.raises(RecordingError, match="not a streamcad recording"):
        Recording(tmp_path / "used")
    with pytest.raises(SourceError, match="not a streamcad recording"):
        RecordingSource(tmp_path / "used")


def test_a_size_bound_stops_the_recording_not_the_run(video_dir, tmp_path):
    cfg = _cfg(tmp_path, f"file:{video_dir / CLIP}", record={"max_size_mb": 0.3},
               publish={"wait_subscribers": 0})
    with Pipeline(cfg) as pipe:
        report = pipe.run_sequential()
    assert report.frames_out == N
    rec = Recording(cfg.record.dir)
    assert rec.end["stopped"].startswith("max_size_mb") and rec.end["bytes"] <= 0.3e6
    assert 0 < len(rec.frames()) < N and rec.end["dropped_frames"] == 0  # stopped is not dropped


def test_sigkill_loses_at_most_the_last_second(video_dir, tmp_path, repo_root):
    """A real `streamcad run --record` at the clip's own pace, killed with SIGKILL: every message a
    live subscriber received more than 1 s before the kill is in the recording, with its frame."""
    d = tmp_path / "killed"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "streamcad.cli", "run", "--source", f"file:{video_dir / CLIP}", "--loop",
           "--record", str(d), "--endpoint", endpoint, "--no-dashboard", "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    live: list = []
    with Subscriber(endpoint, rcvhwm=100_000) as sub:
        proc = subprocess.Popen(cmd, cwd=repo_root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 90
            while sum(isinstance(m, Score) for m in live) < 75 and time.monotonic() < deadline:  # ~3 s at 25 fps
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                m = sub.recv(timeout=0.2)
                if m is not None:
                    live.append(m)
            t_kill = time.monotonic_ns()
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stderr.close()
    assert sum(isinstance(m, Score) for m in live) >= 75, "the run did not get going in 90 s"
    rec = Recording(d)
    assert not rec.complete  # killed: no end.json
    recorded = {m.seq: m for m in rec.messages()}
    old = [m for m in live if m.t_publish_ns < t_kill - 1_000_000_000]
    drops = sum(rec.drops.values())  # what the writer said it dropped (drops.jsonl), if anything
    missing = [m.seq for m in old if recorded.get(m.seq) != m]
    assert old and len(missing) <= drops, f"{len(missing)} messages older than 1 s not recorded: {missing[:10]}"
    frames = {e.index: e for e in rec.frames()}
    old_scores = [m for m in old if isinstance(m, Score) and m.seq in recorded]
    lost_frames = [m.frame_index for m in old_scores if m.frame_index not in frames]
    assert len(lost_frames) <= drops, f"frames of scores older than 1 s not recorded: {lost_frames[:10]}"
    for m in old_scores[-3:]:  # complete PNGs: they load at the recorded size
        e = frames[m.frame_index]
        assert rec.load_frame(e).image.shape == tuple(e.shape)
    json.loads((d / "session.json").read_text())  # written whole at the start (atomic rename)


def test_the_source_factory_picks_the_recording_for_a_folder_and_never_falls_back(recorded, video_dir):
    from streamcad.sources import SCHEMES, _factory, open_source
    from streamcad.sources.capture import FileSource

    d, _, _, _ = recorded
    assert isinstance(open_source(f"file:{d}", pace="none"), RecordingSource)
    assert isinstance(open_source(f"file:{video_dir / CLIP}", pace="none"), FileSource)
    for scheme in SCHEMES:  # every scheme has its own class, none is the sweep by default
        assert _factory(scheme, str(d)).__name__.lower().startswith(
            {"file": "recording", "device": "device", "url": "url", "gst": "gst", "sweep": "sweep"}[scheme])
    with pytest.raises(SourceError, match="unknown source scheme 'rtmp'"):
        _factory("rtmp", "")


def test_a_writer_that_falls_behind_drops_counts_and_says_so(tmp_path):
    """Frames offered far faster than PNG can encode them (noise at 1280x960): the recorder
    drops instead of making the caller wait, and every drop is accounted for on disk."""
    from streamcad.messages import ScoreStream
    from streamcad.sources.base import Frame

    stream = ScoreStream("drops")
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (960, 1280), np.uint8)  # incompressible: the slowest PNG there is
    rec = Recorder(tmp_path / "r")
    rec.open()
    n = 300
    for i in range(n):
        rec.write_frame(Frame(noise, time.monotonic_ns(), i))
        rec.write_score(stream.score(frame_index=i, t_capture_ns=1, latency_ms={}, probs=None, malignancy=None,
                                     state="flagged", flags=["blank"], roi=None, model_sha256="ab"))
    rec.close()
    r = Recording(tmp_path / "r")
    assert r.end["dropped_frames"] > 0 and r.end["frames"] + r.end["dropped_frames"] == n
    assert r.end["messages"] + r.end["dropped_messages"] == n
    assert r.drops == {"dropped_messages": r.end["dropped_messages"], "dropped_frames": r.end["dropped_frames"]}
    last = json.loads((tmp_path / "r" / "drops.jsonl").read_text().splitlines()[-1])
    assert (last["dropped_messages"], last["dropped_frames"]) == (r.end["dropped_messages"], r.end["dropped_frames"])
    seqs = [m.seq for m in r.messages()]
    assert len(seqs) == r.end["messages"] and seqs == sorted(seqs)  # the dropped ones are seq gaps
    assert len(r.frames()) == r.end["frames"]
