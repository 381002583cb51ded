"""Backends on real ONNX graphs and real checkpoints: values vs an independent numpy reference,
contract violations refused with the right words, registry errors, no silent device fallback."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_onnx import BAD_KINDS, make_bad_onnx, make_contract_onnx, reference_outputs

from streamcad.backends import (
    Backend,
    available_backends,
    backend_names,
    load_backend,
    register_backend,
)
from streamcad.errors import ArtifactError, BackendError


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    return make_contract_onnx(tmp_path_factory.mktemp("m") / "net.onnx", size=64, saliency_hw=(8, 8), seed=3)


@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("io_binding", [False, True])
def test_ort_matches_numpy_reference(onnx_path, n, io_binding):
    x = np.random.default_rng(n).normal(size=(n, 1, 64, 64)).astype(np.float32)
    with load_backend("onnxruntime", onnx_path, intra_op_threads=1, io_binding=io_binding) as be:
        assert (be.name, be.input_size, be.precision, be.device, be.fixed_batch) == ("onnxruntime", 64, "fp32", "cpu", None)
        out = be.infer(x)
        first = {k: v.copy() for k, v in out.items()}
        out2 = be.infer(x[::-1].copy())  # with io_binding the buffers are reused: values must follow the input
    ref = reference_outputs(onnx_path, x)
    assert out["logits"].dtype == np.float32 and out["logits"].shape == (n, 3)
    assert out["saliency"].dtype == np.float32 and out["saliency"].shape == (n, 1, 8, 8)
    np.testing.assert_allclose(first["logits"], ref["logits"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(first["saliency"], ref["saliency"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out2["logits"], ref["logits"][::-1], rtol=1e-4, atol=1e-5)
    assert first["saliency"].min() >= 0


def test_ort_fixed_batch_and_bad_batches(tmp_path):
    p = make_contract_onnx(tmp_path / "fixed.onnx", size=32, saliency_hw=(4, 4), dynamic_batch=False)
    with load_backend("onnxruntime", p) as be:
        assert be.fixed_batch == 1 and be.input_size == 32
        with pytest.raises(BackendError, match="fixed batch size 1"):
            be.infer(np.zeros((2, 1, 32, 32), np.float32))
        with pytest.raises(BackendError, match=r"float32 batch of shape \(N, 1, 32, 32\).*float64"):
            be.infer(np.zeros((1, 1, 32, 32)))
        with pytest.raises(BackendError, match=r"got float32 \(1, 1, 16, 16\)"):
            be.infer(np.zeros((1, 1, 16, 16), np.float32))
    with pytest.raises(BackendError, match="after close"):
        be.infer(np.zeros((1, 1, 32, 32), np.float32))


EXPECTED = {
    "rank3": "rank 3",
    "no_saliency": r"missing output\(s\) \['saliency'\]",
    "four_classes": r"'logits' has shape \['N', 4\]; expected \(N, 3\)",
    "dynamic_size": "dynamic spatial size",
    "two_channels": "2 channels; expected 1",
    "non_square": "64x128; expected square",
}


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_wrong_contracts_refused(tmp_path, kind):
    p = make_bad_onnx(tmp_path / f"{kind}.onnx", kind)
    with pytest.raises(ArtifactError, match=EXPECTED[kind]):
        load_backend("onnxruntime", p)


def test_registry_errors(tmp_path, onnx_path):
    with pytest.raises(BackendError, match="unknown backend 'onnx'.*onnxruntime.*tensorrt.*torch"):
        load_backend("onnx", onnx_path)
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match=r"'onnxruntime' expects an ONNX model \(\.onnx\); got 'model.pt'"):
        load_backend("onnxruntime", pt)
    with pytest.raises(ArtifactError, match="model file not found"):
        load_backend("onnxruntime", tmp_path / "absent.onnx")
    with pytest.raises(BackendError, match=r"bad options \['threads'\].*intra_op_threads"):
        load_backend("onnxruntime", onnx_path, threads=2)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(ArtifactError, match="onnxruntime cannot load junk.onnx"):
        load_backend("onnxruntime", junk)
    avail = available_backends()
    assert set(avail) >= {"onnxruntime", "torch", "tensorrt"} and avail["onnxruntime"] is None
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert avail["tensorrt"].startswith("tensorrt not installed")
        engine = tmp_path / "x.engine"
        engine.write_bytes(b"not an engine")  # exists: the missing runtime is what must be reported
        with pytest.raises(BackendError, match="tensorrt is not installed"):
            load_backend("tensorrt", engine)


def test_register_backend_third_party(tmp_path):
    @register_backend("constant-test")
    class Constant(Backend):
        suffixes = (".bin",)
        artifact_kind = "a constant blob"

        def __init__(self, artifact, size: int = 16):
            self.input_size = size

        def infer(self, batch):
            batch = self.check_batch(batch)
            n = batch.shape[0]
            return {"logits": np.zeros((n, 3), np.float32), "saliency": np.zeros((n, 1, 2, 2), np.float32)}

    assert "constant-test" in backend_names() and available_backends()["constant-test"] is None
    blob = tmp_path / "c.bin"
    blob.write_bytes(b"1")
    with load_backend("constant-test", blob, size=8) as be:
        assert be.name == "constant-test" and be.infer(np.zeros((3, 1, 8, 8), np.float32))["logits"].shape == (3, 3)
    with pytest.raises(ArtifactError, match=r"expects a constant blob \(\.bin\)"):
        load_backend("constant-test", tmp_path / "c.onnx")
    with pytest.raises(BackendError, match="already registered"):
        register_backend("onnxruntime")(Constant)


def test_cuda_provider_absent_is_an_error(onnx_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu present: the refusal cannot be shown here")
    with pytest.raises(BackendError, match="CUDAExecutionProvider is not available.*onnxruntime-gpu"):
        load_backend("onnxruntime", onnx_path, providers=("cuda",))
    with pytest.raises(BackendError, match="unknown provider 'tpu'"):
        load_backend("onnxruntime", onnx_path, providers=("tpu",))


# ----------------------------------------------------------------------------- torch backend


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch = pytest.importorskip("torch")
    model_mod = pytest.importorskip("streamcad.train.model")
    from streamcad.preprocess import PreprocessSpec

    torch.manual_seed(0)
    model = model_mod.build_model("tiny").eval()
    d = tmp_path_factory.mktemp("ckpt")
    ckpt = {
        "kind": "classifier",
        "model_config": {"name": "tiny"},
        "model": model.state_dict(),
        "preprocess": PreprocessSpec(size=64).to_dict(),
        "epoch": 1,
        "metrics": {},
        "train_config": {},
        "temperature": 1.7,
    }
    torch.save(ckpt, d / "clf.pt")

    class WithTemperature(torch.nn.Module):  # what the exporter bakes in: logits / T
        def __init__(self, m, t):
            super().__init__()
            self.m, self.t = m, t

        def forward(self, x):
            logits, sal = self.m(x)
            return logits / self.t, sal

    onnx_file = d / "clf.onnx"
    torch.onnx.export(
        WithTemperature(model, 1.7).eval(), torch.zeros(1, 1, 64, 64), str(onnx_file),
        input_names=["input"], output_names=["logits", "saliency"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}, "saliency": {0: "N"}}, opset_version=17, dynamo=False,
    )
    return d / "clf.pt", onnx_file, model


@pytest.mark.parametrize("n", [1, 4])
def test_torch_cpu_agrees_with_onnxruntime(checkpoint, n):
    import torch

    pt, onnx_file, model = checkpoint
    x = np.random.default_rng(10 + n).normal(0.3, 0.3, size=(n, 1, 64, 64)).astype(np.float32)
    with load_backend("torch", pt, device="cpu") as tb, load_backend("onnxruntime", onnx_file) as ob:
        assert (tb.input_size, tb.precision, tb.device, tb.temperature) == (64, "fp32", "cpu", 1.7)
        t_out, o_out = tb.infer(x), ob.infer(x)
    with torch.no_grad():
        raw_logits, _ = model(torch.from_numpy(x))
    np.testing.assert_allclose(t_out["logits"], raw_logits.numpy() / 1.7, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t_out["logits"], o_out["logits"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(t_out["saliency"], o_out["saliency"], rtol=1e-3, atol=1e-4)


def test_torch_refuses_bad_requests(checkpoint, tmp_path):
    import torch

    pt, onnx_file, _ = checkpoint
    with pytest.raises(BackendError, match="give the device explicitly"):
        load_backend("torch", pt)
    with pytest.raises(BackendError, match="fp16' needs a CUDA device"):
        load_backend("torch", pt, device="cpu", precision="fp16")
    with pytest.raises(BackendError, match="precision='int8'"):
        load_backend("torch", pt, device="cpu", precision="int8")
    with pytest.raises(ArtifactError, match=r"'torch' expects a training checkpoint \(\.pt, \.pth\); got 'clf.onnx'"):
        load_backend("torch", onnx_file)
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="no CUDA GPU is available"):
            load_backend("torch", pt, device="cuda")
    ssl = torch.load(pt, weights_only=True) | {"kind": "ssl"}
    torch.save(ssl, tmp_path / "ssl.pt")
    with pytest.raises(ArtifactError, match="kind 'ssl'; expected 'classifier'"):
        load_backend("torch", tmp_path / "ssl.pt", device="cpu")
    bad = torch.load(pt, weights_only=True) | {"model_config": {"name": "small"}}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ArtifactError, match="weights do not fit model_config"):
        load_backend("torch", tmp_path / "bad.pt", device="cpu")


@pytest.mark.gpu
def test_torch_cuda_fp16_and_graph_replay(checkpoint):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pt, _, _ = checkpoint
    x = np.random.default_rng(0).normal(0.3, 0.3, size=(4, 1, 64, 64)).astype(np.float32)
    with load_backend("torch", pt, device="cpu") as ref_be:
        ref = ref_be.infer(x)
    with load_backend("torch", pt, device="cuda", precision="fp16", cuda_graph_batch=4) as be:
        assert be.precision == "fp16" and be.device.startswith("cuda")
        a = be.infer(x)  # graph replay
        b = be.infer(x[:2])  # eager path
    np.testing.assert_allclose(a["logits"], ref["logits"], atol=5e-2)
    np.testing.assert_allclose(b["logits"], a["logits"][:2], atol=5e-2)
