"""`streamcad convert`. Refusals that happen before TensorRT is touched run everywhere; building
an engine needs `tensorrt`, cuda-python and a GPU and is skipped elsewhere with the reason."""

from __future__ import annotations

import importlib.util

import pytest
from helpers_onnx import make_contract_onnx

from streamcad.cli import main as cli_main
from streamcad.manifest import write_manifest

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _onnx_with_manifest(tmp_path):
    path = make_contract_onnx(tmp_path / "m.onnx", size=64)
    write_manifest(path)
    return path


def test_onnx_without_manifest_is_refused(tmp_path, capsys):
    path = make_contract_onnx(tmp_path / "bare.onnx", size=64)
    assert cli_main(["convert", str(path), "--fp16"]) == 1
    err = capsys.readouterr().err
    assert "missing manifest" in err and "bare.json" in err


def test_tampered_onnx_is_refused_before_building(tmp_path, capsys):
    path = _onnx_with_manifest(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert cli_main(["convert", str(path), "--fp16"]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err


def test_bad_max_batch_is_refused(tmp_path, capsys):
    path = _onnx_with_manifest(tmp_path)
    assert cli_main(["convert", str(path), "--max-batch", "0"]) == 1
    assert "--max-batch 0; expected >= 1" in capsys.readouterr().err


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed: the 'not installed' message cannot be seen")
def test_without_tensorrt_convert_says_how_to_install(tmp_path, capsys):
    path = _onnx_with_manifest(tmp_path)
    assert cli_main(["convert", str(path), "--fp16"]) == 1
    err = capsys.readouterr().err
    assert "tensorrt is not installed" in err and "[tensorrt]" in err and "pip install -e" in err  # a hint that works from a checkout
    assert not list(tmp_path.glob("*.engine"))


def test_convert_writes_a_gated_engine_with_its_key(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT not installed: building engines needs the tensorrt extra and a GPU")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from streamcad.backends.tensorrt import parse_engine_filename
    from streamcad.engines.convert import convert_onnx
    from streamcad.engines.gate import sample_images_dir
    from streamcad.manifest import read_manifest, verify_artifact

    path = _onnx_with_manifest(tmp_path)
    cache = tmp_path / "timing.cache"
    engine, manifest, gate = convert_onnx(path, fp16=True, max_batch=4, timing_cache=cache,
                                          gate_images=sample_images_dir(), gate_frames=24)
    assert gate.passed and cache.is_file() and cache.stat().st_size > 0
    key = parse_engine_filename(engine)
    m = read_manifest(engine)
    assert verify_artifact(engine, m) == m.sha256
    assert key["precision"] == m.precision == "fp16"
    assert key["compute_capability"] == m.compute_capability
    assert m.tensorrt_version.startswith(key["trt"])
    assert m.gate["passed"] and m.gate["n"] == 24 and m.notes["max_batch"] == 4
    assert m.source["file"] == "m.onnx"
    src = read_manifest(path)  # what changes the runtime's output travels with the engine
    assert (m.saliency_kind, m.zoom, m.ood) == (src.saliency_kind, src.zoom, src.ood)
    # a second build reuses the timing cache and gives an engine that passes the same gate
    engine2, _, gate2 = convert_onnx(path, fp16=True, max_batch=4, timing_cache=cache,
                                     gate_images=sample_images_dir(), gate_frames=24)
    assert engine2 == engine and gate2.passed
