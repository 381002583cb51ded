"""The physical limit: how far is inference from what this machine can do at all?

    model FLOPs per frame (counted from the ONNX graph: Conv, ConvTranspose, Gemm, MatMul; shapes
                       that static inference leaves unknown, e.g. attention tokens, from one ORT run)
    attainable peak   = a large float32 matrix product on the same threads (GFLOP/s)
    memory bandwidth  = a large array copy (GB/s, bytes read + written)
    bound per frame   = max(FLOPs / peak, bytes touched / bandwidth)

Measured in the same run as the latency, since these machines are noisy.
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["onnx_flops", "matmul_peak_gflops", "memory_bandwidth_gbs", "roofline"]


def onnx_flops(path, batch: int = 1) -> dict:
    """Multiply-accumulate work of one forward pass, counted from the graph. -> {flops, params_bytes}."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    inp = model.graph.input[0]
    inp.type.tensor_type.shape.dim[0].dim_value = batch  # fix the dynamic batch for shape inference
    model = shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name, arr in inits.items():
        shapes[name] = list(arr.shape)
    # Static inference cannot follow a Reshape whose target is computed (Shape -> Gather -> Concat):
    # the attention's token axis comes out unknown and its MatMuls counted nothing (0.050 instead
    # of 0.087 GFLOP for the shipped model). Such tensors get their shapes from one ORT run.
    shapes.update(_runtime_shapes(model, set(inits), shapes, batch))
    flops = 0
    for node in model.graph.node:
        op = node.op_type
        if op in ("Conv", "ConvTranspose"):
            w = shapes.get(node.input[1])
            out = shapes.get(node.output[0])
            if not w or not out or 0 in out:
                continue
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            # (N, Cout, H, W) outputs, each a dot product of Cin/group * kh * kw
            k = int(np.prod(w[1:]))
            if op == "ConvTranspose":
                k = int(np.prod(w[2:])) * w[0] // group
            flops += 2 * int(np.prod(out)) * k
        elif op in ("Gemm", "MatMul"):
            a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
            out = shapes.get(node.output[0])
            if not a or not b or not out or 0 in out:
                continue
            trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
            kdim = a[-2] if (op == "Gemm" and trans_a) else a[-1]
            flops += 2 * int(np.prod(out)) * kdim
    params_bytes = int(sum(a.nbytes for a in inits.values()))
    return {"flops": int(flops), "params_bytes": params_bytes}


def _runtime_shapes(model, inits: set[str], static: dict[str, list[int]], batch: int) -> dict[str, list[int]]:
    """Shapes of the Conv / ConvTranspose / Gemm / MatMul inputs and outputs that static inference
    left unknown, from running the graph once on zeros with those tensors exposed as outputs."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    want = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            for name in (*node.input[:2], node.output[0]):
                dims = static.get(name)
                if name and name not in inits and (not dims or 0 in dims):
                    want.append(name)
    want = list(dict.fromkeys(want))
    if not want:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in want if n not in have)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {}
    for i in sess.get_inputs():
        dims = [batch if not isinstance(d, int) or d <= 0 else d for d in i.shape]
        feed[i.name] = np.zeros(dims, np.float32)
    return {n: list(a.shape) for n, a in zip(want, sess.run(want, feed), strict=True)}


def matmul_peak_gflops(n: int = 1024, repeats: int = 10) -> float:
    """Best-of-N float32 n x n matrix product through numpy's BLAS (its own thread count)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def memory_bandwidth_gbs(mbytes: int = 256, repeats: int = 5) -> float:
    """Best-of-N copy of a large array: (read + write) bytes per second."""
    src = np.ones(mbytes * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9


def roofline(onnx_path, infer_ms_p50: float, input_size: int) -> dict:
    """Bound per frame and how far the measured inference sits from it."""
    f = onnx_flops(onnx_path)
    peak = matmul_peak_gflops()
    bw = memory_bandwidth_gbs()
    bytes_touched = f["params_bytes"] + 4 * input_size * input_size  # weights + input, once
    t_compute_ms = f["flops"] / (peak * 1e9) * 1e3
    t_memory_ms = bytes_touched / (bw * 1e9) * 1e3
    bound_ms = max(t_compute_ms, t_memory_ms)
    return {
        "model_gflops_per_frame": f["flops"] / 1e9,
        "params_bytes": f["params_bytes"],
        "peak_gflops": peak,
        "bandwidth_gbs": bw,
        "bound_ms": bound_ms,
        "bound": "compute" if t_compute_ms >= t_memory_ms else "memory",
        "infer_ms_p50": infer_ms_p50,
        "achieved_gflops": f["flops"] / (infer_ms_p50 / 1e3) / 1e9 if infer_ms_p50 > 0 else None,
        "fraction_of_bound": bound_ms / infer_ms_p50 if infer_ms_p50 > 0 else None,
    }
