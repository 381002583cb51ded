"""ONNX Runtime backend: CPU by default, CUDA only when asked for and really present.

    model.onnx --InferenceSession (contract checked at load)--> infer(float32 (N, 1, S, S))
        --> {'logits': (N, 3), 'saliency': (N, 1, h, w)[, 'embedding': (N, D) when the graph has it]}

onnxruntime itself is imported when a backend is constructed, not when this module is.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import numpy as np

from streamcad.backends.base import (
    EMBEDDING_NAME,
    N_CLASSES,
    OUTPUT_NAMES,
    Backend,
    BackendOptions,
    register_backend,
)
from streamcad.errors import ArtifactError, BackendError

__all__ = ["OnnxRuntimeBackend", "OnnxRuntimeOptions", "check_contract", "embedding_dim"]

log = logging.getLogger(__name__)

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_OPT_LEVELS = ("disable", "basic", "extended", "all")


def _dim(d: Any) -> int | None:
    """ORT shape entry -> int, or None when symbolic / unknown."""
    return d if isinstance(d, int) and d > 0 else None


def check_contract(inputs: list, outputs: list, where: str) -> tuple[str, int, int | None]:
    """Check ORT NodeArg lists against the model I/O contract -> (input name, S, fixed batch or None).

    Contract: one input (N, 1, S, S) float32 with static S; outputs 'logits' (N, 3) and
    'saliency' (N, 1, h, w), both float32. Raises ArtifactError naming what differs.
    """
    if len(inputs) != 1:
        raise ArtifactError(f"{where}: expected 1 input (N, 1, S, S) float32; got {len(inputs)}: {[i.name for i in inputs]}")
    inp = inputs[0]
    shape = list(inp.shape)
    if inp.type != "tensor(float)":
        raise ArtifactError(f"{where}: input {inp.name!r} has type {inp.type}; expected tensor(float) (float32)")
    if len(shape) != 4:
        raise ArtifactError(f"{where}: input {inp.name!r} has rank {len(shape)} shape {shape}; expected (N, 1, S, S)")
    if _dim(shape[1]) != 1:
        raise ArtifactError(f"{where}: input {inp.name!r} has {shape[1]} channels; expected 1 (grayscale)")
    h, w = _dim(shape[2]), _dim(shape[3])
    if h is None or w is None:
        raise ArtifactError(f"{where}: input {inp.name!r} has dynamic spatial size {shape[2:]}; expected a static S x S")
    if h != w:
        raise ArtifactError(f"{where}: input {inp.name!r} is {h}x{w}; expected square S x S")
    by_name = {o.name: o for o in outputs}
    missing = [n for n in OUTPUT_NAMES if n not in by_name]
    if missing:
        raise ArtifactError(f"{where}: missing output(s) {missing}; expected outputs {list(OUTPUT_NAMES)}, got {list(by_name)}")
    lg, sal = by_name["logits"], by_name["saliency"]
    for o in (lg, sal):
        if o.type != "tensor(float)":
            raise ArtifactError(f"{where}: output {o.name!r} has type {o.type}; expected tensor(float) (float32)")
    if len(lg.shape) != 2 or _dim(lg.shape[1]) != N_CLASSES:
        raise ArtifactError(f"{where}: output 'logits' has shape {list(lg.shape)}; expected (N, {N_CLASSES})")
    if len(sal.shape) != 4 or _dim(sal.shape[1]) != 1:
        raise ArtifactError(f"{where}: output 'saliency' has shape {list(sal.shape)}; expected (N, 1, h, w)")
    embedding_dim(outputs, where)  # an 'embedding' output, if present, must be (N, D) float32
    return inp.name, h, _dim(shape[0])


def embedding_dim(outputs: list, where: str) -> int | None:
    """D of the optional 'embedding' output (N, D) float32, None when the graph has none."""
    emb = next((o for o in outputs if o.name == EMBEDDING_NAME), None)
    if emb is None:
        return None
    if emb.type != "tensor(float)" or len(emb.shape) != 2 or _dim(emb.shape[1]) is None:
        raise ArtifactError(
            f"{where}: output {EMBEDDING_NAME!r} is {emb.type} {list(emb.shape)}; expected tensor(float) (N, D) with a static D"
        )
    return int(emb.shape[1])


Threads = Annotated[int, msgspec.Meta(ge=0, le=256)]  # 0 = ORT's own choice; past 256 is a typo


class OnnxRuntimeOptions(BackendOptions):
    """OnnxRuntimeBackend's keyword arguments. From [model]: threads -> intra_op_threads,
    device -> providers ('cpu' | 'cuda[:i]'); precision is the graph's own (fp32), so
    model.precision = 'fp16' is refused after loading (check_backend); cuda_graph is not taken."""

    MODEL_KEYS: ClassVar[tuple[str, ...]] = ("threads", "device", "precision")

    providers: tuple[str, ...] | str = ("cpu",)  # order = preference; each must really be active
    intra_op_threads: Threads | None = None  # None = ORT's default
    inter_op_threads: Threads | None = None
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    io_binding: bool = False  # reuse output buffers per batch size (overwritten by the next infer)

    @classmethod
    def from_model(cls, model: Any) -> OnnxRuntimeOptions:
        device = model.device
        providers = ("cpu",) if device is None else ("cuda",) if device.startswith("cuda") else (device,)
        return cls(providers=providers, intra_op_threads=model.threads)


@register_backend("onnxruntime", OnnxRuntimeOptions)
class OnnxRuntimeBackend(Backend):
    """ONNX Runtime session with the contract checked at load.

    Options: providers ('cpu',) | ('cuda',) | ('cuda', 'cpu') (order = preference; every one
    named must really be active, else BackendError), intra_op_threads / inter_op_threads
    (None = ORT default), graph_optimization ('disable'|'basic'|'extended'|'all'),
    io_binding (reuse output buffers per batch size: the returned arrays are then overwritten by
    the next infer() call with the same N; copy them to keep them).
    """

    suffixes = (".onnx",)
    artifact_kind = "an ONNX model"
    precision_note = ("onnxruntime accepts model.precision = 'fp32' only (it runs the graph's own precision): "
                      "for fp16 use backend 'torch' on CUDA or a TensorRT engine (streamcad convert --fp16)")

    def __init__(
        self,
        artifact: str | Path,
        providers: tuple[str, ...] | list[str] | str = ("cpu",),
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        graph_optimization: str = "all",
        io_binding: bool = False,
    ) -> None:
        import onnxruntime as ort

        if isinstance(providers, str):
            providers = (providers,)
        wanted = []
        for p in providers:
            key = p.lower().removesuffix("executionprovider")
            if key not in _PROVIDERS:
                raise BackendError(f"onnxruntime: unknown provider {p!r}; expected one of {list(_PROVIDERS)}")
            wanted.append(_PROVIDERS[key])
        if not wanted:
            raise BackendError("onnxruntime: providers is empty; expected e.g. ('cpu',) or ('cuda',)")
        installed = ort.get_available_providers()
        for p in wanted:
            if p not in installed:
                hint = " (install onnxruntime-gpu and a matching CUDA runtime)" if p == "CUDAExecutionProvider" else ""
                raise BackendError(f"onnxruntime: {p} is not available in this onnxruntime; installed: {installed}{hint}")
        if graph_optimization not in _OPT_LEVELS:
            raise BackendError(f"onnxruntime: graph_optimization={graph_optimization!r}; expected one of {_OPT_LEVELS}")
        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization]
        for attr, val in (("intra_op_num_threads", intra_op_threads), ("inter_op_num_threads", inter_op_threads)):
            if val is not None:
                if not isinstance(val, int) or val < 0:
                    raise BackendError(f"onnxruntime: {attr.replace('_num', '')}={val!r}; expected an int >= 0")
                setattr(so, attr, val)
        try:
            self._sess = ort.InferenceSession(str(artifact), sess_options=so, providers=wanted)
        except Exception as exc:  # ORT raises its own Fail / InvalidGraph / InvalidProtobuf types
            raise ArtifactError(f"onnxruntime cannot load {Path(artifact).name}: {exc}") from exc
        active = self._sess.get_providers()
        lost = [p for p in wanted if p not in active]
        if lost:  # ORT drops a provider whose libraries fail to load with only a warning: refuse
            raise BackendError(f"onnxruntime: requested {lost} but the session runs on {active}; refusing to fall back")
        where = Path(artifact).name
        self._input_name, self.input_size, self.fixed_batch = check_contract(
            self._sess.get_inputs(), self._sess.get_outputs(), where
        )
        self.embedding_dim = embedding_dim(self._sess.get_outputs(), where)
        self._outputs = list(OUTPUT_NAMES) + ([EMBEDDING_NAME] if self.embedding_dim else [])
        self.precision = "fp32"
        self.device = "cuda" if active[0] == "CUDAExecutionProvider" else "cpu"
        self.providers = tuple(active)
        self._io_binding = bool(io_binding)
        self._bound: dict[int, tuple[Any, dict[str, np.ndarray]]] = {}
        self._saliency_hw: tuple[int, int] | None = None
        sal = next(o for o in self._sess.get_outputs() if o.name == "saliency")
        if _dim(sal.shape[2]) and _dim(sal.shape[3]):
            self._saliency_hw = (sal.shape[2], sal.shape[3])
        log.info("onnxruntime: %s S=%d on %s", where, self.input_size, active)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._sess is None:
            raise BackendError("onnxruntime: infer() called after close()")
        batch = self.check_batch(batch, self.fixed_batch)
        if self._io_binding and self.device == "cpu" and self._saliency_hw is not None:
            return self._infer_bound(batch)
        try:
            outs = self._sess.run(self._outputs, {self._input_name: batch})
        except Exception as exc:
            raise BackendError(f"onnxruntime: inference failed on a batch of {batch.shape}: {exc}") from exc
        return dict(zip(self._outputs, outs, strict=True))

    def _infer_bound(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run with outputs written into per-batch-size buffers allocated once."""
        n = batch.shape[0]
        if n not in self._bound:
            h, w = self._saliency_hw  # type: ignore[misc]
            outs = {"logits": np.empty((n, N_CLASSES), np.float32), "saliency": np.empty((n, 1, h, w), np.float32)}
            if self.embedding_dim:
                outs[EMBEDDING_NAME] = np.empty((n, self.embedding_dim), np.float32)
            binding = self._sess.io_binding()
            for k, arr in outs.items():
                binding.bind_output(k, "cpu", 0, np.float32, arr.shape, arr.ctypes.data)
            self._bound[n] = (binding, outs)
        binding, outs = self._bound[n]
        binding.bind_cpu_input(self._input_name, batch)
        try:
            self._sess.run_with_iobinding(binding)
        except Exception as exc:
            raise BackendError(f"onnxruntime: inference failed on a batch of {batch.shape}: {exc}") from exc
        return outs

    def close(self) -> None:
        self._bound.clear()
        self._sess = None  # type: ignore[assignment]
