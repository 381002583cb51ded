"""One script for the GPU machine: is the torch CUDA backend right, and how fast is it?

    real frames (--data-npz from train.data.save_npz, --images DIR, or the repo sample)
      --streamcad.preprocess--> (N, 1, S, S)
    (b) correctness: checkpoint --torch backend on CUDA: fp32 | fp16 | fp16 + CUDA graph-->
        probabilities, each gated (engines.gate) against ONNX Runtime FP32 (CPU) on the exported ONNX
    (c) speed: for each model size (random weights: latency does not depend on them), the torch
        backend's infer() (numpy in -> GPU -> numpy out, the pipeline's real path) at batch 1:
        FP32 eager, FP16, FP16 + CUDA graph; warm-up, torch.cuda.synchronize() before each
        timestamp, >= 1000 iterations, percentiles; plus batch 8 / 32 throughput
    (d) JSON (GPU, driver, torch/CUDA versions, every number) under $OUT or --out, a table last

    python -m streamcad.benchmarks.gpu_check --checkpoint best.pt --onnx engines/models/x.onnx \
        --data-npz frames.npz --models tiny,small,base,resnet18

On a machine without a CUDA GPU it prints 'no CUDA GPU: skipped' and exits 0.
Needs torch, onnxruntime, onnx (only to export when --onnx is not given), numpy, opencv,
scikit-learn, rich; not pyzmq / msgspec / kornia.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("gpu_check")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as `python benchmarks/gpu_check.py` from anywhere
    sys.path.insert(0, str(REPO))

MODES = (("fp32", "fp32", False), ("fp16", "fp16", False), ("fp16+graph", "fp16", True))  # label, precision, graph


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="classifier checkpoint for the correctness gate")
    p.add_argument("--onnx", type=Path, default=None, help="its exported ONNX (exported on the fly when omitted)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data-npz", type=Path, default=None, help="packed real frames (train.data.save_npz)")
    src.add_argument("--images", type=Path, default=None, help="folder of real images")
    p.add_argument("--frames", type=int, default=200, help="real frames in the gate (default 200)")
    p.add_argument("--models", default="tiny,small,base,resnet18", help="model sizes to time (comma-separated)")
    p.add_argument("--size", type=int, default=None, help="input S for timing (default: the checkpoint's, else 160)")
    p.add_argument("--iters", type=int, default=1000, help="timed iterations at batch 1 (>= 1000 for p99)")
    p.add_argument("--warmup", type=int, default=50, help="untimed iterations first")
    p.add_argument("--batches", default="8,32", help="throughput batch sizes")
    p.add_argument("--gate-batch", type=int, default=8, help="batch size of the gate runs (and of the captured graph)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT, else benchmarks/results)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- helpers


def _environment(torch: Any) -> dict:
    from streamcad.benchmarks.machine import machine_info

    props = torch.cuda.get_device_properties(0)
    info = machine_info()
    driver = info["gpus"][0]["driver"] if info.get("gpus") else None
    return {
        "gpu": torch.cuda.get_device_name(0),
        "compute_capability": f"{props.major}.{props.minor}",
        "gpu_memory_gb": round(props.total_memory / 2**30, 1),
        "driver": driver,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "machine": info,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _random_checkpoint(torch: Any, name: str, size: int, folder: Path) -> Path:
    """A classifier checkpoint with random weights (for timing only) in the contract's plain-dict form."""
    from streamcad.preprocess import PreprocessSpec
    from streamcad.train.model import build_model

    torch.manual_seed(0)
    model = build_model(name)
    path = folder / f"random-{name}-{size}.pt"
    torch.save({"kind": "classifier", "model_config": model.model_config, "model": model.state_dict(),
                "preprocess": PreprocessSpec(size=size).to_dict(), "epoch": 0, "metrics": {}, "train_config": {},
                "temperature": 1.0}, path)
    return path


def _timed(torch: Any, be: Any, x: np.ndarray, iters: int, warmup: int) -> list[float]:
    """Per-call latency (ms) of be.infer(x): synchronize before each timestamp."""
    for _ in range(warmup):
        be.infer(x)
    samples = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter_ns()
        be.infer(x)
        torch.cuda.synchronize()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return samples


def _chunked_logits(be: Any, batch: np.ndarray, step: int) -> np.ndarray:
    return np.concatenate([be.infer(np.ascontiguousarray(batch[i : i + step]))["logits"] for i in range(0, len(batch), step)])


# ----------------------------------------------------------------------------- sections


def check_correctness(torch: Any, args: argparse.Namespace, work: Path) -> dict:
    """(b) torch CUDA fp32 / fp16 / fp16 + graph vs ONNX Runtime FP32 on real frames, through the gate."""
    from streamcad.backends import load_backend
    from streamcad.engines.export import export_checkpoint, load_classifier
    from streamcad.engines.gate import load_gate_frames, run_gate, softmax

    _, ckpt, spec, _ = load_classifier(args.checkpoint)
    onnx_path = args.onnx
    if onnx_path is None:
        onnx_path = work / (args.checkpoint.stem + ".onnx")
        export_checkpoint(args.checkpoint, onnx_path, images_dir=args.images, data_npz=args.data_npz, n_frames=64)
    frames = load_gate_frames(spec, n=args.frames, images_dir=args.images, data_npz=args.data_npz)
    step = args.gate_batch
    with load_backend("onnxruntime", onnx_path, providers=("cpu",)) as ort_be:
        ref = softmax(_chunked_logits(ort_be, frames.batch, step))
    out: dict = {"model": ckpt["model_config"], "size": spec.size, "frames": frames.source, "n": int(len(frames.batch)), "modes": {}}
    for label, precision, graph in MODES:
        opts = {"device": "cuda", "precision": precision}
        if graph:
            opts["cuda_graph_batch"] = step
        with load_backend("torch", args.checkpoint, **opts) as be:
            cand = softmax(_chunked_logits(be, frames.batch, step))
        res = run_gate(ref, cand, frames.labels_binary)
        out["modes"][label] = res.to_dict()
        log.info("%s vs ORT FP32: %s", label, res.summary())
    return out


def measure_latency(torch: Any, args: argparse.Namespace, size: int, work: Path) -> dict:
    """(c) batch-1 latency percentiles and batch-B throughput per model size and mode."""
    from streamcad.backends import load_backend
    from streamcad.benchmarks.stats import summarize

    batches = [int(b) for b in args.batches.split(",") if b]
    rng = np.random.default_rng(0)
    results: dict = {}
    for name in [m for m in args.models.split(",") if m]:
        ckpt = _random_checkpoint(torch, name, size, work)
        params = sum(v.numel() for v in torch.load(ckpt, weights_only=True)["model"].values() if v.is_floating_point())
        entry: dict = {"params": int(params), "size": size, "modes": {}}
        for label, precision, graph in MODES:
            m: dict = {}
            x1 = rng.random((1, 1, size, size), dtype=np.float32)
            with load_backend("torch", ckpt, device="cuda", precision=precision, cuda_graph_batch=1 if graph else None) as be:
                m["batch1_ms"] = summarize(_timed(torch, be, x1, args.iters, args.warmup))
            for b in batches:
                xb = rng.random((b, 1, size, size), dtype=np.float32)
                with load_backend("torch", ckpt, device="cuda", precision=precision, cuda_graph_batch=b if graph else None) as be:
                    s = summarize(_timed(torch, be, xb, max(100, args.iters // 10), max(10, args.warmup // 5)))
                m[f"batch{b}_ms"] = s
                m[f"batch{b}_frames_per_s"] = b * 1000.0 / s["p50"]
            entry["modes"][label] = m
            log.info("%s %s: batch-1 p50 %.3f ms p99 %.3f ms", name, label, m["batch1_ms"]["p50"], m["batch1_ms"]["p99"])
        results[name] = entry
        torch.cuda.empty_cache()
    return results


def _table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    env = report["environment"]
    console.print(f"{env['gpu']} (sm {env['compute_capability']}), driver {env['driver']}, torch {env['torch']}, CUDA {env['cuda']}")
    if report.get("correctness"):
        t = Table(title=f"torch CUDA vs ONNX Runtime FP32 on {report['correctness']['n']} real frames")
        for col in ("mode", "gate", "max prob diff", "flips", "AUC delta"):
            t.add_column(col)
        for label, g in report["correctness"]["modes"].items():
            auc = "-" if g["auc_delta"] is None else f"{g['auc_delta']:.4f}"
            t.add_row(label, "PASS" if g["passed"] else "FAIL", f"{g['max_prob_diff']:.2e}", str(g["flips"]), auc)
        console.print(t)
    t = Table(title="torch backend infer() latency (ms, numpy in/out)")
    for col in ("model", "params", "mode", "b1 p50", "b1 p99", *[f"b{b} fps" for b in report["batches"]]):
        t.add_column(col, justify="right")
    for name, e in report["latency"].items():
        for label, m in e["modes"].items():
            t.add_row(name, f"{e['params'] / 1e6:.1f}M", label, f"{m['batch1_ms']['p50']:.3f}", f"{m['batch1_ms']['p99']:.3f}",
                      *[f"{m[f'batch{b}_frames_per_s']:.0f}" for b in report["batches"]])
    console.print(t)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import torch
    except ImportError:
        print("no CUDA GPU: skipped (torch is not installed)")
        return 0
    if not torch.cuda.is_available():
        print(f"no CUDA GPU: skipped (torch {torch.__version__} sees no CUDA device)")
        return 0
    if args.iters < 1000:
        log.warning("--iters %d < 1000: the p99 rests on fewer than 10 samples above it", args.iters)
    from streamcad.errors import StreamcadError

    out_dir = args.out or Path(os.environ.get("OUT") or REPO / "benchmarks" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"environment": _environment(torch), "iters": args.iters, "warmup": args.warmup,
                    "batches": [int(b) for b in args.batches.split(",") if b]}
    torch.backends.cudnn.benchmark = True
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            size = args.size
            if args.checkpoint is not None:
                report["correctness"] = check_correctness(torch, args, work)
                size = size or report["correctness"]["size"]
            report["latency"] = measure_latency(torch, args, size or 160, work)
    except StreamcadError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 1
    path = out_dir / "gpu_check.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    log.info("wrote %s", path)
    _table(report)
    failed = [k for k, g in report.get("correctness", {}).get("modes", {}).items() if not g["passed"]]
    if failed:
        print(f"gate FAILED for: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
