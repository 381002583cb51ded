"""streamcad: real-time breast-ultrasound video analysis.

source -> ROI crop -> quality flags -> inference backend -> smoothing -> ZeroMQ publish.
Importing this package never imports torch or TensorRT.
"""

from streamcad.errors import StreamcadError
from streamcad.preprocess import PreprocessSpec, preprocess

__version__ = "0.1.0"

__all__ = ["__version__", "StreamcadError", "PreprocessSpec", "preprocess"]
