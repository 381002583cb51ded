"""Which optional part of streamcad needs what, and the install command that works here.

streamcad is not on a package index: it is installed from its checkout (`make demo` does
`pip install -e .` there). So an install hint names the checkout this code runs from and the
interpreter running it, e.g. `/repo/.venv/bin/python -m pip install -e '/repo[eval]'`, a
command that works as printed. Standard library only (the CLI imports it before anything else).

Extras (pyproject.toml): `cpu` (onnxruntime, what `make demo` installs), `gpu`
(onnxruntime-gpu, instead of `cpu`: the two wheels provide the same `onnxruntime` package and
must not be installed together), `eval` (scikit-learn, scipy, matplotlib: `streamcad
evaluate`), `train` (torch and the rest of training; includes `eval`), `tensorrt`, `dev`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

__all__ = ["EXTRA_OF_MODULE", "CHECKOUT", "install_command", "missing_module_message"]

# top-level module -> the extra that provides it
EXTRA_OF_MODULE: dict[str, str] = {
    "onnxruntime": "cpu",
    "aiohttp": "viewer",
    "pyigtl": "igtl",
    "sklearn": "eval",
    "scipy": "eval",
    "matplotlib": "eval",
    "torch": "train",
    "onnx": "train",
    "tensorrt": "tensorrt",
    "cuda": "tensorrt",
    "jsonschema": "dev",
    "pytest": "dev",
    "hypothesis": "dev",
}

# The checkout this code runs from (an editable install), or None for an installed wheel.
_ROOT = Path(__file__).resolve().parents[1]
CHECKOUT: Path | None = _ROOT if (_ROOT / "pyproject.toml").is_file() else None

# PyTorch's own index of CPU-only wheels; PyPI's Linux torch wheel is the multi-GB CUDA build
_TORCH_CPU = (
    " (on a machine without an NVIDIA GPU run this first, for the CPU build of torch: "
    f"{shlex.quote(sys.executable)} -m pip install torch --index-url https://download.pytorch.org/whl/cpu)"
)


def install_command(extra: str) -> str:
    """The pip command that installs `extra` into the running interpreter's environment."""
    target = f"{CHECKOUT}[{extra}]" if CHECKOUT is not None else f"/path/to/streamcad-checkout[{extra}]"
    editable = "-e " if CHECKOUT is not None else ""
    return f"{shlex.quote(sys.executable)} -m pip install {editable}{shlex.quote(target)}"


def missing_module_message(module: str, extra: str | None = None) -> str | None:
    """One line for a missing optional module: what is missing and the command that installs it.
    `extra` overrides the module's own extra (`streamcad train` wants the whole train extra even
    when scikit-learn is the first thing missing). None when `module` is not an optional one."""
    top = module.split(".")[0]
    if top not in EXTRA_OF_MODULE:
        return None
    extra = extra or EXTRA_OF_MODULE[top]
    where = "" if CHECKOUT is not None else " (from the streamcad checkout the wheel was built from)"
    msg = f"needs the Python module {top!r}, which is not installed; install the {extra!r} extra{where}: {install_command(extra)}"
    if extra == "train":
        msg += _TORCH_CPU
    if extra == "tensorrt":
        msg += " (NVIDIA GPU machines only)"
    return msg
