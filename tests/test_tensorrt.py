"""TensorRT backend. The cache key (file name <-> manifest <-> running GPU/TensorRT) is pure Python
and tested everywhere; running an engine needs `tensorrt`, cuda-python and a GPU and is skipped
elsewhere with the reason."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from streamcad.backends import available_backends, load_backend
from streamcad.backends.tensorrt import (
    EngineKey,
    check_engine_key,
    engine_filename,
    fp16_supported,
    key_mismatches,
    parse_engine_filename,
)
from streamcad.errors import ArtifactError, BackendError
from streamcad.manifest import read_manifest, write_manifest

H100 = EngineKey("NVIDIA H100 80GB HBM3", "9.0", "10.3.0", "fp16")
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("cc", "trt", "precision", "tag"),
    [("9.0", "10.3.0", "fp16", "sm90-trt10.3-fp16"), ("8.6", "10.13.2.6", "fp32", "sm86-trt10.13-fp32"),
     ("12.0", "10.9.0", "fp16", "sm120-trt10.9-fp16"), ("7.5", "10.0.1", "fp16", "sm75-trt10.0-fp16")],
)
def test_engine_name_round_trips_the_key(cc, trt, precision, tag):
    key = EngineKey("GPU", cc, trt, precision)
    name = engine_filename("streamcad-small", key)
    assert name == f"streamcad-small.{tag}.engine"
    parsed = parse_engine_filename(f"/some/dir/{name}")
    assert parsed == {"stem": "streamcad-small", "compute_capability": cc, "trt": key.trt_major_minor, "precision": precision}


@pytest.mark.parametrize(
    "bad", ["model.engine", "model.sm90-fp16.engine", "model.sm90-trt10-fp16.engine", "model.sm90-trt10.3-int8.engine",
            "model.sm90-trt10.3-fp16.onnx"],
)
def test_names_without_a_key_are_refused(bad):
    with pytest.raises(ArtifactError, match="carries no cache key"):
        parse_engine_filename(bad)


def test_engine_filename_validates_the_key():
    with pytest.raises(ArtifactError, match="compute capability"):
        engine_filename("m", EngineKey("GPU", "90", "10.3.0", "fp16"))
    with pytest.raises(ArtifactError, match="precision"):
        engine_filename("m", EngineKey("GPU", "9.0", "10.3.0", "int8"))


def test_fp16_support_table():
    assert fp16_supported("9.0") and fp16_supported("8.6") and fp16_supported("7.0") and fp16_supported("12.0")
    assert fp16_supported("6.0") and fp16_supported("5.3") and fp16_supported("6.2")
    assert not fp16_supported("6.1")  # consumer Pascal: FP16 at 1/64 rate
    assert not fp16_supported("5.2")


def test_key_mismatches_name_each_difference():
    assert key_mismatches(H100, H100) == []
    other = EngineKey("NVIDIA A10G", "8.6", "10.4.0", "fp16")
    diff = key_mismatches(H100, other)
    assert len(diff) == 3
    assert "sm 9.0" in diff[0] and "sm 8.6" in diff[0]
    assert "H100" in diff[1] and "A10G" in diff[1]
    assert "10.3.0" in diff[2] and "10.4.0" in diff[2]


def _engine_with_manifest(tmp_path, key: EngineKey, name: str | None = None):
    path = tmp_path / (name or engine_filename("tiny", key))
    path.write_bytes(np.random.default_rng(0).bytes(4096))  # stands in for the engine bytes: only hashed here
    write_manifest(
        path,
        input={"name": "input", "shape": ["N", 1, 64, 64], "dtype": "float32"},
        precision=key.precision,
        format_version=key.tensorrt_version,
        tensorrt_version=key.tensorrt_version,
        gpu_name=key.gpu_name,
        compute_capability=key.compute_capability,
        gate={"passed": True},
    )
    return path, read_manifest(path)


def test_matching_key_is_accepted(tmp_path):
    path, manifest = _engine_with_manifest(tmp_path, H100)
    assert manifest.format == "tensorrt"
    assert check_engine_key(path, manifest, H100) == H100


@pytest.mark.parametrize(
    ("current", "words"),
    [(EngineKey("NVIDIA H100 80GB HBM3", "9.0", "10.4.0", "fp16"), "TensorRT: engine built with 10.3.0, installed 10.4.0"),
     (EngineKey("NVIDIA L4", "8.9", "10.3.0", "fp16"), "compute capability: engine built for sm 9.0, this GPU is sm 8.9"),
     (EngineKey("NVIDIA H100 PCIe", "9.0", "10.3.0", "fp16"), "GPU: engine built on 'NVIDIA H100 80GB HBM3'")],
)
def test_mismatched_gpu_or_tensorrt_is_refused(tmp_path, current, words):
    path, manifest = _engine_with_manifest(tmp_path, H100)
    with pytest.raises(ArtifactError) as err:
        check_engine_key(path, manifest, current)
    msg = str(err.value)
    assert "cache key mismatch" in msg and words in msg and "streamcad convert tiny.onnx" in msg


def test_renamed_engine_disagreeing_with_its_manifest_is_refused(tmp_path):
    path, manifest = _engine_with_manifest(tmp_path, H100)
    renamed = path.with_name("tiny.sm90-trt10.3-fp32.engine")
    path.rename(renamed)
    with pytest.raises(ArtifactError, match=r"precision fp32 \(name\) vs fp16 \(manifest\)"):
        check_engine_key(renamed, manifest, None)


def test_manifest_without_key_fields_is_refused(tmp_path):
    path = tmp_path / "tiny.sm90-trt10.3-fp16.engine"
    path.write_bytes(b"\0" * 64)
    write_manifest(path, input={"name": "input", "shape": ["N", 1, 64, 64], "dtype": "float32"}, precision="fp16")
    with pytest.raises(ArtifactError, match="lacks"):
        check_engine_key(path, read_manifest(path), H100)


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed: the 'unavailable' path cannot be seen")
def test_without_tensorrt_the_backend_says_why(tmp_path):
    reason = available_backends()["tensorrt"]
    assert reason is not None and "tensorrt" in reason
    path, _ = _engine_with_manifest(tmp_path, H100)
    with pytest.raises(BackendError, match="tensorrt"):
        load_backend("tensorrt", path)


def test_wrong_suffix_is_refused(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_bytes(b"x")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        # without the runtime that is the first thing reported, even for a wrong file
        with pytest.raises(BackendError, match="tensorrt is not installed"):
            load_backend("tensorrt", p)
        from streamcad.backends.tensorrt import TensorRTBackend

        assert ".onnx" not in TensorRTBackend.suffixes and ".engine" in TensorRTBackend.suffixes
    else:
        with pytest.raises(ArtifactError, match="TensorRT engine"):
            load_backend("tensorrt", p)


def test_importing_the_module_imports_neither_tensorrt_nor_cuda():
    import subprocess
    import sys

    code = ("import sys, streamcad.backends.tensorrt as t; "
            "print(any(m == 'tensorrt' or m.startswith('cuda') or m == 'torch' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- on a GPU with TensorRT


@pytest.fixture(scope="module")
def gpu_engine(tmp_path_factory):
    pytest.importorskip("tensorrt", reason="TensorRT not installed: engine tests need the tensorrt extra and a GPU")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from streamcad.engines.convert import convert_onnx
    from streamcad.engines.export import export_checkpoint
    from streamcad.engines.gate import sample_images_dir
    from streamcad.preprocess import PreprocessSpec
    from streamcad.train.model import build_model

    d = tmp_path_factory.mktemp("trt")
    torch.manual_seed(0)
    model = build_model("tiny")
    ckpt = d / "tiny.pt"
    torch.save({"kind": "classifier", "model_config": model.model_config, "model": model.state_dict(),
                "preprocess": PreprocessSpec(size=64).to_dict(), "epoch": 0, "metrics": {}, "train_config": {},
                "temperature": 1.0}, ckpt)
    images = sample_images_dir()
    export_checkpoint(ckpt, d / "tiny.onnx", images_dir=images, n_frames=24)
    engine, manifest, gate = convert_onnx(d / "tiny.onnx", fp16=True, max_batch=8, gate_images=images, gate_frames=24)
    return d / "tiny.onnx", engine, manifest, gate


def test_engine_agrees_with_onnxruntime(gpu_engine):
    from streamcad.engines.gate import load_gate_frames, run_gate, sample_images_dir, softmax
    from streamcad.manifest import load_model

    onnx_path, engine, manifest, gate = gpu_engine
    assert gate.passed and manifest.gate["passed"]
    assert engine.name == engine_filename("tiny", EngineKey(manifest.gpu_name, manifest.compute_capability,
                                                            manifest.tensorrt_version, "fp16"))
    frames = load_gate_frames(manifest.spec(), n=24, images_dir=sample_images_dir())
    with load_model(engine, backend="tensorrt") as trt_m, load_model(onnx_path) as ort_m:
        got = np.concatenate([trt_m.backend.infer(frames.batch[i : i + 8])["logits"] for i in range(0, 24, 8)])
        ref = ort_m.backend.infer(frames.batch)["logits"]
        one = trt_m.backend.infer(frames.batch[:1])  # a different batch size on the same context
    assert run_gate(softmax(ref), softmax(got)).passed
    assert one["saliency"].shape[0] == 1


def test_cuda_graph_matches_plain_run(gpu_engine):
    from streamcad.engines.gate import load_gate_frames, sample_images_dir

    _, engine, manifest, _ = gpu_engine
    frames = load_gate_frames(manifest.spec(), n=4, images_dir=sample_images_dir())
    with load_backend("tensorrt", engine) as plain, load_backend("tensorrt", engine, cuda_graph_batch=4) as graph:
        a = plain.infer(frames.batch)
        b = graph.infer(frames.batch)
        c = graph.infer(frames.batch[:2])  # not the graph batch: plain path
    np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-5)
    np.testing.assert_allclose(a["logits"][:2], c["logits"], atol=1e-2)
    with load_backend("tensorrt", engine) as be, pytest.raises(BackendError, match="max batch 8"):
        be.infer(np.zeros((9, 1, 64, 64), np.float32))


def test_gpu_check_skips_cleanly_without_a_gpu(tmp_path):
    import subprocess
    import sys

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the skip path cannot be seen")
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=120, cwd=str(REPO))
    assert out.returncode == 0, out.stderr
    assert "no CUDA GPU: skipped" in out.stdout
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written
