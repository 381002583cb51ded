"""Inference backends: one registry of name -> (Backend class, Options type), engines imported lazily.

    load_backend('onnxruntime', 'model.onnx', providers=('cpu',)) -> Backend
    load_backend('torch', 'model.pt', device='cuda', precision='fp16') -> Backend
    load_backend('tensorrt', 'model.engine') -> Backend
    options_from_model(config.model) -> the configured backend's Options (its [model] keys)

Each backend's options are a msgspec Struct of its own (OnnxRuntimeOptions, TorchOptions,
TensorRTOptions): unknown keys and bad values are errors naming the key and what the backend
accepts. How to add a backend (one module: the class, its Options, one register call): see
streamcad.backends.base. Use streamcad.manifest.load_model to verify the artifact against its
manifest first.
"""

from streamcad.backends.base import (
    Backend,
    BackendOptions,
    available_backends,
    backend_names,
    backend_options_type,
    check_backend,
    load_backend,
    options_from_model,
    register_backend,
)

__all__ = [
    "Backend",
    "BackendOptions",
    "available_backends",
    "backend_names",
    "backend_options_type",
    "check_backend",
    "load_backend",
    "options_from_model",
    "register_backend",
]
