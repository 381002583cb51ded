"""benchmarks.profile: the py-spy parser on known stacks, and one real py-spy recording."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from streamcad.benchmarks.profile import parse_raw, per_frame, profile_mode, stage_of

ORT = "InferenceSession.run (onnxruntime/capi/onnxruntime_inference_collection.py:220)"
BOOT = "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982)"


def test_stage_of_picks_the_innermost_known_frame():
    infer = ["Pipeline._infer_loop (streamcad/pipeline.py:380)", "Pipeline.infer (streamcad/pipeline.py:177)",
             "OnnxRuntimeBackend.infer (streamcad/backends/onnxruntime.py:153)", ORT]
    assert stage_of(infer) == "infer (onnxruntime)"
    prep = ["Pipeline.prepare (streamcad/pipeline.py:160)", "preprocess (streamcad/preprocess.py:88)", "resize (cv2:1)"]
    assert stage_of(prep) == "preprocess (letterbox)"
    assert stage_of(["Pipeline.finish (streamcad/pipeline.py:196)", "Pipeline.postprocess (streamcad/pipeline.py:186)"]) \
        == "postprocess (softmax, saliency peak)"
    assert stage_of(["main (x.py:1)"]) == "other"


def test_parse_raw_keeps_pipeline_threads_only():
    text = "\n".join([
        f"thread (11): streamcad-infer;{BOOT};Pipeline.infer (streamcad/pipeline.py:177);{ORT} 40",
        f"thread (11): streamcad-infer;{BOOT};Pipeline._get (streamcad/pipeline.py:340) 5",
        f"thread (12): streamcad-prepare;{BOOT};Pipeline.prepare (streamcad/pipeline.py:160);"
        "QualityGate.check (streamcad/quality.py:70) 7",
        "thread (10): MainThread;<module> (x.py:1);load_model (streamcad/manifest.py:10) 99",  # setup: dropped
        f"thread (10): MainThread;Pipeline.run_sequential (streamcad/pipeline.py:420);{ORT} 3",
        "thread (13): reader0[sweep:];_grab (streamcad/sources/sweep.py:350) 2",
        "thread (12);Pipeline.prepare (streamcad/pipeline.py:160);QualityGate.check (streamcad/quality.py:70) 2",  # name unread
        "thread (14);_grab (streamcad/sources/sweep.py:350) 4",  # a thread never named: dropped
        "garbage line without a count",
    ])
    got = parse_raw(text)
    assert dict(got["streamcad-infer"]) == {"infer (onnxruntime)": 40, "queue wait": 5}
    assert dict(got["streamcad-prepare"]) == {"quality": 9}  # the unnamed sample of thread 12 counts as its
    assert dict(got["naive"]) == {"infer (onnxruntime)": 3}
    assert dict(got["source-reader"]) == {"grab (source)": 2}
    assert "MainThread" not in got
    prof = {"frames": 90, "warmup": 10, "rate_hz": 100, "idle": {"streamcad-infer": {"x": 100}},
            "cpu": {"streamcad-infer": {"infer (onnxruntime)": 40}}, "gil": {}}
    t = per_frame(prof)["streamcad-infer"]
    assert t["wall_ms"] == pytest.approx(10.0)  # 100 samples at 100 Hz over 100 frames = 10 ms/frame
    assert t["cpu_ms"] == {"infer (onnxruntime)": pytest.approx(4.0)}
    prof["gil"] = {"streamcad-publish": {"publish (zmq)": 10}}  # seen only by the gil run
    assert per_frame(prof)["streamcad-publish"] == {"wall_ms": None, "cpu_ms": {}, "gil_ms": {"publish (zmq)": pytest.approx(1.0)}}


def _pyspy_usable() -> str | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return None if Path(exe).is_file() else "py-spy is not installed (dev extra)"


@pytest.mark.skipif(_pyspy_usable() is not None, reason=str(_pyspy_usable()))
def test_profile_a_real_threaded_run():
    """py-spy records the real pipeline (shipped model, replay frames, subscriber process)."""
    # 1000 Hz: the letterbox costs ~0.1 ms a frame, ~18 samples here; at 200 Hz it was ~4 and CI once drew none
    prof = profile_mode("threaded", "replay", 150, "ort-cpu-1t", 160, 1000)
    stages = per_frame(prof)
    assert {"streamcad-prepare", "streamcad-infer", "streamcad-publish"} <= set(stages)
    infer = stages["streamcad-infer"]["cpu_ms"]
    assert max(infer, key=infer.get) == "infer (onnxruntime)"  # the model is what the infer thread does
    prepare = stages["streamcad-prepare"]["cpu_ms"]
    assert "preprocess (letterbox)" in prepare and "infer (onnxruntime)" not in prepare
    assert all(prof[f"fps_{k}"] > 0 for k in ("idle", "cpu", "gil"))
