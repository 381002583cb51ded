"""`streamcad export`: a real tiny model (random init, S=64) exported to ONNX, checked against
PyTorch on real images; broken exports are refused with the numbers."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from streamcad.cli import main as cli_main  # noqa: E402
from streamcad.engines.export import (  # noqa: E402
    PARITY_TOLERANCE,
    check_parity,
    export_module,
    load_classifier,
)
from streamcad.engines.gate import load_gate_frames, sample_images_dir, softmax  # noqa: E402
from streamcad.errors import ArtifactError, ConfigError  # noqa: E402
from streamcad.manifest import load_model, read_manifest, verify_artifact  # noqa: E402
from streamcad.preprocess import PreprocessSpec  # noqa: E402

S = 64
T = 2.0  # a temperature far from 1, so a forgotten division shows


def _images_dir() -> Path:
    sample = sample_images_dir()
    if sample is None:
        pytest.skip("repository sample images (streamcad/data/sample/images) absent")
    return sample


def _checkpoint(path: Path, kind: str = "classifier", seed: int = 0) -> Path:
    from streamcad.train.model import build_model

    torch.manual_seed(seed)
    model = build_model("tiny")
    torch.save(
        {
            "kind": kind,
            "model_config": model.model_config,
            "model": model.state_dict(),
            "preprocess": PreprocessSpec(size=S).to_dict(),
            "epoch": 7,
            "optimizer": None,
            "metrics": {"auc": 0.81},
            "train_config": {"dataset": "busbra", "fold": 0, "split_sha256": "ab" * 32},
            "temperature": T,
            "threshold": 0.4,  # where train.finetune and train.cv write the operating threshold
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    ckpt = _checkpoint(d / "tiny.pt")
    out = d / "tiny.onnx"
    rc = cli_main(["export", str(ckpt), "--out", str(out), "--parity-images", str(_images_dir()),
                   "--parity-frames", "24"])
    assert rc == 0
    return ckpt, out


def test_onnx_checks_clean_with_the_io_contract(exported):
    _, out = exported
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = proto.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "input"
    assert dims[0].dim_param == "N"  # dynamic batch
    assert [d.dim_value for d in dims[1:]] == [1, S, S]
    assert [o.name for o in proto.graph.output] == ["logits", "saliency", "embedding"]
    emb_dims = proto.graph.output[2].type.tensor_type.shape.dim
    assert emb_dims[0].dim_param == "N" and emb_dims[1].dim_value == 16 + 32 + 64 + 128 + 96  # stage GAPs + CLS
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["class_names"] == "normal,benign,malignant" and float(meta["temperature"]) == T


def test_onnx_runtime_matches_torch_on_real_frames(exported):
    ckpt, out = exported
    model, _, spec, temperature = load_classifier(ckpt)
    frames = load_gate_frames(spec, n=12, images_dir=_images_dir())
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 5, 12):  # dynamic batch
        x = frames.batch[:n]
        logits_o, sal_o = sess.run(["logits", "saliency"], {"input": x})
        with torch.no_grad():
            raw, sal_t = model(torch.from_numpy(x))
        raw = raw.numpy()
        assert logits_o.shape == (n, 3) and sal_o.shape == tuple(sal_t.shape)
        np.testing.assert_allclose(logits_o, raw / temperature, atol=1e-5)  # temperature baked in
        assert np.abs(logits_o - raw).max() > 1e-3  # ... and really applied
        p_o, p_t = softmax(logits_o), softmax(raw / temperature)
        assert np.abs(p_o - p_t).max() <= PARITY_TOLERANCE
        np.testing.assert_array_equal(p_o.argmax(1), p_t.argmax(1))
        assert sal_o.min() >= 0


def test_manifest_records_sha256_and_provenance(exported):
    ckpt, out = exported
    m = read_manifest(out)
    assert m.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert m.size_bytes == out.stat().st_size
    assert verify_artifact(out, m) == m.sha256
    assert m.input == {"name": "input", "shape": ["N", 1, S, S], "dtype": "float32"}
    assert m.preprocess == PreprocessSpec(size=S).to_dict()
    assert m.temperature == T and m.precision == "fp32" and m.format == "onnx"
    assert m.source == {"file": "tiny.pt", "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}
    assert m.metrics["auc"] == 0.81 and m.operating_threshold == 0.4
    assert m.training_data["dataset"] == "busbra" and m.training_data["epoch"] == 7
    parity = m.notes["parity"]
    assert parity["passed"] and parity["n"] == 24 and parity["max_prob_diff"] <= PARITY_TOLERANCE
    assert parity["frames"].startswith("dir:")
    with load_model(out) as loaded:  # the runtime accepts what export wrote
        assert loaded.backend.input_size == S and loaded.sha256 == m.sha256


def test_perturbed_weights_fail_parity_with_numbers(exported, tmp_path):
    ckpt, out = exported
    model, _, spec, temperature = load_classifier(ckpt)
    from streamcad.engines.export import _temperature_wrapper

    module = _temperature_wrapper(model, temperature)
    proto = onnx.load(str(out))
    # the classifier weight: the only initializer with a dimension of 3 (the classes)
    head = [t for t in proto.graph.initializer if len(t.dims) == 2 and 3 in t.dims]
    assert head, "no (3, D) classifier weight found in the exported graph"
    w = onnx.numpy_helper.to_array(head[0]).copy()
    w += np.random.default_rng(0).normal(0, 1.0, w.shape).astype(np.float32)
    head[0].CopyFrom(onnx.numpy_helper.from_array(w, head[0].name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    frames = load_gate_frames(spec, n=24, images_dir=_images_dir())
    res = check_parity(module, broken, frames.batch, frames=frames.source)
    assert not res.passed
    assert res.max_prob_diff > PARITY_TOLERANCE
    assert "FAIL" in res.summary() and f"{res.max_prob_diff:.3e}" in res.summary()
    good = check_parity(module, out, frames.batch)
    assert good.passed and good.argmax_mismatches == 0


class _TraceFrozenBranch(torch.nn.Module):
    """Eager swaps the class order for batches of more than 2; tracing sees a batch of 2 and
    freezes the other branch: a difference the exporter cannot carry into the graph."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        logits, sal = self.net(x)
        if x.shape[0] > 2:
            logits = logits.flip(1) * 5.0
        return logits, sal


def test_nonexportable_difference_fails_and_leaves_no_file(exported, tmp_path):
    ckpt, _ = exported
    model, _, spec, _ = load_classifier(ckpt)
    frames = load_gate_frames(spec, n=24, images_dir=_images_dir())
    out = tmp_path / "frozen.onnx"
    with pytest.raises(ArtifactError) as err:
        export_module(_TraceFrozenBranch(model), frames.batch, out, frames=frames.source)
    msg = str(err.value)
    assert "parity" in msg and "max |p_onnx - p_torch|" in msg and "argmax mismatches" in msg
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary ONNX is removed too


def test_cli_refuses_ssl_checkpoint_with_one_line(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "ssl.pt", kind="ssl")
    rc = cli_main(["export", str(ckpt), "--out", str(tmp_path / "x.onnx"), "--parity-images", str(_images_dir())])
    assert rc == 1
    err = capsys.readouterr().err
    assert "kind 'ssl'" in err and "expected 'classifier'" in err
    assert not (tmp_path / "x.onnx").exists()


def test_low_opset_and_bad_out_refused(tmp_path):
    from streamcad.engines.export import export_checkpoint

    ckpt = _checkpoint(tmp_path / "c.pt")
    with pytest.raises(ConfigError, match=">= 17"):
        export_checkpoint(ckpt, tmp_path / "m.onnx", opset=13, images_dir=_images_dir())
    with pytest.raises(ConfigError, match="NAME.onnx"):
        export_checkpoint(ckpt, tmp_path / "m.bin", images_dir=_images_dir())


def test_copied_onnx_without_manifest_is_refused(exported, tmp_path):
    _, out = exported
    copy = tmp_path / "copy.onnx"
    shutil.copy(out, copy)
    with pytest.raises(ArtifactError, match="missing manifest"):
        load_model(copy)
