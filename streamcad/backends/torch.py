"""PyTorch backend: runs a training checkpoint directly (no export), on CPU or CUDA.

    model.pt (plain dict: model_config, model state_dict, preprocess, temperature)
        --streamcad.nets.build_model(**model_config), load_state_dict(strict)-->  nn.Module (eval)
    float32 (N, 1, S, S) --to(device)[, half][, channels_last]--> model --logits / T--> numpy

torch and streamcad.nets (the networks, in the runtime: this backend never imports the training
code, docs/ARCHITECTURE.md "Layers") are imported inside the constructor: importing this module
costs nothing.
The device must be named; fp16 needs CUDA; nothing is downgraded silently.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import numpy as np

from streamcad.backends.base import N_CLASSES, Backend, BackendOptions, register_backend
from streamcad.errors import ArtifactError, BackendError
from streamcad.extras import install_command

__all__ = ["TorchBackend", "TorchOptions", "unavailable_reason"]

log = logging.getLogger(__name__)


def unavailable_reason() -> str | None:
    """Why this backend cannot run here (checked without importing torch), or None."""
    what = f"torch not installed (install the 'train' extra: {install_command('train')})"
    try:  # the networks are streamcad.nets: torch is all this backend needs beyond the runtime
        return what if importlib.util.find_spec("torch") is None else None
    except (ImportError, ValueError):
        return what


class TorchOptions(BackendOptions):
    """TorchBackend's keyword arguments. From [model]: device (required: never guessed),
    precision, cuda_graph -> cuda_graph_batch = 1; threads is not taken."""

    MODEL_KEYS: ClassVar[tuple[str, ...]] = ("device", "precision", "cuda_graph")

    device: str | None = None  # 'cpu' | 'cuda' | 'cuda:i'; None is refused by the backend, by name
    precision: Literal["fp32", "fp16"] = "fp32"  # fp16 needs CUDA
    channels_last: bool | None = None  # None = True on CUDA
    cuda_graph_batch: Annotated[int, msgspec.Meta(ge=1, le=4096)] | None = None  # capture for this batch size
    warmup: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 3  # iterations before the capture

    @classmethod
    def from_model(cls, model: Any) -> TorchOptions:
        return cls(device=model.device, precision=model.precision, cuda_graph_batch=1 if model.cuda_graph else None)


@register_backend("torch", TorchOptions)
class TorchBackend(Backend):
    """A classifier checkpoint in eval mode.

    Options: device ('cpu' | 'cuda' | 'cuda:i', required), precision ('fp32' | 'fp16', fp16 on
    CUDA only: half weights and inputs), channels_last (default: True on CUDA), cuda_graph_batch
    (capture a CUDA graph for this batch size after warm-up and replay it; other batch sizes run
    eagerly), warmup (iterations before capture).
    """

    suffixes = (".pt", ".pth")
    artifact_kind = "a training checkpoint"

    def __init__(
        self,
        artifact: str | Path,
        device: str | None = None,
        precision: str = "fp32",
        channels_last: bool | None = None,
        cuda_graph_batch: int | None = None,
        warmup: int = 3,
    ) -> None:
        if device is None:
            raise BackendError("torch: give the device explicitly: device='cpu' or 'cuda[:i]'")
        if precision not in ("fp32", "fp16"):
            raise BackendError(f"torch: precision={precision!r}; expected 'fp32' or 'fp16'")
        reason = unavailable_reason()
        if reason:
            raise BackendError(f"torch backend unavailable: {reason}")
        import torch

        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise BackendError(f"torch: device={device!r}; expected 'cpu' or 'cuda[:i]'") from exc
        if dev.type not in ("cpu", "cuda"):
            raise BackendError(f"torch: device={device!r}; expected 'cpu' or 'cuda[:i]'")
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise BackendError(f"torch: device={device!r} requested but no CUDA GPU is available to this torch ({torch.__version__})")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise BackendError(f"torch: device={device!r} but only {torch.cuda.device_count()} CUDA device(s)")
        if precision == "fp16" and dev.type != "cuda":
            raise BackendError("torch: precision='fp16' needs a CUDA device; use precision='fp32' on the CPU")
        if cuda_graph_batch is not None and (dev.type != "cuda" or int(cuda_graph_batch) < 1):
            raise BackendError(f"torch: cuda_graph_batch={cuda_graph_batch!r} needs a CUDA device and a batch size >= 1")

        from streamcad.checkpoint import load_checkpoint, read_classifier  # ArtifactError
        from streamcad.nets import build_model

        ckpt = load_checkpoint(artifact, map_location="cpu")
        where = Path(artifact).name
        info = read_classifier(ckpt, where)  # the one checkpoint contract (streamcad.checkpoint)
        try:
            model = build_model(**ckpt["model_config"])
            model.load_state_dict(ckpt["model"], strict=True)
        except (RuntimeError, TypeError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{where}: weights do not fit model_config {ckpt['model_config']}: {exc}") from exc
        temperature = info.temperature
        self.temperature = temperature
        self.preprocess = dict(info.preprocess)
        self.input_size = int(self.preprocess["size"])
        self.precision = precision
        self.device = str(dev)
        self._torch = torch
        self._dev = dev
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        self._channels_last = (dev.type == "cuda") if channels_last is None else bool(channels_last)
        model = model.eval().to(dev)
        if precision == "fp16":
            model = model.half()
        if self._channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._model = model
        # the exported graph's 'embedding' (streamcad.nets.forward_gate): one pass gives all three outputs
        self.embedding_dim = sum(int(f["num_chs"]) for f in model.feature_info) + int(model.embed_dim)
        self._graph: Any = None
        self._graph_batch = int(cuda_graph_batch) if cuda_graph_batch else None
        if self._graph_batch:
            self._capture(self._graph_batch, max(1, int(warmup)))
        log.info("torch: %s S=%d %s on %s (T=%.3f)", where, self.input_size, precision, self.device, temperature)

    def _prepare(self, x: Any) -> Any:
        x = x.to(self._dev, dtype=self._dtype, non_blocking=True)
        return x.contiguous(memory_format=self._torch.channels_last) if self._channels_last else x

    def _forward(self, x: Any) -> tuple[Any, Any, Any]:
        from streamcad.nets import forward_gate

        logits, sal, emb = forward_gate(self._model, x)
        return logits.float() / self.temperature, sal.float(), emb.float()  # same as the exported ONNX: logits / T

    def _capture(self, n: int, warmup: int) -> None:
        """Warm up on a side stream, then capture one forward pass into a CUDA graph."""
        torch = self._torch
        S = self.input_size
        self._static_in = torch.zeros((n, 1, S, S), device=self._dev, dtype=self._dtype)
        if self._channels_last:
            self._static_in = self._static_in.contiguous(memory_format=torch.channels_last)
        side = torch.cuda.Stream(device=self._dev)
        side.wait_stream(torch.cuda.current_stream(self._dev))
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(warmup):
                self._forward(self._static_in)
        torch.cuda.current_stream(self._dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            self._static_out = self._forward(self._static_in)
        self._graph = graph

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._model is None:
            raise BackendError("torch: infer() called after close()")
        batch = self.check_batch(batch)
        torch = self._torch
        src = torch.from_numpy(batch)
        with torch.inference_mode():
            if self._graph is not None and batch.shape[0] == self._graph_batch:
                self._static_in.copy_(src.to(self._dev, non_blocking=True))
                self._graph.replay()
                logits, sal, emb = self._static_out
            else:
                logits, sal, emb = self._forward(self._prepare(src))
            logits = logits.cpu().numpy()  # .cpu() synchronizes with the stream
            sal = sal.cpu().numpy()
            emb = emb.cpu().numpy()
        if logits.shape != (batch.shape[0], N_CLASSES):
            raise BackendError(f"torch: model returned logits {logits.shape}; expected ({batch.shape[0]}, {N_CLASSES})")
        return {"logits": np.ascontiguousarray(logits, np.float32), "saliency": np.ascontiguousarray(sal, np.float32),
                "embedding": np.ascontiguousarray(emb, np.float32)}

    def close(self) -> None:
        self._model = None
        self._graph = None
        if getattr(self, "_dev", None) is not None and self._dev.type == "cuda":
            self._torch.cuda.empty_cache()
