"""The machine a number was measured on, in one place: `machine_info()` is the dict that
benchmarks write next to every number, training writes into result.json and `streamcad info`
prints. Callers add their own keys on top of it (training: torch's threads, CUDA and GPU as
torch sees them; `info`: backends and ONNX Runtime providers).

    /proc/cpuinfo, os, platform     --> hostname, platform, python, cpu, cores, affinity_cores, memory_gb
    nvidia-smi (if on PATH)         --> gpus [{index, name, driver, memory_mib, memory, compute_capability}],
                                        gpu_error (None, or why there is no GPU list)
    package metadata                --> libraries {distribution: version} (installed ones only)

Standard library only, and nothing is imported to learn its version: versions come from package
metadata, torch's from the module itself only when something else already imported it
(`torch_version`), so `streamcad info` and the benchmarks never load torch.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys

__all__ = ["LIBRARIES", "machine_info", "cpu_model", "gpus", "parse_nvidia_smi", "package_version", "torch_version"]

# distributions on the measured paths (runtime, export, training); absent ones are left out
LIBRARIES = ("streamcad", "numpy", "opencv-python-headless", "opencv-python", "onnxruntime", "onnxruntime-gpu",
             "onnx", "pyzmq", "msgspec", "rich", "scikit-learn", "torch", "tensorrt")
# other wheels that provide the same module as the named one (package_version falls back to them)
_ALTERNATIVES = {
    "opencv-python-headless": ("opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python"),
    "onnxruntime": ("onnxruntime-gpu",),
}
_NVIDIA_SMI_FIELDS = "index,name,driver_version,memory.total,compute_cap"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):  # no sysconf names on this OS
        return None


def parse_nvidia_smi(text: str) -> list[dict]:
    """Lines of `nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap
    --format=csv,noheader,nounits` -> one dict per GPU. `memory` repeats memory_mib with its unit
    (the form benchmark results have always carried)."""
    out = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        index, name, driver, mib, cc = parts[0], ",".join(parts[1:-3]), parts[-3], parts[-2], parts[-1]
        out.append({"index": int(index), "name": name, "driver": driver, "memory_mib": mib,
                    "memory": f"{mib} MiB", "compute_capability": cc})
    return out


def gpus() -> tuple[list[dict], str | None]:
    """The GPUs nvidia-smi lists -> (gpus, None), or ([], why there is no list)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "nvidia-smi not found"
    try:
        r = subprocess.run([exe, f"--query-gpu={_NVIDIA_SMI_FIELDS}", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"nvidia-smi failed: {exc}"
    if r.returncode != 0:
        return [], f"nvidia-smi exit {r.returncode}: {r.stderr.strip() or r.stdout.strip()}"
    return parse_nvidia_smi(r.stdout), None


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_version(dist: str) -> str | None:
    """Installed version of a distribution from its metadata (nothing imported), trying the
    wheels that provide the same module (onnxruntime-gpu for onnxruntime, ...); None if absent."""
    for name in (dist, *_ALTERNATIVES.get(dist, ())):
        version = _dist_version(name)
        if version is not None:
            return version
    return None


def torch_version() -> str | None:
    """torch's version without importing it: the loaded module's when something already imported
    torch, else the installed distribution's; None when neither."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "__version__"):
        return str(torch.__version__)  # TorchVersion is not a plain str: weights_only loads refuse it
    return _dist_version("torch")


def machine_info() -> dict:
    """Where a number was measured, as a JSON-ready dict (the keys in the module docstring)."""
    gpu_list, gpu_error = gpus()
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": _memory_gb(),
        "gpus": gpu_list,
        "gpu_error": gpu_error,
        "libraries": {d: v for d in LIBRARIES if (v := _dist_version(d)) is not None},
    }
