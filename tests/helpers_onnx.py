"""Small REAL ONNX graphs that follow (or deliberately break) the model I/O contract.

    make_contract_onnx(path, size=64) writes:
        input (N, 1, S, S) float32
          -> Conv 3x3 (4 ch, pad 1) -> Relu --+--> GlobalAveragePool -> Flatten -> Gemm -> logits (N, 3)
                                               +--> Conv 1x1 (|w|, 1 ch) -> AveragePool S/h -> saliency (N, 1, h, w)

`reference_outputs(path, x)` recomputes both outputs with plain numpy from the weights stored in
the file, so tests compare a backend against an independent implementation, not against itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["make_contract_onnx", "make_bad_onnx", "reference_outputs", "BAD_KINDS"]

BAD_KINDS = ("rank3", "no_saliency", "four_classes", "dynamic_size", "two_channels", "non_square")


def _build(
    path: Path,
    size: int,
    saliency_hw: tuple[int, int],
    seed: int,
    n_classes: int,
    opset: int,
    dynamic_batch: bool,
    *,
    in_channels: int = 1,
    input_shape: list | None = None,
    with_saliency: bool = True,
    width: int | None = None,
) -> Path:
    rng = np.random.default_rng(seed)
    c = 4
    h, w = saliency_hw
    width = size if width is None else width
    if size % h or width % w:
        raise ValueError(f"saliency_hw {saliency_hw} must divide the input size {size}x{width}")
    conv_w = rng.normal(0, 0.5, (c, in_channels, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, (c,)).astype(np.float32)
    fc_w = rng.normal(0, 1.0, (n_classes, c)).astype(np.float32)
    fc_b = rng.normal(0, 0.1, (n_classes,)).astype(np.float32)
    sal_w = np.abs(rng.normal(0, 0.5, (1, c, 1, 1))).astype(np.float32)  # |w| keeps saliency >= 0
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in ((conv_w, "conv_w"), (conv_b, "conv_b"), (fc_w, "fc_w"), (fc_b, "fc_b"), (sal_w, "sal_w"))
        if with_saliency or n != "sal_w"
    ]
    n = "N" if dynamic_batch else 1
    shape = input_shape if input_shape is not None else [n, in_channels, size, width]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["g1"]),
        helper.make_node("Flatten", ["g1"], ["f1"], axis=1),
        helper.make_node("Gemm", ["f1", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, n_classes])]
    if with_saliency:
        kh, kw = size // h, width // w
        nodes += [
            helper.make_node("Conv", ["r1", "sal_w"], ["s1"], kernel_shape=[1, 1]),
            helper.make_node("AveragePool", ["s1"], ["saliency"], kernel_shape=[kh, kw], strides=[kh, kw]),
        ]
        outputs.append(helper.make_tensor_value_info("saliency", TensorProto.FLOAT, [n, 1, h, w]))
    graph = helper.make_graph(
        nodes, "contract_net", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests.helpers_onnx")
    model.ir_version = min(model.ir_version, 8)  # loadable by every onnxruntime >= 1.17
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def make_contract_onnx(
    path: str | Path,
    size: int = 64,
    saliency_hw: tuple[int, int] = (8, 8),
    seed: int = 0,
    n_classes: int = 3,
    opset: int = 17,
    dynamic_batch: bool = True,
) -> Path:
    """Write a small valid model: input (N, 1, size, size) -> logits (N, n_classes), saliency (N, 1, h, w)."""
    return _build(Path(path), size, saliency_hw, seed, n_classes, opset, dynamic_batch)


def make_bad_onnx(path: str | Path, kind: str, size: int = 64, seed: int = 0) -> Path:
    """Write a model that breaks the contract in one way (kind in BAD_KINDS). It still runs in ORT."""
    p = Path(path)
    if kind == "rank3":  # (N, S, S): the channel axis is missing
        rng = np.random.default_rng(seed)
        w = rng.normal(0, 1, (3, size)).astype(np.float32)
        nodes = [
            helper.make_node("ReduceMean", ["input"], ["m"], axes=[1], keepdims=0),
            helper.make_node("Gemm", ["m", "w"], ["logits"], transB=1),
            helper.make_node("Unsqueeze", ["input", "ax"], ["saliency"]),
        ]
        graph = helper.make_graph(
            nodes,
            "rank3",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", size, size])],
            [
                helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3]),
                helper.make_tensor_value_info("saliency", TensorProto.FLOAT, ["N", 1, size, size]),
            ],
            [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1], np.int64), "ax")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, str(p))
        return p
    if kind == "no_saliency":
        return _build(p, size, (8, 8), seed, 3, 17, True, with_saliency=False)
    if kind == "four_classes":
        return _build(p, size, (8, 8), seed, 4, 17, True)
    if kind == "dynamic_size":
        return _build(p, size, (8, 8), seed, 3, 17, True, input_shape=["N", 1, "H", "W"])
    if kind == "two_channels":
        return _build(p, size, (8, 8), seed, 3, 17, True, in_channels=2)
    if kind == "non_square":
        return _build(p, size, (8, 8), seed, 3, 17, True, width=size * 2)
    raise ValueError(f"unknown kind {kind!r}; expected one of {BAD_KINDS}")


def _conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pad: int) -> np.ndarray:
    """Direct NCHW cross-correlation (ONNX Conv semantics), stride 1. (N,C,H,W) x (O,C,k,k) -> (N,O,H',W')."""
    n, c, H, W = x.shape
    o, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = H + 2 * pad - k + 1, W + 2 * pad - k + 1
    out = np.zeros((n, o, Ho, Wo), np.float64)
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i : i + Ho, j : j + Wo]  # (N, C, Ho, Wo)
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    if b is not None:
        out += b[None, :, None, None]
    return out


def reference_outputs(path: str | Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Numpy re-implementation of make_contract_onnx's graph from the weights in `path` (float64)."""
    model = onnx.load(str(path))
    wts = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    sal_shape = [d.dim_value for d in model.graph.output[1].type.tensor_type.shape.dim]
    h, w = sal_shape[2], sal_shape[3]
    r1 = np.maximum(_conv2d(x.astype(np.float64), wts["conv_w"], wts["conv_b"], 1), 0)  # (N, 4, S, S)
    g = r1.mean(axis=(2, 3))  # (N, 4)
    logits = g @ wts["fc_w"].T + wts["fc_b"]  # (N, 3)
    s1 = _conv2d(r1, wts["sal_w"], None, 0)  # (N, 1, S, S)
    n, _, S, S2 = s1.shape
    sal = s1.reshape(n, 1, h, S // h, w, S2 // w).mean(axis=(3, 5))  # (N, 1, h, w)
    return {"logits": logits, "saliency": sal}
