"""The out-of-domain gate and the content flags, on real parts.

- a real tiny model (random init) exported to ONNX has the 'embedding' output, ONNX Runtime
  returns it, and it equals PyTorch's streamcad.nets.forward_gate;
- the gate's score equals a slow full-covariance Mahalanobis reference;
- manifest round trip; a gate of the wrong D and a gate on a graph without 'embedding' are refused;
- the shipped model's gate (when its manifest has one) flags real non-breast recordings and
  passes held-out breast images in the simulated scanner screen (../shared/data; skips without);
- through the real pipeline (file source, ONNX Runtime, ZeroMQ): exactly the frames whose
  published ood_score is above the threshold are flagged 'out_of_domain', carry no probabilities
  and leave the malignancy track untouched; the status says whether the gate is active;
- the doppler flag on BUSI's real colour-Doppler images, not on its yellow calipers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamcad.errors import ArtifactError
from streamcad.gate_ood import OodGate
from streamcad.manifest import load_model, read_manifest, write_manifest
from streamcad.quality import QualityChecker, doppler_fraction
from streamcad.sources.base import colour_flow_mask, to_gray

REPO = Path(__file__).resolve().parents[1]
S = 64


def make_config(path: Path, source: str, frames: int):
    import socket

    from streamcad.config import config_from_dict

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return config_from_dict({
        "source": {"uri": source, "pace": "none"},
        "model": {"path": str(path), "threads": 1},
        "publish": {"endpoint": f"tcp://127.0.0.1:{port}", "stream": "t"},
        "dashboard": False,
        "frames": frames,
    })


def _rewrite_ood(path: Path, ood: dict) -> None:
    d = read_manifest(path).to_fields()
    d["ood"] = ood
    write_manifest(path, **d)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random-init tiny exported by the real exporter (parity on the repo's sample images)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from test_export import _checkpoint

    from streamcad.engines.export import export_checkpoint
    from streamcad.engines.gate import sample_images_dir

    if sample_images_dir() is None:
        pytest.skip("repository sample images absent")
    d = tmp_path_factory.mktemp("gate")
    ckpt = _checkpoint(d / "tiny.pt")
    export_checkpoint(ckpt, d / "tiny.onnx", images_dir=sample_images_dir(), n_frames=24)
    return ckpt, d / "tiny.onnx"


def test_exported_embedding_through_ort_equals_torch(exported):
    import torch

    from streamcad.engines.export import load_classifier
    from streamcad.nets import forward_gate

    ckpt, path = exported
    model, _, spec, _ = load_classifier(ckpt)
    D = sum(f["num_chs"] for f in model.feature_info) + model.embed_dim  # 16+32+64+128 + 96
    assert read_manifest(path).outputs == ["logits", "saliency", "embedding"]
    x = np.random.default_rng(0).uniform(0, 1, (5, 1, S, S)).astype(np.float32)
    with load_model(path) as lm:
        assert lm.backend.embedding_dim == D == 336
        assert lm.gate is None  # exported, not calibrated yet
        out = lm.backend.infer(x)
    with torch.no_grad():
        _, _, emb = forward_gate(model, torch.from_numpy(x))
    assert out["embedding"].shape == (5, D)
    np.testing.assert_allclose(out["embedding"], emb.numpy(), rtol=1e-4, atol=1e-5)
    # the last E columns are the classifier's embedding: the head applied to them gives the logits
    with torch.no_grad():
        logits = model.forward_head(torch.from_numpy(out["embedding"][:, -model.embed_dim :])).numpy()
    np.testing.assert_allclose(out["logits"], logits / 2.0, rtol=1e-4, atol=1e-4)  # T = 2 baked in


def test_score_equals_full_covariance_mahalanobis():
    from streamcad.train.ood import fit_gate

    rng = np.random.default_rng(1)
    D, n = 12, 600
    mix = rng.normal(0, 1, (D, D))
    labels = rng.integers(0, 3, n)
    emb = rng.normal(0, 1, (n, D)) @ mix * rng.uniform(0.5, 3, D) + 5 * np.eye(3, D)[labels] + 7
    gate = fit_gate(emb, labels, n_axes=4)
    # slow reference: the PPCA covariance written out in full, solved per class mean
    U, lam, r = gate.axes, gate.variances, gate.residual
    C = U.T @ np.diag(lam) @ U + r * (np.eye(D) - U.T @ U)
    probe = rng.normal(0, 3, (20, D)) + 7
    z = (probe - gate.center) / gate.scale
    ref = np.min([[np.dot(v - mu, np.linalg.solve(C, v - mu)) for mu in gate.class_means] for v in z], axis=1) / D
    np.testing.assert_allclose(gate.score(probe), ref, rtol=1e-9)
    # far points score higher than training points
    assert np.median(gate.score(emb)) < np.median(gate.score(emb + 10 * gate.scale))


def test_manifest_round_trip_and_refusals(exported, tmp_path):
    from helpers_onnx import make_contract_onnx

    from streamcad.train.ood import fit_gate

    _, path = exported
    rng = np.random.default_rng(2)
    gate = fit_gate(rng.normal(0, 1, (200, 336)), rng.integers(0, 3, 200), n_axes=8)
    gate = OodGate(gate.center, gate.scale, gate.class_means, gate.axes, gate.variances, gate.residual, 1.25,
                   {"chosen": "test"})
    _rewrite_ood(path, gate.to_dict())
    with load_model(path) as lm:
        assert lm.gate is not None and lm.gate.threshold == 1.25 and lm.gate.dim == 336
        probe = rng.normal(0, 1, (4, 336))
        np.testing.assert_allclose(lm.gate.score(probe), gate.score(probe), rtol=1e-5)
    wrong = fit_gate(rng.normal(0, 1, (200, 335)), rng.integers(0, 3, 200), n_axes=8)
    _rewrite_ood(path, {**wrong.to_dict(), "threshold": 1.0})
    with pytest.raises(ArtifactError) as err:
        load_model(path)
    msg = str(err.value)
    assert "D=335" in msg and "D=336" in msg and "\n" not in msg
    # a graph without the 'embedding' output but with a gate in its manifest
    bare = make_contract_onnx(tmp_path / "bare.onnx", size=S)
    write_manifest(bare, ood=gate.to_dict())
    with pytest.raises(ArtifactError, match="no 'embedding' output"):
        load_model(bare)
    # a malformed gate is refused with its field named
    bad = gate.to_dict()
    bad["params"]["variances"] = [-1.0] * len(bad["params"]["variances"])
    _rewrite_ood(path, bad)
    with pytest.raises(ArtifactError, match="variances"):
        load_model(path)
    _rewrite_ood(path, {})
    with load_model(path) as lm:
        assert lm.gate is None


def test_shipped_gate_flags_non_breast_and_passes_breast(data_root):
    """The committed model's own gate: a cardiac recording (GE-style screen) is flagged, held-out
    breast images inside the simulated scanner screen and as they are (the whole image as the
    sector, as a scanner exports it) mostly are not. Skips until the shipped model carries a gate
    (`streamcad train gate engines/models/default.onnx`)."""
    from streamcad.backends import load_backend
    from streamcad.train.ood import (
        breast_frames,
        breast_items,
        embed_stream,
        image_features,
        video_frames,
    )

    model = REPO / "engines" / "models" / "default.onnx"
    m = read_manifest(model)
    if not m.ood:
        pytest.skip("the shipped model has no out-of-domain gate in its manifest yet")
    gate = OodGate.from_dict(m.ood)
    test_fold = int(m.ood["fitted_on"]["test_fold_excluded"])
    with load_backend("onnxruntime", model, intra_op_threads=1) as be:
        items = breast_items(("busbra",), [test_fold], data_root)[::4]  # ~70 held-out images
        breast = embed_stream(be, m.spec(), breast_frames(items, "linear", seed=5))
        images = image_features(be, m.spec(), items + breast_items(("busi",), [test_fold], data_root)[::4])
        clip = embed_stream(be, m.spec(), video_frames(data_root / "video" / "echo-a4c-ge-vivid-inverted.mp4", limit=60))
    assert np.mean(gate.out_of_domain(breast.embeddings)) <= 0.10
    assert np.mean(gate.out_of_domain(images.embeddings)) <= 0.10  # a gate fitted on rendered frames only: ~0.75
    assert np.mean(gate.out_of_domain(clip.embeddings)) >= 0.90


def test_pipeline_flags_out_of_domain_frames_without_update(exported, tmp_path, video_dir):
    from streamcad.client import Subscriber
    from streamcad.messages import Score, Status
    from streamcad.pipeline import Pipeline
    from streamcad.train.ood import embed_stream, fit_gate, video_frames

    _, path = exported
    clip = video_dir / "lung-convex-noui-neuruppin.mp4"
    with load_model(path) as lm:
        feats = embed_stream(lm.backend, lm.spec, video_frames(clip, limit=40))
    gate = fit_gate(feats.embeddings, np.zeros(len(feats)), n_axes=8)
    thr = float(np.median(gate.score(feats.embeddings)))  # about half of this clip's frames flagged
    _rewrite_ood(path, OodGate(gate.center, gate.scale, gate.class_means, gate.axes, gate.variances,
                               gate.residual, thr, {}).to_dict())
    cfg = make_config(path, f"file:{clip}", frames=40)
    scores, statuses = [], []
    with Pipeline(cfg) as pipe, Subscriber(cfg.publish.endpoint, heartbeat_s=1.0) as sub:
        assert pipe.wait_subscribers(1, 20.0)
        pipe.run_sequential()  # every frame in order (pace 'none' on a file is lossless)
        end = time.monotonic() + 5
        while len(scores) < 40 and time.monotonic() < end:
            msg = sub.recv(timeout=0.5)
            if isinstance(msg, Score):
                scores.append(msg)
            elif isinstance(msg, Status):
                statuses.append(msg)
    _rewrite_ood(path, {})
    assert len(scores) == 40
    assert statuses and statuses[-1].ood_gate == "active"
    scored = [s for s in scores if s.ood_score is not None]
    assert len(scored) >= 30  # the gate scores every frame the quality checks let through
    flagged = [s for s in scored if s.ood_score > thr]
    passed = [s for s in scored if s.ood_score <= thr]
    assert flagged and passed
    for s in flagged:
        assert "out_of_domain" in s.flags and s.probs is None and s.state == "flagged"
    for s in passed:
        assert "out_of_domain" not in s.flags and s.probs is not None
    # a flagged frame repeats the malignancy of the frame before it: no update
    for prev, cur in zip(scores, scores[1:], strict=False):
        if "out_of_domain" in cur.flags:
            assert cur.malignancy == prev.malignancy


def test_status_says_gate_absent(exported, tmp_path):
    from streamcad.client import Subscriber
    from streamcad.messages import Status
    from streamcad.pipeline import Pipeline

    _, path = exported
    _rewrite_ood(path, {})
    cfg = make_config(path, "sweep:", frames=3)
    with Pipeline(cfg) as pipe, Subscriber(cfg.publish.endpoint, heartbeat_s=1.0) as sub:
        assert pipe.wait_subscribers(1, 20.0)
        pipe.run_sequential()
        st = None
        end = time.monotonic() + 5
        while st is None and time.monotonic() < end:
            msg = sub.recv(timeout=0.5)
            if isinstance(msg, Status):
                st = msg
    assert st is not None and st.ood_gate == "absent"


def _busi_colour(busi_dir: Path, name: str) -> np.ndarray:
    img = cv2.imread(str(busi_dir / name.split(" ")[0] / f"{name}.png"), cv2.IMREAD_COLOR)
    assert img is not None, name
    return img


@pytest.mark.parametrize(("name", "doppler"), [
    ("benign (255)", True),  # colour-Doppler box with flow
    ("benign (234)", True),  # a blue/red flow blob
    ("benign (6)", False),  # yellow calipers only
    ("benign (323)", False),  # yellow calipers only
    ("benign (1)", False),  # plain B-mode (stored gray)
])
def test_doppler_flag_on_real_busi_images(busi_dir, name, doppler):
    img = _busi_colour(busi_dir, name)
    gray, chroma = to_gray(img)
    colour = colour_flow_mask(img) if chroma > 0 else None
    roi = (0, 0, gray.shape[1], gray.shape[0])  # BUSI images are the sector already
    frac = doppler_fraction(colour, gray.shape, roi)
    flags = QualityChecker().check(gray, chroma, False, frac)
    assert ("doppler" in flags) == doppler, (name, frac)


def test_doppler_not_raised_by_green_overlay_recording(video_dir):
    sectors = {c["file"]: c for c in json.loads((video_dir / "sectors.json").read_text())}
    clip = "ge-venue-linear-green-overlay.mp4"
    cap = cv2.VideoCapture(str(video_dir / clip))
    ok, frame = cap.read()
    cap.release()
    assert ok
    x, y, w, h = sectors[clip]["sector_box"]
    mask = colour_flow_mask(frame)
    assert mask is not None  # a colour frame
    assert doppler_fraction(mask, frame.shape[:2], (x, y, w, h)) <= QualityChecker().config.doppler_min_fraction


def test_torch_backend_embedding_equals_onnxruntime(exported):
    from streamcad.backends import load_backend

    ckpt, path = exported
    x = np.random.default_rng(3).uniform(0, 1, (3, 1, S, S)).astype(np.float32)
    with load_backend("torch", ckpt, device="cpu") as tb, load_backend("onnxruntime", path) as ob:
        assert tb.embedding_dim == ob.embedding_dim == 336
        np.testing.assert_allclose(tb.infer(x)["embedding"], ob.infer(x)["embedding"], rtol=1e-4, atol=1e-5)


def test_benchmark_auc_known_values():
    from streamcad.benchmarks.ood_gate import auc

    assert auc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0  # every non-breast frame above every breast one
    assert auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5  # ties count one half
    assert auc(np.array([0.0, 2.0]), np.array([1.0])) == 0.5


def test_pipeline_flags_doppler_frames_of_a_real_doppler_image(exported, tmp_path, busi_dir):
    """A video of BUSI's colour-Doppler image through the real pipeline: every frame 'doppler',
    no probabilities; the same video of a caliper-only colour image: no 'doppler'."""
    from streamcad.client import Subscriber
    from streamcad.messages import Score
    from streamcad.pipeline import Pipeline

    _, path = exported
    _rewrite_ood(path, {})
    rng = np.random.default_rng(4)
    results = {}
    for name in ("benign (255)", "benign (6)"):
        img = _busi_colour(busi_dir, name)
        video = tmp_path / f"{name.replace(' ', '_')}.avi"
        vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (img.shape[1], img.shape[0]))
        for _ in range(8):  # fewer than the frozen check's 10 frames; a little noise on each
            vw.write(np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8))
        vw.release()
        cfg = make_config(path, f"file:{video}", frames=8)
        scores = []
        with Pipeline(cfg) as pipe, Subscriber(cfg.publish.endpoint, heartbeat_s=1.0) as sub:
            assert pipe.wait_subscribers(1, 20.0)
            pipe.run_sequential()
            end = time.monotonic() + 5
            while len(scores) < 8 and time.monotonic() < end:
                msg = sub.recv(timeout=0.5)
                if isinstance(msg, Score):
                    scores.append(msg)
        results[name] = scores
    assert len(results["benign (255)"]) == 8 and len(results["benign (6)"]) == 8
    for s in results["benign (255)"]:
        assert "doppler" in s.flags and s.probs is None
    for s in results["benign (6)"]:
        assert "doppler" not in s.flags
