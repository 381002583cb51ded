"""Inference backends: one registry, engines imported lazily.

    load_backend('onnxruntime', 'model.onnx', providers=('cpu',)) -> Backend
    load_backend('torch', 'model.pt', device='cuda', precision='fp16') -> Backend
    load_backend('tensorrt', 'model.engine') -> Backend

Use streamcad.manifest.load_model to verify the artifact against its manifest first.
"""

from streamcad.backends.base import (
    Backend,
    available_backends,
    backend_names,
    load_backend,
    register_backend,
)

__all__ = ["Backend", "available_backends", "backend_names", "load_backend", "register_backend"]
