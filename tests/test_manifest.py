"""Manifests: a good file loads; a tampered byte, a truncated file, a wrong schema version, an
unsupported opset, a missing manifest and a contract mismatch are each refused by name."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from helpers_onnx import make_contract_onnx, reference_outputs

from streamcad.errors import ArtifactError
from streamcad.manifest import (
    SCHEMA_VERSION,
    LoadedModel,
    load_model,
    manifest_path,
    read_manifest,
    sha256_file,
    verify_artifact,
    write_manifest,
)
from streamcad.preprocess import PreprocessSpec


@pytest.fixture()
def model(tmp_path):
    p = make_contract_onnx(tmp_path / "net.onnx", size=48, saliency_hw=(6, 6), seed=1)
    spec = PreprocessSpec(size=48, mean=0.2, std=0.25)
    write_manifest(p, preprocess=spec, operating_threshold=0.35, metrics={"auc": {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9}})
    return p


def test_good_file_loads(model):
    m = read_manifest(model)
    assert (m.file, m.format, m.format_version, m.schema_version) == ("net.onnx", "onnx", 17, SCHEMA_VERSION)
    assert m.sha256 == sha256_file(model) and m.size_bytes == model.stat().st_size
    assert m.input == {"name": "input", "shape": ["N", 1, 48, 48], "dtype": "float32"}
    assert m.versions["onnxruntime"] and m.created.endswith("+00:00")
    with load_model(model) as lm:
        assert isinstance(lm, LoadedModel)
        assert lm.spec == PreprocessSpec(size=48, mean=0.2, std=0.25)
        assert lm.class_names == ("normal", "benign", "malignant") and lm.threshold == 0.35
        assert lm.sha256 == m.sha256 and lm.backend.input_size == 48
        x = np.random.default_rng(0).normal(size=(2, 1, 48, 48)).astype(np.float32)
        np.testing.assert_allclose(lm.backend.infer(x)["logits"], reference_outputs(model, x)["logits"], rtol=1e-4, atol=1e-5)


def test_tampered_byte_refused(model):
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size
    model.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 mismatch.*tampered"):
        load_model(model)


def test_truncated_file_refused(model):
    model.write_bytes(model.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="size mismatch.*truncated"):
        load_model(model)


def test_missing_manifest_refused_unless_allowed(model, caplog):
    manifest_path(model).unlink()
    with pytest.raises(ArtifactError, match="missing manifest.*net.json.*unknown file"):
        load_model(model)
    with caplog.at_level(logging.WARNING, logger="streamcad.manifest"):
        with load_model(model, allow_unverified=True) as lm:
            assert lm.manifest is None and lm.spec == PreprocessSpec(size=48) and lm.threshold is None
            assert lm.sha256 == sha256_file(model)
    assert any("WITHOUT a manifest" in r.getMessage() for r in caplog.records)


def _edit(model, **changes):
    mp = manifest_path(model)
    d = json.loads(mp.read_text())
    d.update(changes)
    mp.write_text(json.dumps(d))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"schema_version": SCHEMA_VERSION + 1}, "unsupported manifest schema version 2"),
        ({"schema_version": None}, "unsupported manifest schema version None"),
        ({"format_version": 99}, "unsupported format version: ONNX opset 99"),
        ({"format": "tensorrt"}, "manifest format 'tensorrt' but the file suffix means 'onnx'"),
        ({"file": "other.onnx"}, "manifest names file 'other.onnx', not 'net.onnx'"),
        ({"colour": "red"}, r"unknown manifest keys \['colour'\]"),
        ({"class_names": ["benign", "malignant"]}, "class_names"),
        ({"input": {"name": "input", "shape": ["N", 1, 64, 64], "dtype": "float32"}}, "input contract mismatch: the model takes S=48"),
        ({"preprocess": {"size": 64, "mean": 0.0, "std": 1.0, "resize": "letterbox"}}, "preprocessing size 64 != model input S 48"),
        ({"preprocess": {"size": 48, "mean": 0.0, "std": 1.0, "resize": "stretch"}}, "bad preprocess"),
    ],
)
def test_bad_manifest_refused(model, changes, message):
    _edit(model, **changes)
    with pytest.raises(ArtifactError, match=message):
        load_model(model)


def test_unreadable_manifest_and_verify_direct(model):
    m = read_manifest(model)
    assert verify_artifact(model, m) == m.sha256
    manifest_path(model).write_text("{not json")
    with pytest.raises(ArtifactError, match="not readable JSON"):
        read_manifest(model)


def test_write_manifest_rejects_unknown_fields_and_contract_breakers(tmp_path):
    from helpers_onnx import make_bad_onnx

    p = make_contract_onnx(tmp_path / "a.onnx", size=32, saliency_hw=(4, 4))
    with pytest.raises(ArtifactError, match=r"unknown or computed fields \['sha256', 'wrong'\]"):
        write_manifest(p, wrong=1, sha256="0" * 64)
    with pytest.raises(ArtifactError, match="preprocess size 64 != model input S 32"):
        write_manifest(p, preprocess=PreprocessSpec(size=64))
    bad = make_bad_onnx(tmp_path / "b.onnx", "four_classes")
    with pytest.raises(ArtifactError, match=r"expected \(N, 3\)"):
        write_manifest(bad)
    eng = tmp_path / "e.engine"
    eng.write_bytes(b"plan")
    m = write_manifest(eng, input={"name": "input", "shape": [1, 1, 32, 32], "dtype": "float32"}, precision="fp16",
                       tensorrt_version="10.3.0", gpu_name="NVIDIA H100", compute_capability="9.0",
                       gate={"passed": True, "max_abs_prob_diff": 0.001}, format_version="10.3.0")
    back = read_manifest(eng)
    assert back == m and back.format == "tensorrt" and back.precision == "fp16" and back.gate["passed"] is True
