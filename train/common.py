"""Helpers shared by SSL pretraining (train/ssl.py) and fine-tuning (train/finetune.py).

Nothing here knows about a particular model or loss: seeding, device choice, the torchrun/DDP
setup, atomic checkpoints (plain dicts; loading is streamcad.checkpoint.load_checkpoint, the
runtime's, re-exported here), the cosine schedule (a pure function), one JSON line
of metrics per epoch, a rich progress bar, mixed precision and channels_last for GPUs, the
non-finite-loss stop, the model input (`to_unit`, `normalise`: streamcad.preprocess's
normalisation on uint8 tensors), and provenance (git commit, machine: streamcad.machine's plus
torch's view).

Typical use in an epoch loop::

    rank, world, local_rank = setup_distributed()
    device = select_device("auto") if world == 1 else ...
    log = JsonlLogger(out_dir / "log.jsonl")
    for step, batch in enumerate(loader):
        lr = cosine_schedule(step, total, base_lr, warmup)
        with autocast_context(device, enabled=amp):
            loss = ...
        check_finite(loss, step)
    log.write({"epoch": epoch, "loss": ...})
    save_checkpoint(out_dir / "last.pt", {"kind": "ssl", ...})
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from streamcad.checkpoint import load_checkpoint  # the one loader, re-exported
from streamcad.errors import ArtifactError, ConfigError, StreamcadError
from streamcad.machine import machine_info as shared_machine_info
from streamcad.machine import torch_version
from streamcad.manifest import git_commit as manifest_git_commit
from streamcad.preprocess import PreprocessSpec

__all__ = [
    "NonFiniteLossError",
    "seed_everything",
    "select_device",
    "setup_distributed",
    "is_main_process",
    "get_rank",
    "get_world_size",
    "cleanup_distributed",
    "save_checkpoint",
    "load_checkpoint",
    "cosine_schedule",
    "JsonlLogger",
    "progress",
    "autocast_context",
    "maybe_channels_last",
    "check_finite",
    "to_unit",
    "normalise",
    "model_input",
    "git_commit",
    "machine_info",
]

log = logging.getLogger(__name__)


class NonFiniteLossError(StreamcadError):
    """The training loss became NaN or inf; training stops instead of writing garbage weights."""


# ----------------------------------------------------------------------------- reproducibility


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices). Does not force deterministic kernels."""
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed!r}; expected a non-negative int")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def select_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; 'cpu'; 'cuda' (or 'cuda:N'), which raises without a GPU.

    Under torchrun on CUDA, 'cuda'/'auto' pick the local rank's GPU (LOCAL_RANK).
    """
    if not isinstance(name, str):
        raise ConfigError(f"device={name!r}; expected 'auto', 'cpu' or 'cuda'")
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name!r} was asked for but no CUDA GPU is available; use 'cpu' or 'auto'")
        if name == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        try:
            index = int(name.split(":", 1)[1])
        except ValueError as exc:
            raise ConfigError(f"device={name!r}; expected 'cuda:N' with an integer N") from exc
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={name!r} but only {torch.cuda.device_count()} GPU(s) are visible")
        return torch.device("cuda", index)
    raise ConfigError(f"device={name!r}; expected 'auto', 'cpu' or 'cuda'")


# ----------------------------------------------------------------------------- distributed


def setup_distributed() -> tuple[int, int, int]:
    """Initialise the process group when launched by torchrun -> (rank, world_size, local_rank).

    torchrun sets RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT). Without them this is a
    no-op returning (0, 1, 0). Backend: nccl when CUDA is available, gloo otherwise (CPU tests).
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    try:
        rank = int(os.environ["RANK"])
        world = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise ConfigError(f"bad torchrun environment RANK/WORLD_SIZE/LOCAL_RANK: {exc}") from exc
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        log.info("distributed: rank %d/%d (local %d), backend %s", rank, world, local_rank, backend)
    return rank, world, local_rank


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (or when not distributed). Only the main process writes files and logs."""
    return get_rank() == 0


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | os.PathLike, ckpt: dict) -> Path:
    """Write a plain-dict checkpoint atomically (tmp file in the same folder + os.replace).

    A crash mid-write leaves the previous checkpoint intact. Returns the path.
    """
    if not isinstance(ckpt, dict):
        raise ArtifactError(f"checkpoint must be a plain dict; got {type(ckpt).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ----------------------------------------------------------------------------- schedule


def cosine_schedule(
    step: int, total_steps: int, base_lr: float, warmup_steps: int, min_lr: float = 0.0
) -> float:
    """Linear warmup from 0 to base_lr over warmup_steps, then cosine decay to min_lr at total_steps.

    Pure function of its arguments; steps past total_steps stay at min_lr.
    """
    if total_steps <= 0 or warmup_steps < 0 or step < 0:
        raise ConfigError(
            f"cosine_schedule(step={step}, total_steps={total_steps}, warmup_steps={warmup_steps}); "
            "expected step >= 0, total_steps > 0, warmup_steps >= 0"
        )
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t))


# ----------------------------------------------------------------------------- logging


class JsonlLogger:
    """One JSON object per line (per epoch) in `path`; mirrored to the `train` logger on rank 0.

    On non-main ranks nothing is written. Values that are numpy/torch scalars are converted.
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = None if path is None else Path(path)
        self.main = is_main_process()
        if self.path is not None and self.main:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _plain(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.item() if v.numel() == 1 else v.tolist()
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, dict):
            return {k: JsonlLogger._plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [JsonlLogger._plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    def write(self, metrics: dict) -> None:
        if not self.main:
            return
        record = self._plain(dict(metrics))
        line = json.dumps(record, allow_nan=True)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        logging.getLogger("train").info("%s", line)

    def read(self) -> list[dict]:
        """All records written so far (empty when the file does not exist)."""
        if self.path is None or not self.path.is_file():
            return []
        with open(self.path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]


@contextlib.contextmanager
def progress(total: int, description: str):
    """A rich progress bar; yields `advance(n=1, **fields)`. Disabled (no output) when stdout is
    not a TTY or this is not the main process."""
    enabled = sys.stdout.isatty() and is_main_process()
    if not enabled:
        yield lambda n=1, **fields: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields: Any) -> None:
            info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            bar.update(task, advance=n, info=info)

        yield advance


# ----------------------------------------------------------------------------- GPU configuration


def autocast_context(device: torch.device, enabled: bool, dtype: torch.dtype | None = None):
    """Mixed precision on CUDA: bf16 where supported, else fp16. On CPU `enabled=True` is an error
    (no silent precision change); `enabled=False` is a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    if device.type != "cuda":
        raise ConfigError(f"amp=True needs a CUDA device; got device {device}. Set amp=False on CPU")
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def amp_dtype(device: torch.device) -> torch.dtype:
    """The dtype autocast_context picks (fp16 needs a GradScaler, bf16 does not)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def maybe_channels_last(model: torch.nn.Module, enabled: bool = True) -> torch.nn.Module:
    """Convert to channels_last memory format when enabled, on any device: numerically identical, faster
    convolutions with CUDA's tensor cores and 1.3-1.6x on this project's CPU (it was CUDA-only, and
    silently ignored on a CPU, before 2026-12-02)."""
    return model.to(memory_format=torch.channels_last) if enabled else model


def check_finite(loss: torch.Tensor, step: int) -> None:
    """Raise NonFiniteLossError when the loss is NaN/inf, naming the step and the value."""
    value = float(loss.detach().float().item())
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"loss is {value} at step {step}; stopping (lower the learning rate, disable amp, "
            "or check the input data for NaN)"
        )


# ----------------------------------------------------------------------------- model input
# streamcad.preprocess's (x / 255 - mean) / std in two halves, because augmentation works in
# [0, 1] between them. The same formula, not the same float32 arithmetic: the runtime computes
# x * (1 / (255 std)) + (-mean / std) as one multiply-add, this divides twice, so the two differ
# by at most 2 ulp of 1 / std (tests/test_train_input.py holds it on the repo sample).


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Letterboxed uint8 images (B, S, S) -> float32 (B, 1, S, S) in [0, 1] (x / 255)."""
    if images.dtype != torch.uint8 or images.ndim != 3:
        raise ConfigError(f"images {images.dtype} of shape {tuple(images.shape)}; expected uint8 (B, S, S)")
    return images.unsqueeze(1).float() / 255.0  # (B, 1, S, S)


def normalise(x: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """[0, 1] floats (B, 1, S, S) -> (x - mean) / std with the model's PreprocessSpec."""
    return (x - spec.mean) / spec.std


def model_input(images: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 (B, S, S) -> the normalised float32 model input (B, 1, S, S), no augmentation."""
    return normalise(to_unit(images), spec)


# ----------------------------------------------------------------------------- provenance


def git_commit() -> str:
    """The repository's HEAD commit (+ '-dirty' when tracked files changed), or 'unknown':
    streamcad.manifest.git_commit, in the training records' format."""
    return manifest_git_commit(Path(__file__).resolve().parents[1], dirty=True) or "unknown"


def machine_info() -> dict:
    """Where a number was measured: streamcad.machine.machine_info (host, CPU, cores, memory,
    GPUs, library versions) plus what torch sees (threads, version, CUDA, GPU) and the time.
    `processor` and `cpu_count` repeat `cpu` and `cores` under the names training records have
    always used (train.experiment's tables and the model cards read them)."""
    info = shared_machine_info()
    info.update({
        "processor": info["cpu"],
        "cpu_count": info["cores"],
        "torch_threads": torch.get_num_threads(),
        "torch": torch_version(),
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return info


def dataclass_from_dict(cls, d: dict, what: str):
    """Build the frozen config dataclass `cls` from a plain dict (a checkpoint's or a file's):
    unknown keys and wrong types are ConfigErrors naming the key. Fields are annotated with the
    plain names int/float/bool/str (``from __future__ import annotations`` keeps them strings)."""
    from dataclasses import fields

    from streamcad.errors import ConfigError

    types = {f.name: f.type for f in fields(cls)}
    unknown = sorted(set(d) - set(types))
    if unknown:
        raise ConfigError(f"unknown {what} config key(s) {unknown}; expected some of {sorted(types)}")
    for k, v in d.items():
        want = {"int": int, "float": (int, float), "bool": bool, "str": str}[types[k]]
        if (isinstance(v, bool) and types[k] != "bool") or not isinstance(v, want):
            raise ConfigError(f"{what} config key {k!r}={v!r}; expected {types[k]}")
    return cls(**d)
