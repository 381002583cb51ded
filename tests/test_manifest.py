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
    contract_digest,
    load_model,
    manifest_path,
    read_manifest,
    sha256_file,
    upgrade_manifest,
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


def _edit(model, reseal=False, **changes):
    """Edit manifest fields; reseal=True also recomputes contract_sha256 (a consistent manifest
    that is wrong about its model, as an exporter bug would write it)."""
    mp = manifest_path(model)
    d = json.loads(mp.read_text())
    d.update(changes)
    if reseal:
        d["contract_sha256"] = contract_digest(d)
    mp.write_text(json.dumps(d))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"schema_version": SCHEMA_VERSION + 1}, f"unsupported manifest schema version {SCHEMA_VERSION + 1}"),
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
    _edit(model, reseal=True, **changes)
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


# --- integrity of the fields that change scores (issue: editing mean/std moved p(malignant)) ---

@pytest.mark.parametrize(
    "changes",
    [
        {"preprocess": {"size": 48, "mean": 0.5, "std": 0.25, "resize": "letterbox"}},  # mean edited
        {"preprocess": {"size": 48, "mean": 0.2, "std": 0.5, "resize": "letterbox"}},  # std edited
        {"operating_threshold": 0.9},
        {"temperature": 2.0},
        {"outputs": ["logits"]},
        {"ood": {"kind": "anything"}},  # a gate added under its own key is covered too
    ],
)
def test_edited_scoring_field_refused(model, changes):
    with load_model(model):
        pass  # loads before the edit
    _edit(model, **changes)
    with pytest.raises(ArtifactError, match="contract_sha256 mismatch.*re-export"):
        load_model(model)


def test_descriptive_fields_stay_editable(model):
    _edit(model, metrics={"auc": {"value": 0.1}}, notes={"checked by": "hospital"})
    with load_model(model) as lm:
        assert lm.threshold == 0.35


@pytest.mark.parametrize(
    "text, message",
    [
        ('"std": Infinity', "non-finite number Infinity"),
        ('"std": NaN', "non-finite number NaN"),
        ('"mean": "0.2"', "preprocess.mean='0.2'.*a finite number"),
        ('"std": 0', "preprocess.std=0.*> 0"),
    ],
)
def test_non_finite_or_mistyped_preprocess_refused(model, text, message):
    mp = manifest_path(model)
    raw = mp.read_text()
    old = '"mean": 0.2' if text.startswith('"mean"') else '"std": 0.25'
    assert raw.count(old) == 1
    mp.write_text(raw.replace(old, text))  # as a hand edit would, so the JSON parser sees the token
    with pytest.raises(ArtifactError, match=message):
        load_model(model)


def test_deep_or_huge_manifest_json_refused(model):
    mp = manifest_path(model)
    mp.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError, match="nested too deeply"):
        read_manifest(model)
    mp.write_text(" " * (5 << 20) + "{}")
    with pytest.raises(ArtifactError, match="expected a few KB"):
        read_manifest(model)


def test_version_1_manifest_refused_then_upgraded(model):
    mp = manifest_path(model)
    d = json.loads(mp.read_text())
    sealed = d.pop("contract_sha256")
    d["schema_version"] = 1
    mp.write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match=r"schema version 1 predates.*python -m streamcad.engines.upgrade_manifest net.onnx"):
        load_model(model)
    m = upgrade_manifest(model)
    assert m.schema_version == SCHEMA_VERSION and m.contract_sha256 == sealed  # same fields, same seal
    with load_model(model) as lm:
        assert lm.spec == PreprocessSpec(size=48, mean=0.2, std=0.25)
    with pytest.raises(ArtifactError, match="already schema version"):
        upgrade_manifest(model)
    _edit(model, operating_threshold=0.5)
    with pytest.raises(ArtifactError, match="contract_sha256 mismatch"):
        load_model(model)
    upgrade_manifest(model, reseal=True)  # an intended edit, vouched for
    with load_model(model) as lm:
        assert lm.threshold == 0.5


def test_upgrade_refuses_a_model_that_does_not_match(model):
    _edit(model, schema_version=1)
    model.write_bytes(model.read_bytes()[:-1])
    with pytest.raises(ArtifactError, match="does not match the manifest's size/sha256"):
        upgrade_manifest(model)


def test_read_modify_write_reseals(model):
    """train/ship.py reads a manifest, changes fields and writes it again with write_manifest."""
    d = read_manifest(model).to_dict()
    for k in ("file", "sha256", "size_bytes", "schema_version"):
        d.pop(k)
    d["operating_threshold"] = 0.4
    m = write_manifest(model, **d)
    assert m.contract_sha256 != d["contract_sha256"]
    with load_model(model) as lm:
        assert lm.threshold == 0.4
