"""streamcad: real-time breast-ultrasound video analysis.

source -> ROI crop -> quality flags -> inference backend -> smoothing -> ZeroMQ publish.
Importing this package never imports torch or TensorRT, and imports numpy / OpenCV / ZeroMQ /
ONNX Runtime only when one of the names that needs them is first used (PEP 562 lazy attributes):
`import streamcad` takes about a millisecond, and installs no signal handler (the command line
takes Ctrl-C over in its entry point, streamcad.__main__).

    from streamcad import Subscriber          # a UI in Python
    with Subscriber("tcp://127.0.0.1:5555") as sub:
        for msg in sub: ...
"""

import os
from importlib import import_module

# ONNX Runtime (1.2x+ on Linux/macOS) writes a telemetry event store and a device id under
# ~/.cache/Microsoft/DeveloperTools/.onnxruntime from the moment it is imported, and queues
# events for upload. Software for hospitals keeps that off: this must be set before the first
# `import onnxruntime` of the process, which is why it is here. An operator who wants the
# telemetry sets ORT_DISABLE_TELEMETRY=0 beforehand (the variable is only defaulted).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# OpenCV and the FFmpeg inside it print their own lines to fd 2, unformatted and not
# rate-limited: a dead url: feed adds "[tcp @ 0x...] Connection refused" and "[ WARN:0@...]
# ... can't be used to capture by name" at every reconnect attempt, for as long as it is down.
# streamcad says what failed in its own rate-limited lines (streamcad.sources), so by default
# OpenCV keeps only its errors (its logger reads OPENCV_LOG_LEVEL once, at its first line) and
# FFmpeg is quiet (-8 = AV_LOG_QUIET; OpenCV reads OPENCV_FFMPEG_LOGLEVEL at every FFmpeg
# open). Defaults only: an operator's own values win; `streamcad -vv` (debug) lets the native
# lines through again (_allow_native_logs). Not covered by either: libpng's "libpng error: ..."
# for a corrupt PNG (libpng prints it itself) and OpenCV's built-in AVI parser's lines.
_NATIVE_LOG_DEFAULTS = {"OPENCV_LOG_LEVEL": "ERROR", "OPENCV_FFMPEG_LOGLEVEL": "-8"}
_NATIVE_DEFAULTED = [k for k in _NATIVE_LOG_DEFAULTS if k not in os.environ]
os.environ.update({k: _NATIVE_LOG_DEFAULTS[k] for k in _NATIVE_DEFAULTED})


def _allow_native_logs() -> list[str]:
    """Undo the defaults above that this process set (an operator's own values stay): OpenCV
    and FFmpeg print their own lines again. For a debug run; call it before the first capture
    opens. Returns the variables it removed."""
    import sys

    removed = [k for k in _NATIVE_DEFAULTED if os.environ.get(k) == _NATIVE_LOG_DEFAULTS[k]]
    for k in removed:
        del os.environ[k]
    _NATIVE_DEFAULTED.clear()
    cv2 = sys.modules.get("cv2")
    if "OPENCV_LOG_LEVEL" in removed and cv2 is not None:  # its logger already read the variable
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_WARNING)
    return removed


# The tooling lives beside this package in a checkout (engines/, train/, benchmarks/ at the top of
# the repository) and inside it in a wheel (streamcad/engines, streamcad/train,
# streamcad/benchmarks: pyproject's package-dir), so a user's site-packages gets no generic
# top-level `train` or `engines`. Code imports `streamcad.engines ...` either way. Run from a
# checkout, those three names resolve to the folders beside this very package: first in the
# finder list, so that a second checkout on PYTHONPATH never mixes with an editable install's.
_HERE = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT = os.path.dirname(_HERE)
_TOOLING = ("engines", "train", "benchmarks")


class _CheckoutTooling:
    """Meta-path finder for streamcad.engines / .train / .benchmarks of a checkout (nothing else)."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        head, _, name = fullname.partition(".")
        if head != "streamcad" or name not in _TOOLING:
            return None
        import importlib.util

        folder = os.path.join(_CHECKOUT, name)
        return importlib.util.spec_from_file_location(fullname, os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])


if not os.path.isdir(os.path.join(_HERE, "engines")) and os.path.isfile(os.path.join(_CHECKOUT, "pyproject.toml")) \
        and all(os.path.isfile(os.path.join(_CHECKOUT, n, "__init__.py")) for n in _TOOLING):
    import sys as _sys

    _sys.meta_path.insert(0, _CheckoutTooling)

__version__ = "0.1.0"

# public name -> module that defines it. Every public name is lazy, so that `import streamcad`
# costs milliseconds and imports neither numpy nor OpenCV: the console script imports this
# package before its entry point (streamcad.__main__) can take over Ctrl-C.
_LAZY = {
    "StreamcadError": "streamcad.errors",
    "PreprocessSpec": "streamcad.preprocess",
    "preprocess": "streamcad.preprocess",
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

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value  # once: later lookups do not come here
        return value
    raise AttributeError(f"module 'streamcad' has no attribute {name!r}")


class _Package(type(os)):
    """`streamcad.preprocess` is the function, as it was when this package imported it eagerly;
    but importing the submodule streamcad.preprocess binds the module under that name on its
    package. This class keeps that one binding off, so the name still resolves (lazily) to the
    function."""

    def __setattr__(self, name: str, value) -> None:
        if name == "preprocess" and isinstance(value, type(os)):
            return
        super().__setattr__(name, value)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _Package
