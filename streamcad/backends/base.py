"""The Backend interface and the one registry of inference backends.

    artifact file --load_backend(name, path, **options)--> Backend
    float32 (N, 1, S, S) --backend.infer()--> {'logits': (N, 3) float32, 'saliency': (N, 1, h, w) float32}
                                              + 'embedding': (N, D) float32 when the model has it
                                                (embedding_dim = D, else None; the out-of-domain gate's input)

Built-in backends live in sibling modules that import their engine (onnxruntime, torch,
tensorrt) only when a backend is loaded, so importing this package stays cheap and never
imports torch or TensorRT. Unknown names, wrong artifact kinds and unavailable devices are
errors that say what was expected; nothing falls back silently.

How to add a backend: subclass ``Backend`` in a module of its own, decorate it with
``@register_backend("name")`` (and add the module to ``_BUILTIN`` below so ``load_backend``
finds it without importing the others), take its options as keyword arguments (load_backend
refuses unknown ones by name), implement ``infer`` (the contract above) and ``close``, and set
``input_size``, ``fixed_batch``, ``embedding_dim`` and the ``device`` and ``precision`` it really
runs on: the pipeline compares them with the ``[model]`` config and refuses a mismatch.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from streamcad.errors import ArtifactError, BackendError
from streamcad.extras import install_command

__all__ = [
    "Backend",
    "register_backend",
    "load_backend",
    "available_backends",
    "backend_names",
    "OUTPUT_NAMES",
]

log = logging.getLogger(__name__)

OUTPUT_NAMES = ("logits", "saliency")  # the model I/O contract's outputs, in this order
EMBEDDING_NAME = "embedding"  # optional third output (N, D): what streamcad.gate_ood scores
N_CLASSES = 3  # ("normal", "benign", "malignant")


class Backend(ABC):
    """One loaded model on one device. Subclasses set the attributes in __init__.

    Attributes: name (registry name), input_size (S), precision ('fp32' | 'fp16'),
    device ('cpu' | 'cuda' | 'cuda:i'), fixed_batch (None = any N), suffixes (artifact file suffixes it accepts),
    preprocess (a PreprocessSpec dict carried by the artifact itself, or None).
    """

    name: str = ""
    suffixes: tuple[str, ...] = ()
    artifact_kind: str = ""  # human words for the accepted artifact, used in error messages
    input_size: int = 0
    precision: str = "fp32"
    device: str = "cpu"
    preprocess: dict | None = None  # only backends whose artifact embeds it (torch checkpoints)
    fixed_batch: int | None = None  # the only batch size the artifact accepts, or None for any N
    embedding_dim: int | None = None  # D of the 'embedding' output; None = the model has none

    @abstractmethod
    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """float32 (N, 1, S, S) -> {'logits': (N, 3) float32, 'saliency': (N, 1, h, w) float32}."""

    def close(self) -> None:  # noqa: B027 (optional hook: the default has nothing to release)
        """Release the session / engine. Idempotent."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} S={self.input_size} {self.precision} on {self.device}>"

    # Shared input check: every backend refuses the same wrong batches with the same words.
    def check_batch(self, batch: Any, fixed_batch: int | None = None) -> np.ndarray:
        S = self.input_size
        if not isinstance(batch, np.ndarray):
            raise BackendError(f"{self.name}: expected a numpy float32 array (N, 1, {S}, {S}); got {type(batch).__name__}")
        if batch.dtype != np.float32 or batch.ndim != 4 or batch.shape[1:] != (1, S, S) or batch.shape[0] < 1:
            raise BackendError(
                f"{self.name}: expected a float32 batch of shape (N, 1, {S}, {S}) with N >= 1; "
                f"got {batch.dtype} {batch.shape}"
            )
        if fixed_batch is not None and batch.shape[0] != fixed_batch:
            raise BackendError(
                f"{self.name}: this model has a fixed batch size {fixed_batch}; got a batch of {batch.shape[0]}"
            )
        return np.ascontiguousarray(batch)


# name -> module that registers it when imported (lazy: the engine is imported only on use)
_BUILTIN: dict[str, str] = {
    "onnxruntime": "streamcad.backends.onnxruntime",
    "torch": "streamcad.backends.torch",
    "tensorrt": "streamcad.backends.tensorrt",
}
# the third-party package each built-in backend needs, and how to install it
_REQUIRES: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime", f"install the 'cpu' extra: {install_command('cpu')}, or 'gpu' for onnxruntime-gpu"),
    "torch": ("torch", f"install the 'train' extra: {install_command('train')}"),
    "tensorrt": ("tensorrt", f"install the 'tensorrt' extra: {install_command('tensorrt')}"),
}
_REGISTRY: dict[str, type[Backend]] = {}


def register_backend(name: str) -> Callable[[type[Backend]], type[Backend]]:
    """Class decorator: make a Backend subclass loadable as `load_backend(name, ...)`."""

    def deco(cls: type[Backend]) -> type[Backend]:
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise TypeError(f"register_backend({name!r}) expects a Backend subclass; got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise BackendError(f"backend name {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def backend_names() -> list[str]:
    """All known backend names (built-in and registered), sorted."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def _module_present(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def _backend_class(name: str) -> type[Backend]:
    if name not in _BUILTIN:
        if name in _REGISTRY:
            return _REGISTRY[name]
        raise BackendError(f"unknown backend {name!r}; expected one of {', '.join(backend_names())}")
    # checked even when the adapter module is already imported (and registered): the adapter
    # imports its engine lazily, so being registered says nothing about the engine being there
    pkg, how = _REQUIRES[name]
    if not _module_present(pkg):
        raise BackendError(f"backend {name!r} is unavailable: {pkg} is not installed ({how})")
    if name in _REGISTRY:
        return _REGISTRY[name]
    try:
        importlib.import_module(_BUILTIN[name])
    except ImportError as exc:
        raise BackendError(f"backend {name!r} is unavailable: cannot import {_BUILTIN[name]}: {exc}") from exc
    if name not in _REGISTRY:
        raise BackendError(f"module {_BUILTIN[name]} did not register a backend named {name!r}")
    return _REGISTRY[name]


def available_backends() -> dict[str, str | None]:
    """name -> None if the backend can be loaded here, else the reason it cannot.

    Does not import torch or TensorRT: a package is checked with importlib's finder, and a
    backend module may add a finer reason through a module-level `unavailable_reason()`.
    """
    out: dict[str, str | None] = {}
    for name in backend_names():
        if name in _BUILTIN:
            pkg, how = _REQUIRES[name]
            if not _module_present(pkg):
                out[name] = f"{pkg} not installed ({how})"
                continue
            if not _module_present(_BUILTIN[name]):
                out[name] = f"module {_BUILTIN[name]} is missing from this install"
                continue
            try:
                mod = importlib.import_module(_BUILTIN[name])
            except ImportError as exc:
                out[name] = f"{pkg} not installed or broken: {exc}"
                continue
            reason_fn = getattr(mod, "unavailable_reason", None)
            out[name] = reason_fn() if callable(reason_fn) else None
        else:
            out[name] = None
    return out


def load_backend(name: str, artifact: str | Path, **options: Any) -> Backend:
    """Load `artifact` with the backend `name`. Options are the backend's own keyword arguments.

    Raises BackendError (unknown / unavailable backend, bad option, unavailable device or
    precision) or ArtifactError (missing file, wrong kind of file for this backend, model that
    breaks the I/O contract). Does not verify the manifest: use streamcad.manifest.load_model.
    """
    cls = _backend_class(name)
    path = Path(artifact)
    if cls.suffixes and path.suffix.lower() not in cls.suffixes:
        raise ArtifactError(
            f"backend {name!r} expects {cls.artifact_kind or 'a file'} ({', '.join(cls.suffixes)}); got {path.name!r}"
        )
    if not path.is_file():
        raise ArtifactError(f"model file not found: {path}")
    try:
        inspect.signature(cls).bind(path, **options)
    except TypeError as exc:
        allowed = [p for p in inspect.signature(cls).parameters if p != "artifact"]
        raise BackendError(
            f"backend {name!r}: bad options {sorted(options)} ({exc}); expected some of {allowed}"
        ) from exc
    return cls(path, **options)
