"""The Backend interface and the one registry of inference backends.

    artifact file --load_backend(name, path, **options)--> Options (msgspec, strict) --> Backend
    [model] section --options_from_model(config.model)--> that backend's Options --> Backend
    float32 (N, 1, S, S) --backend.infer()--> {'logits': (N, 3) float32, 'saliency': (N, 1, h, w) float32}
                                              + 'embedding': (N, D) float32 when the model has it
                                                (embedding_dim = D, else None; the out-of-domain gate's input)

The registry maps a name to (Backend class, Options type). A backend's Options is a frozen
msgspec Struct of its constructor's keyword arguments (unknown keys and out-of-range values are
errors naming the key and what the backend accepts); ``Options.from_model`` maps the ``[model]``
keys the backend honours (``MODEL_KEYS``) onto it. A ``[model]`` key it does not honour, set to
anything but its default, is a ConfigError naming the key, the backend and the keys it takes
(e.g. ``model.cuda_graph = true`` with onnxruntime); after loading, ``check_backend`` refuses a
device or precision the backend does not really run on (``model.precision = "fp16"`` on an
ONNX Runtime session). Nothing falls back silently.

Built-in backends live in sibling modules that import their engine (onnxruntime, torch,
tensorrt) only when a backend is loaded, so importing this package stays cheap and never
imports torch or TensorRT.

How to add a backend: one module with

1. ``class MyOptions(BackendOptions)``: its keyword arguments as typed fields with defaults
   (constraints as ``Annotated[int, msgspec.Meta(ge=1)]``), ``MODEL_KEYS`` (the ``[model]`` keys
   it honours, of ``threads``, ``device``, ``precision``, ``cuda_graph``) and ``from_model(m)``
   (those keys -> an instance);
2. ``@register_backend("name", MyOptions)`` on a ``Backend`` subclass whose ``__init__(artifact,
   **fields of MyOptions)`` loads the artifact; implement ``infer`` (the contract above) and
   ``close``, and set ``input_size``, ``fixed_batch``, ``embedding_dim`` and the ``device`` and
   ``precision`` it really runs on (``check_backend`` compares them with ``[model]``);
3. a built-in one also goes into ``_BUILTIN`` below so ``load_backend`` finds it without
   importing the others (a third-party one is found once its module is imported).

A class registered without an Options type gets one derived from its ``__init__`` signature.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import numpy as np

from streamcad.errors import ArtifactError, BackendError, ConfigError
from streamcad.extras import install_command

__all__ = [
    "Backend",
    "BackendOptions",
    "register_backend",
    "backend_options_type",
    "load_backend",
    "options_from_model",
    "check_backend",
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
    # True: the artifact fixes the precision (a TensorRT engine is built fp16 or fp32), so the
    # default model.precision = 'fp32' means "the artifact's"; only an explicit fp16 is checked
    artifact_precision: bool = False
    precision_note: str = ""  # said when model.precision differs from what it runs: what to use instead

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
_REGISTRY: dict[str, tuple[type[Backend], type[BackendOptions]]] = {}

# the [model] keys a backend may honour, and what each means (for the error naming one it does not)
MODEL_KEYS: dict[str, str] = {
    "threads": "ONNX Runtime's intra-op thread count",
    "device": "the device to run on",
    "precision": "the arithmetic precision",
    "cuda_graph": "replay a captured CUDA graph",
}


class BackendOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A backend's options: the keyword arguments of its constructor, typed and checked.

    Subclasses declare the fields, ``MODEL_KEYS`` (the [model] keys they honour) and
    ``from_model`` (those keys -> options). The base honours none and has no fields."""

    MODEL_KEYS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_model(cls, model: Any) -> BackendOptions:
        """The [model] section (streamcad.config.ModelConfig) -> these options."""
        return cls()


def _options_from_signature(cls: type[Backend]) -> type[BackendOptions]:
    """An Options Struct from ``cls.__init__``'s keyword arguments (a plug-in that declares none)."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except (NameError, TypeError):
        hints = {}
    fields = []
    for i, (pname, p) in enumerate(inspect.signature(cls.__init__).parameters.items()):
        if i < 2 or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):  # self, artifact
            continue
        typ = hints.get(pname, Any)
        fields.append((pname, typ) if p.default is p.empty else (pname, typ, p.default))
    return msgspec.defstruct(f"{cls.__name__}Options", fields, bases=(BackendOptions,),
                             forbid_unknown_fields=True, frozen=True, kw_only=True)


def register_backend(name: str, options: type[BackendOptions] | None = None) -> Callable[[type[Backend]], type[Backend]]:
    """Class decorator: make a Backend subclass loadable as `load_backend(name, ...)`, built from
    `options` (a BackendOptions subclass; None = derived from its __init__ signature)."""

    def deco(cls: type[Backend]) -> type[Backend]:
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise TypeError(f"register_backend({name!r}) expects a Backend subclass; got {cls!r}")
        if options is not None and not (isinstance(options, type) and issubclass(options, BackendOptions)):
            raise TypeError(f"register_backend({name!r}, options) expects a BackendOptions subclass; got {options!r}")
        if name in _REGISTRY and _REGISTRY[name][0] is not cls:
            raise BackendError(f"backend name {name!r} is already registered by {_REGISTRY[name][0].__qualname__}")
        cls.name = name
        _REGISTRY[name] = (cls, options or _options_from_signature(cls))
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


def _entry(name: str, engine: bool = True) -> tuple[type[Backend], type[BackendOptions]]:
    """(class, Options) of `name`; engine=False: without requiring its engine package (options only)."""
    if name not in _BUILTIN:
        if name in _REGISTRY:
            return _REGISTRY[name]
        raise BackendError(f"unknown backend {name!r}; expected one of {', '.join(backend_names())}")
    if not engine:
        if name not in _REGISTRY:
            importlib.import_module(_BUILTIN[name])  # the adapter modules import their engine lazily
        return _REGISTRY[name]
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


def backend_options_type(name: str) -> type[BackendOptions]:
    """The Options type backend `name` is built from (imports its module, never its engine)."""
    return _entry(name, engine=False)[1]


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


def _accepts(opts_type: type[BackendOptions]) -> str:
    return ", ".join(opts_type.__struct_fields__) or "none"


def _convert_options(name: str, opts_type: type[BackendOptions], options: dict[str, Any]) -> BackendOptions:
    """Keyword options -> the backend's Options; BackendError naming the key and what it accepts."""
    try:
        return msgspec.convert(options, opts_type)
    except msgspec.ValidationError as exc:
        text, sep, where = str(exc).rpartition(" - at `$.")
        text, where = (text, where.rstrip("`")) if sep else (str(exc), "")
        if text.startswith("Object contains unknown field"):
            unknown = sorted(set(options) - set(opts_type.__struct_fields__))
            raise BackendError(f"backend {name!r}: bad options {unknown} (unknown option {unknown[0]!r}); "
                               f"expected some of [{_accepts(opts_type)}]") from None
        key = where.split(".")[0].split("[")[0]
        shown = f"{key}={options[key]!r}" if key in options else (key or "options")
        raise BackendError(f"backend {name!r}: {shown}: {text}") from None
    except ValueError as exc:  # an Options __post_init__ refusing a combination
        raise BackendError(f"backend {name!r}: {exc}") from None


def options_from_model(model: Any) -> BackendOptions:
    """The [model] section (streamcad.config.ModelConfig) -> the Options of its backend.

    A [model] key the backend does not honour (its Options' MODEL_KEYS), set to anything but its
    default, is a ConfigError naming the key, the backend and the keys it takes: never ignored."""
    name = model.backend
    opts_type = backend_options_type(name)
    defaults = {f.name: f.default for f in msgspec.structs.fields(type(model))}
    for key, meaning in MODEL_KEYS.items():
        value = getattr(model, key)
        if key not in opts_type.MODEL_KEYS and value != defaults.get(key):
            takes = ", ".join(f"model.{k}" for k in opts_type.MODEL_KEYS) or "none of them"
            raise ConfigError(f"model.{key} = {_toml(value)}: {meaning}; backend {name!r} does not take it "
                              f"(leave it out); {name} takes {takes} (of {', '.join(MODEL_KEYS)})")
    opts = opts_type.from_model(model)  # a Struct's constructor checks no types: convert does
    try:
        return _convert_options(name, opts_type, msgspec.structs.asdict(opts))
    except BackendError as exc:
        raise ConfigError(f"model: {exc}") from None


def _toml(value: Any) -> str:
    return "true" if value is True else "false" if value is False else repr(value)


def _same_device(wanted: str, got: str) -> bool:
    norm = {"cuda": "cuda:0"}
    return norm.get(wanted, wanted) == norm.get(got, got)


def check_backend(model: Any, backend: Backend, artifact: str | Path) -> None:
    """Refuse a loaded backend that does not run on the [model] section's device and precision
    (BackendError naming the key, what was asked and what it runs): never a silent CPU / FP32 run."""
    name, where = backend.name, Path(artifact).name
    problem = None
    if model.precision != backend.precision and not (backend.artifact_precision and model.precision == "fp32"):
        problem = (f"model.precision = {model.precision!r} but backend {name!r} runs {where} in {backend.precision}"
                   + (f"; {backend.precision_note}" if backend.precision_note else ""))
    elif model.device is not None and not _same_device(model.device, backend.device):
        problem = f"model.device = {model.device!r} but backend {name!r} runs {where} on {backend.device}"
    if problem:
        raise BackendError(problem + "; refusing to run on something else than asked")


def load_backend(name: str, artifact: str | Path, **options: Any) -> Backend:
    """Load `artifact` with the backend `name`, built from its Options (the keyword arguments,
    checked against the backend's Options type: unknown keys and bad values are named).

    Raises BackendError (unknown / unavailable backend, bad option, unavailable device or
    precision) or ArtifactError (missing file, wrong kind of file for this backend, model that
    breaks the I/O contract). Does not verify the manifest: use streamcad.manifest.load_model.
    """
    cls, opts_type = _entry(name)
    path = Path(artifact)
    if cls.suffixes and path.suffix.lower() not in cls.suffixes:
        raise ArtifactError(
            f"backend {name!r} expects {cls.artifact_kind or 'a file'} ({', '.join(cls.suffixes)}); got {path.name!r}"
        )
    if not path.is_file():
        raise ArtifactError(f"model file not found: {path}")
    opts = _convert_options(name, opts_type, options)
    return cls(path, **{f: getattr(opts, f) for f in opts_type.__struct_fields__})
