"""The `suspicious` state sits on the model's validated operating threshold: labelled sweep frames
through the real pipeline (shipped ONNX model, ONNX Runtime, ZeroMQ on 127.0.0.1), and the
rule for a model without a threshold. Nothing here knows the threshold's value: it is read
from the manifest of whatever model is shipped."""

from __future__ import annotations

import logging
import time

import pytest

from streamcad.benchmarks.operating_point import analyse, run_sweep
from streamcad.client import Subscriber
from streamcad.config import config_from_dict
from streamcad.errors import ConfigError
from streamcad.manifest import read_manifest, write_manifest
from streamcad.messages import Status
from streamcad.pipeline import DEFAULT_MODEL, Pipeline
from streamcad.sources.sweep import SAMPLE_DIR, SweepSource
from tests.helpers_onnx import make_contract_onnx
from tests.test_pipeline import free_port


@pytest.fixture(scope="module")
def sample_run():
    """One pass over the 24 labelled sample images (0.5 s each + 0.2 s hand-over: 504 frames),
    as fast as they are scored. A short time constant (20 ms) keeps the smoothed score close to
    each frame's, so that it crosses the threshold both ways within this short run."""
    return run_sweep(DEFAULT_MODEL, SAMPLE_DIR, dwell_s=0.5, transition_s=0.2, pace="none",
                     smoothing={"tau_s": 0.02}, timeout_s=30.0)


def test_state_follows_the_manifest_threshold_on_labelled_sweep_frames(sample_run):
    thr = read_manifest(DEFAULT_MODEL).operating_threshold
    assert thr is not None, "the shipped model must carry its validated operating threshold"
    band = config_from_dict({}).smoothing.band
    r = sample_run
    assert r["frames_out"] == r["frames_expected"] == len(r["scores"]) and r["dropped_publish"] == 0
    # the operating point in use, as the status messages carry it
    assert r["status"]["operating_threshold"] == thr and r["status"]["on_threshold"] == thr
    off = thr * (1 - band)  # the band is a fraction of the threshold
    assert abs(r["status"]["off_threshold"] - off) < 1e-12
    assert r["status"]["threshold_source"] == "manifest"
    scores = r["scores"]
    assert {s["label"] for s in scores} == {"benign", "malignant"}
    lesion = [s for s in scores if s["state"] in ("clear", "suspicious")]
    assert {s["state"] for s in lesion} == {"clear", "suspicious"}, "the run never crossed the threshold"
    for s in lesion:
        if s["malignancy"] >= thr:
            assert s["state"] == "suspicious", s
        elif s["malignancy"] < off:
            assert s["state"] == "clear", s
    m = analyse(scores, thr, off, thr)
    assert m["state_matches_state_machine"] == 1.0  # inside the band too: the hysteresis as documented
    # the published malignancy is the smoothed 3-way p(malignant) (first frame of a track = its own p)
    first = next(s for s in scores if s["state"] in ("clear", "suspicious") and s["probs"] is not None)
    assert abs(first["malignancy"] - first["probs"][2]) < 1e-9


def test_config_override_is_logged_and_shown_in_status(caplog):
    thr = read_manifest(DEFAULT_MODEL).operating_threshold
    with caplog.at_level(logging.WARNING, logger="streamcad.smoothing"):
        r = run_sweep(DEFAULT_MODEL, SAMPLE_DIR, dwell_s=0.2, transition_s=0.0, pace="none",
                      smoothing={"on_threshold": 0.9, "off_threshold": 0.8}, timeout_s=30.0)
    assert r["status"] == {"operating_threshold": thr, "on_threshold": 0.9, "off_threshold": 0.8,
                           "threshold_source": "config", "model": "default.onnx"}
    assert any("smoothing.on_threshold=0.9 overrides the validated operating threshold" in rec.message
               for rec in caplog.records)
    m = analyse(r["scores"], 0.9, 0.8, thr)
    assert m["state_matches_state_machine"] == 1.0  # the state machine ran on the override, not on thr


@pytest.fixture()
def bare_model(tmp_path):
    p = make_contract_onnx(tmp_path / "nothr.onnx", size=64)
    write_manifest(p, class_names=["normal", "benign", "malignant"])  # operating_threshold: null
    return p


def _config(model, endpoint, **smoothing):
    return config_from_dict({
        "source": {"uri": "sweep:", "pace": "none"},
        "model": {"path": str(model)},
        "smoothing": smoothing,
        "publish": {"endpoint": endpoint, "stream": "t"},
        "frames": 5,
        "dashboard": False,
    })


def test_a_model_without_threshold_needs_an_explicit_one(bare_model):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError, match=r"^smoothing\.on_threshold: nothr\.onnx has no operating_threshold"):
        Pipeline(_config(bare_model, endpoint))
    # refused before the socket was bound: the same endpoint is free for the next pipeline
    cfg = _config(bare_model, endpoint, on_threshold=0.5)
    src = SweepSource(SAMPLE_DIR, pace="none", loop=True)
    with Pipeline(cfg, source=src) as pipe, Subscriber(cfg.publish.endpoint, heartbeat_s=1.0) as sub:
        assert pipe.wait_subscribers(1, 20.0)
        pipe.run()
        status = None
        end = time.monotonic() + 5.0
        while status is None and time.monotonic() < end:
            m = sub.recv(timeout=0.5)
            if isinstance(m, Status):
                status = m
    assert status is not None
    assert (status.operating_threshold, status.on_threshold, status.off_threshold, status.threshold_source) == (
        None, 0.5, pytest.approx(0.5 * (1 - cfg.smoothing.band)), "config")


def _dashboard_text(pipe) -> str:
    from rich.console import Console

    from streamcad.dashboard import render

    console = Console(record=True, width=240, color_system=None)
    console.print(render(pipe))
    return console.export_text()


@pytest.mark.parametrize("override", [False, True])
def test_dashboard_shows_state_flags_and_the_operating_point(override):
    from streamcad.dashboard import FLAG_TEXT, STATE_TEXT

    thr = read_manifest(DEFAULT_MODEL).operating_threshold
    smoothing = {"on_threshold": 0.7} if override else {}
    cfg = _config(DEFAULT_MODEL, f"tcp://127.0.0.1:{free_port()}", **smoothing)
    with Pipeline(cfg, source=SweepSource(SAMPLE_DIR, pace="none", loop=True)) as pipe:
        pipe.run()
        text = _dashboard_text(pipe)
        state = pipe.stats.last_state
        pipe.stats.last_flags = frozenset({"doppler"})  # what a flagged frame leaves for the dashboard
        flagged = _dashboard_text(pipe)
    band = config_from_dict({}).smoothing.band
    if override:
        assert f">= 0.700 (set in config, NOT the model's validated {thr:.3f})" in text
        assert f"back to clear below {0.7 * (1 - band):.3f}" in text
    else:
        assert f">= {thr:.3f} (the model's validated operating threshold); back to clear below {thr * (1 - band):.3f}" in text
    assert f"state {state}" in text and STATE_TEXT[state] in text
    assert f"flag doppler: {FLAG_TEXT['doppler']}" in flagged and "flag doppler" not in text


def test_every_state_and_flag_has_its_sentence():
    from streamcad.dashboard import FLAG_TEXT, STATE_TEXT
    from streamcad.messages import FLAGS, SCORE_STATES

    assert set(STATE_TEXT) == set(SCORE_STATES)
    assert set(FLAGS) <= set(FLAG_TEXT), sorted(set(FLAGS) - set(FLAG_TEXT))
    protocol = (DEFAULT_MODEL.parents[2] / "docs" / "PROTOCOL.md").read_text()
    for text in (*STATE_TEXT.values(), *FLAG_TEXT.values()):  # the docs give UI authors the same words
        assert f'"{text}"' in protocol, text


def test_a_bare_onnx_without_manifest_is_refused_by_name(tmp_path):
    p = make_contract_onnx(tmp_path / "bare.onnx", size=64)  # no bare.json beside it
    cfg = config_from_dict({"model": {"path": str(p), "allow_unverified": True},
                            "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}"}, "dashboard": False})
    with pytest.raises(ConfigError, match=r"^smoothing\.on_threshold: bare\.onnx \(no manifest\) has no operating_threshold"):
        Pipeline(cfg)


def _score(label, state, m=None, p=None, flags=()):
    return {"frame_index": 0, "label": label, "state": state, "flags": list(flags), "malignancy": m,
            "probs": None if p is None else [0.0, 1.0 - p, p]}


def test_analyse_counts_on_known_frames():
    """Six frames, every number worked out by hand (T = 0.5, off = 0.4)."""
    scores = [
        _score("malignant", "suspicious", 0.6, 0.7),
        _score("malignant", "suspicious", 0.45, 0.3),  # in the band, held
        _score("malignant", "flagged", 0.45, None, ["frozen"]),  # no p: neither positive nor scored
        _score("benign", "clear", 0.3, 0.55),  # this frame's p is above T, the smoothed one is not
        _score("benign", "no_lesion"),
        _score("benign", "flagged", None, None, ["no_signal"]),
    ]
    for i, s in enumerate(scores):
        s["frame_index"] = i
    m = analyse(scores, 0.5, 0.4, 0.5)
    assert m["state_matches_state_machine"] == 1.0
    assert m["state_vs_smoothed_ge_threshold"] == 2 / 3  # the in-band frame differs from m >= T
    assert m["lesion_frames_in_band"] == 1
    assert m["state_vs_frame_ge_threshold"] == 1 / 3  # scored: 0 agrees; 1 (0.3, suspicious), 3 (0.55, clear) do not
    a = m["all_frames"]
    assert (a["suspicious_sensitivity"], a["suspicious_specificity"]) == (2 / 3, 3 / 3)
    assert (a["frame_p_ge_threshold_sensitivity"], a["frame_p_ge_threshold_specificity"]) == (1 / 3, 2 / 3)
    sc = m["scored_frames"]
    assert (sc["n_malignant"], sc["n_benign"]) == (2, 1)
    assert m["flags_by_label"]["malignant"] == {"frozen": 1, "no_signal": 0}
    # with a wrong on threshold the replayed state machine disagrees with what was published
    assert analyse(scores, 0.65, 0.4, 0.5)["state_matches_state_machine"] < 1.0
