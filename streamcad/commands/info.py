"""`streamcad info [--json]`: versions, available backends (with reasons), ORT providers, GPUs.

Never imports torch or TensorRT just to report them: versions come from package metadata, GPUs
from nvidia-smi; torch.cuda is asked only when torch is installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import platform
import shutil
import subprocess
import sys

log = logging.getLogger(__name__)

HELP = "versions, available backends and GPUs"

_DISTS = {
    "numpy": "numpy",
    "opencv": "opencv-python-headless",
    "onnxruntime": "onnxruntime",
    "pyzmq": "pyzmq",
    "msgspec": "msgspec",
    "rich": "rich",
    "torch": "torch",
    "tensorrt": "tensorrt",
    "onnx": "onnx",
    "scikit-learn": "scikit-learn",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        if dist == "opencv-python-headless":  # other OpenCV wheels provide the same cv2
            for alt in ("opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python"):
                try:
                    return importlib.metadata.version(alt)
                except importlib.metadata.PackageNotFoundError:
                    continue
        return None


def _nvidia_smi() -> list[dict] | str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "nvidia-smi not found"
    try:
        r = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total,driver_version,compute_cap", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=15, check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi failed: {exc}"
    if r.returncode != 0:
        return f"nvidia-smi exit {r.returncode}: {r.stderr.strip() or r.stdout.strip()}"
    gpus = []
    for line in r.stdout.strip().splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) >= 5:
            gpus.append({"index": int(parts[0]), "name": parts[1], "memory_mib": parts[2], "driver": parts[3], "compute_capability": parts[4]})
    return gpus


def _torch_cuda() -> dict | str:
    try:
        if importlib.util.find_spec("torch") is None:
            return "torch not installed"
        import torch  # only here: torch is installed, and the user asked for the full report
    except ImportError as exc:  # installed but broken (or blocked)
        return f"torch not importable: {exc}"

    if not torch.cuda.is_available():
        return f"torch {torch.__version__}: no CUDA device"
    return {
        "cuda": torch.version.cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }


def collect() -> dict:
    """Everything `info` reports, as a JSON-ready dict."""
    import streamcad
    from streamcad.backends import available_backends

    try:
        import onnxruntime as ort

        providers: list[str] | str = ort.get_available_providers()
    except ImportError as exc:
        providers = f"onnxruntime not importable: {exc}"
    return {
        "streamcad": streamcad.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {k: _version(d) for k, d in _DISTS.items()},
        "backends": available_backends(),
        "onnxruntime_providers": providers,
        "gpus": _nvidia_smi(),
        "torch_cuda": _torch_cuda(),
    }


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    con = Console()
    con.print(f"streamcad {info['streamcad']}  python {info['python']}  {info['platform']}")
    t = Table("package", "version")
    for k, v in info["versions"].items():
        t.add_row(k, v or "[dim]not installed[/dim]")
    con.print(t)
    t = Table("backend", "status")
    for k, v in info["backends"].items():
        t.add_row(k, "[green]available[/green]" if v is None else f"[yellow]unavailable[/yellow]: {escape(v)}")
    con.print(t)
    prov = info["onnxruntime_providers"]
    con.print("onnxruntime providers: " + escape(", ".join(prov) if isinstance(prov, list) else prov))
    gpus = info["gpus"]
    if isinstance(gpus, list) and gpus:
        for g in gpus:
            con.print(f"GPU {g['index']}: {g['name']} {g['memory_mib']} MiB, driver {g['driver']}, sm {g['compute_capability']}")
    else:
        con.print(escape(f"GPUs: {gpus or 'none'}"))
    con.print(escape(f"torch CUDA: {info['torch_cuda']}"))
    return 0
