"""streamcad.machine: the one machine block (benchmarks' results, training records, `streamcad
info`), checked against what the system says through other routes, and the keys each of the
three callers has always written."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streamcad.machine import machine_info, parse_nvidia_smi

REPO = Path(__file__).resolve().parents[1]

# what each caller wrote before the one definition (results JSON, result.json, info --json)
BENCH_KEYS = {"cpu", "cores", "affinity_cores", "memory_gb", "gpus", "python", "platform", "libraries"}
TRAIN_KEYS = {"hostname", "platform", "processor", "cpu_count", "torch_threads", "python", "torch", "cuda", "gpu", "time"}
INFO_KEYS = {"streamcad", "python", "platform", "versions", "backends", "onnxruntime_providers", "gpus", "torch_cuda"}


def _subprocess_json(code: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_machine_info_matches_the_system_and_never_loads_torch():
    out = _subprocess_json(
        "import json, sys\n"
        "from streamcad.machine import machine_info, torch_version\n"
        "m = machine_info()\n"
        "print(json.dumps({'m': m, 'torch_version': torch_version(), 'torch_loaded': 'torch' in sys.modules}))\n"
    )
    m = out["m"]
    assert not out["torch_loaded"]
    assert m["cores"] == os.cpu_count() and 1 <= m["affinity_cores"] <= m["cores"]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and "model name" in cpuinfo.read_text():
        model = next(ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name"))
        assert m["cpu"] == model.split(":", 1)[1].strip()
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        kib = int(next(ln for ln in meminfo.read_text().splitlines() if ln.startswith("MemTotal")).split()[1])
        assert abs(m["memory_gb"] - kib / 2**20) < 0.2  # MemTotal excludes the kernel's reserve
    import numpy
    import onnxruntime

    assert m["libraries"]["numpy"] == numpy.__version__
    assert onnxruntime.__version__ in (m["libraries"].get("onnxruntime"), m["libraries"].get("onnxruntime-gpu"))
    try:
        torch_dist = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_dist = None
    assert out["torch_version"] == torch_dist and m["libraries"].get("torch") == torch_dist
    if shutil.which("nvidia-smi") is None:
        assert m["gpus"] == [] and m["gpu_error"] == "nvidia-smi not found"
    else:
        assert m["gpu_error"] is None or m["gpus"] == []  # a list, or why there is none: never both
        for g in m["gpus"]:
            assert set(g) == {"index", "name", "driver", "memory_mib", "memory", "compute_capability"}


def test_nvidia_smi_lines_parse_to_one_dict_per_gpu():
    text = "0, NVIDIA H200, 565.57.01, 143771, 9.0\n1, Quadro RTX 8000, with a comma, 535.1, 49152, 7.5\n\n"
    assert parse_nvidia_smi(text) == [
        {"index": 0, "name": "NVIDIA H200", "driver": "565.57.01", "memory_mib": "143771", "memory": "143771 MiB",
         "compute_capability": "9.0"},
        {"index": 1, "name": "Quadro RTX 8000,with a comma", "driver": "535.1", "memory_mib": "49152",
         "memory": "49152 MiB", "compute_capability": "7.5"},
    ]
    assert parse_nvidia_smi("No devices were found\n") == []


def test_benchmarks_and_info_use_the_shared_block_with_their_old_keys():
    from streamcad.benchmarks.machine import machine_info as bench_machine_info
    from streamcad.commands.info import collect

    assert bench_machine_info is machine_info
    shared = machine_info()
    assert BENCH_KEYS <= set(shared)
    info = collect()
    assert INFO_KEYS <= set(info)
    for k in ("cpu", "cores", "memory_gb", "python", "platform", "libraries", "hostname"):
        assert info[k] == shared[k], k
    # info keeps its form for GPUs: the list, or why there is none
    assert info["gpus"] == (shared["gpus"] if shared["gpu_error"] is None else shared["gpu_error"])
    assert info["versions"]["numpy"] == shared["libraries"]["numpy"]


def test_training_records_add_torch_on_top_of_the_shared_block():
    torch = pytest.importorskip("torch")
    from streamcad.train.common import machine_info as train_machine_info

    m = train_machine_info()
    shared = machine_info()
    assert TRAIN_KEYS <= set(m) and BENCH_KEYS <= set(m)
    for k in ("cpu", "cores", "memory_gb", "python", "platform", "libraries", "hostname"):
        assert m[k] == shared[k], k
    assert m["processor"] == m["cpu"] and m["cpu_count"] == m["cores"] == os.cpu_count()
    assert m["torch"] == str(torch.__version__) and type(m["torch"]) is str  # plain str: weights_only loads
    assert m["torch_threads"] == torch.get_num_threads()
    assert m["gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
