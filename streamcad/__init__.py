"""streamcad: real-time breast-ultrasound video analysis.

source -> ROI crop -> quality flags -> inference backend -> smoothing -> ZeroMQ publish.
Importing this package never imports torch or TensorRT, and imports ZeroMQ / ONNX Runtime
only when one of the names that needs them is first used (PEP 562 lazy attributes).

    from streamcad import Subscriber          # a UI in Python
    with Subscriber("tcp://127.0.0.1:5555") as sub:
        for msg in sub: ...
"""

from importlib import import_module

from streamcad.errors import StreamcadError
from streamcad.preprocess import PreprocessSpec, preprocess

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "Subscriber": "streamcad.client",
    "Publisher": "streamcad.transport",
    "Score": "streamcad.messages",
    "Status": "streamcad.messages",
    "Pipeline": "streamcad.pipeline",
    "RunConfig": "streamcad.config",
    "load_config": "streamcad.config",
    "load_model": "streamcad.manifest",
    "load_backend": "streamcad.backends",
    "open_source": "streamcad.sources",
}

__all__ = ["__version__", "StreamcadError", "PreprocessSpec", "preprocess", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'streamcad' has no attribute {name!r}")
