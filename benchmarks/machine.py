"""The machine, written next to every number: CPU model and cores, memory, GPU and driver,
and the versions of every library on the measured path."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import subprocess

__all__ = ["machine_info"]

_LIBS = ("numpy", "opencv-python-headless", "onnxruntime", "onnxruntime-gpu", "pyzmq", "msgspec", "torch", "tensorrt")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpus() -> list[dict]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2], "compute_capability": parts[3]})
    return gpus


def machine_info() -> dict:
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    libs = {}
    for name in _LIBS:
        try:
            libs[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": mem_gb,
        "gpus": _gpus(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": libs,
    }
