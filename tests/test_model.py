"""train.model: shapes per scale, gradients everywhere, saliency from the CLS attention,
registry errors, FLOP counting, and ONNX export run by ONNX Runtime."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from streamcad.errors import ConfigError  # noqa: E402
from streamcad.train.model import build_model, list_models, model_complexity  # noqa: E402

VARIANTS = [
    ("tiny", {}),
    ("small", {}),
    ("base", {}),
    ("resnet18", {}),
    ("tiny", {"multiscale": False}),
    ("tiny", {"cross_attention": False}),
    ("tiny", {"ms_mode": "dilations"}),
    ("small", {"multiscale": False, "cross_attention": False}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for n, o in VARIANTS]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize(("name", "ov"), VARIANTS[:-1], ids=IDS[:-1])
def test_every_parameter_gets_a_gradient(name, ov):
    model = build_model(name, **ov).train()
    x = torch.randn(2, 1, 32, 32)  # smallest legal S keeps the base/resnet18 cases fast
    logits, sal = model(x)
    emb, dense = model.forward_embedding_dense(x)
    # logits reach every parameter; dense/embedding are added so their paths are exercised too
    (logits.square().sum() + 0.01 * dense.mean() + 0.01 * emb.mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []
    assert logits.shape == (2, 3)
    assert emb.shape == (2, model.embed_dim)
    assert dense.shape == (2, model.dense_dim, 2, 2)  # stride 16 at S=32


@pytest.mark.parametrize(("name", "ov"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("size", [64, 96])
def test_each_scale_has_declared_channels_and_stride(name, ov, size):
    model = build_model(name, **ov).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 1, size, size))
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    assert len(feats) == 4
    for f, info in zip(feats, model.feature_info, strict=True):
        assert f.shape == (1, info["num_chs"], size // info["reduction"], size // info["reduction"])


@pytest.mark.parametrize(("name", "ov"), VARIANTS, ids=IDS)
def test_saliency_shape_and_range(name, ov):
    model = build_model(name, **ov).eval()
    with torch.no_grad():
        _, sal = model(torch.randn(3, 1, 96, 96))
    attention = name != "resnet18" and ov.get("cross_attention", True)
    grid = 96 // 16 if attention else 96 // 32
    assert sal.shape == (3, 1, grid, grid)
    assert torch.all(sal >= 0) and torch.all(sal <= 1 + 1e-6)
    peak = sal.amax(dim=(1, 2, 3))
    if attention:  # softmax weights are > 0, so max-normalisation gives exactly 1 per image
        torch.testing.assert_close(peak, torch.ones(3))
    else:  # a CAM may be all-negative (ReLU -> 0); otherwise its peak is 1
        assert all(abs(v - 1) < 1e-5 or v == 0 for v in peak.tolist())


def test_saliency_is_cls_attention_to_the_stride16_tokens():
    model = build_model("small").eval()  # 2 attention layers: saliency must come from the last
    captured = {}
    model.fusion.layers[-1].attn.register_forward_hook(lambda m, i, o: captured.__setitem__("attn", o[1]))
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        _, sal = model(x)
    attn = captured["attn"]  # (B, heads, N, N); tokens: [CLS], 2x2 (s4 pooled), 2x2 (s8 pooled), 4x4 (s16), 2x2 (s32)
    assert attn.shape[-1] == 1 + 4 + 4 + 16 + 4
    expected = attn[:, :, 0, 9:25].mean(1).reshape(2, 1, 4, 4)
    expected = expected / expected.amax(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(sal, expected)


def test_cam_saliency_matches_the_predicted_class_map():
    model = build_model("tiny", cross_attention=False).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        logits, sal = model(x)
        f4 = model.forward_features(x)[-1]  # (B, C, 2, 2)
    W = model.head.fc.weight
    for b in range(2):
        c = int(logits[b].argmax())
        cam = torch.relu(torch.einsum("chw,c->hw", f4[b], W[c]))
        torch.testing.assert_close(sal[b, 0], cam / cam.max(), rtol=1e-4, atol=1e-6)
        # the GAP embedding + head gives exactly the logits (CAM identity)
        torch.testing.assert_close(logits[b], W @ f4[b].mean((1, 2)) + model.head.fc.bias, rtol=1e-4, atol=1e-5)


def test_parameter_counts_per_size():
    counts = {n: sum(p.numel() for p in build_model(n).parameters()) for n in ("tiny", "small", "base")}
    assert 0.3e6 <= counts["tiny"] <= 0.6e6
    assert 1e6 <= counts["small"] <= 2e6
    assert 5e6 <= counts["base"] <= 10e6
    assert sum(p.numel() for p in build_model("resnet18").parameters()) > 10e6


def test_model_complexity_counts_a_known_conv():
    conv = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False)
    out = model_complexity(conv, 32)
    assert out["params"] == 36
    assert out["gflops"] == pytest.approx(2 * 4 * 9 * 32 * 32 / 1e9)


def test_model_config_rebuilds_the_same_model():
    a = build_model("tiny", multiscale=False).eval()
    b = build_model(**a.model_config).eval()
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x)[0], b(x)[0])
    assert a.model_config == {"name": "tiny", "multiscale": False}


def test_registry_errors_name_the_problem():
    assert {"tiny", "small", "base", "resnet18"} <= set(list_models())
    with pytest.raises(ConfigError, match="unknown model 'huge'.*tiny"):
        build_model("huge")
    with pytest.raises(ConfigError, match="multiscal"):
        build_model("tiny", multiscal=False)
    with pytest.raises(ConfigError, match="resnet18"):
        build_model("resnet18", multiscale=False)
    with pytest.raises(ConfigError, match="divisible by 32"):
        build_model("tiny")(torch.zeros(1, 1, 70, 70))
    with pytest.raises(ConfigError, match=r"\(B, 1, S, S\)"):
        build_model("tiny")(torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize(("name", "ov"), [("tiny", {}), ("tiny", {"cross_attention": False})], ids=["attention", "cam"])
def test_onnx_export_matches_pytorch_in_onnxruntime(tmp_path, name, ov):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = build_model(name, **ov).eval()
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.randn(1, 1, 96, 96),), str(path), opset_version=17, dynamo=False,
            input_names=["input"], output_names=["logits", "saliency"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}, "saliency": {0: "N"}},
        )
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert graph.opset_import[0].version == 17
    assert [o.name for o in graph.graph.output] == ["logits", "saliency"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = torch.randn(4, 1, 96, 96)  # batch 4 through a graph traced at batch 1: dynamic batch works
    logits, sal = sess.run(["logits", "saliency"], {"input": x.numpy()})
    with torch.no_grad():
        ref_logits, ref_sal = model(x)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(p, torch.softmax(ref_logits, 1).numpy(), atol=1e-4)
    np.testing.assert_allclose(sal, ref_sal.numpy(), atol=1e-4)
    assert sal.shape == tuple(ref_sal.shape)
