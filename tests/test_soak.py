"""A test-sized soak: 4,000 frames of the sweep source at pace 'none', random faults injected,
through the real pipeline to a real subscriber, with a stalled UI (a raw SUB that never reads)
connected the whole time (benchmarks/soak.py run_soak). It asserts what is right or wrong
whatever the machine's load; timing bounds (the status heartbeat's largest gap) are the
benchmark's: `python -m streamcad.benchmarks.soak --frames 20000 --pace none` exits 1 when a status gap
exceeds --status-gap-limit, and the hour-long run is `python -m streamcad.benchmarks.soak --minutes 60`."""

from __future__ import annotations

import pytest

from streamcad.benchmarks.soak import run_soak
from streamcad.manifest import write_manifest
from streamcad.sources.faults import RandomFaults
from tests.helpers_onnx import make_contract_onnx

FRAMES = 4_000


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    p = make_contract_onnx(tmp_path_factory.mktemp("soak_model") / "m.onnx", size=64)
    write_manifest(p, class_names=["normal", "benign", "malignant"], operating_threshold=0.5)
    return p


@pytest.mark.slow
def test_soak_20k_frames_with_random_faults(model_path):
    hang = 0.5
    # rates are per grab (a sweep at pace 'none' is lossless: about one grab per scored frame,
    # plus the faulty ones): ~15 drops and corrupt bursts, ~6 resizes, ~2 stalls (0.1-0.9 s, so
    # some outlast the 0.5 s hang timeout and their reader is abandoned), ~4 disconnects (0.1-0.3 s)
    faults = RandomFaults(seed=11, rates={"drop": 0.004, "corrupt": 0.004, "resize": 0.0015,
                                          "stall": 0.0005, "disconnect": 0.001},
                          stall_s=(0.1, 0.9), disconnect_s=(0.1, 0.3), sizes=((200, 150), None))
    res = run_soak(model_path, frames=FRAMES, pace="none", fps=30.0, screen=(320, 240), faults=faults,
                   hang_timeout_s=hang, warmup_frames=1000, checkpoint_s=1e9,
                   stalled_subscribers=1, hwm_seconds=1.0)  # a queue of ~1,000 messages at the unpaced
    # sweep's expected 1,000 fps: the stalled UI overflows it within these 4,000 frames
    keys = ("scores", "faults", "fault_kinds", "seq_gaps", "rss_warm_mb", "rss_growth_mb", "threads_left",
            "max_status_gap_s", "max_status_gap_publish_s", "reconnects", "readers_abandoned", "frames_rejected",
            "wall_s")
    summary = {k: res[k] for k in keys}
    print("SOAK", summary)
    assert res["exceptions"] == []
    assert res["frames_out"] == FRAMES and res["scores"] >= FRAMES - 5  # the first few precede the subscription
    assert res["publishers"] == 1  # never restarted
    assert res["seq_gaps"] == 0 and res["subscriber_gap_count"] == 0 and res["dropped_publish"] == 0
    # the stalled UI lost its own messages only (it holds what its queue and buffers took)
    assert 0 < res["stalled_received"][0] < res["messages"]
    kinds = res["fault_kinds"]
    assert {"drop", "corrupt", "resize", "disconnect"} <= set(kinds) and res["faults"] >= 20, kinds
    assert res["frames_rejected"] > 0 and res["reconnects"] >= kinds["disconnect"] - 1
    assert res["no_signal_scores"] >= 1
    assert res["rss_warm_mb"] is not None and res["rss_growth_mb"] < 30.0
    assert res["threads_left"] == []
    # statuses kept coming through the faults (their largest gap is a timing bound: benchmarks.soak)
    assert res["messages"] - res["scores"] >= 2
