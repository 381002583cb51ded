"""What a composite graph (streamcad.engines.compose: two backbones behind one input) costs in
inference against a single model: ONNX Runtime, CPU, one intra-op thread, batch 1, real frames,
the models interleaved call by call in one run (so that load and clock changes hit both).

    the repo sample's images --preprocess (the runtime's)--> (1, 1, S, S) inputs
      --for each of N rounds: every model once, in turn--> per-call wall times (perf_counter_ns)
      --> median, p90, p99 per model and the ratios to the first model, JSON

    OMP_NUM_THREADS=1 python -m streamcad.benchmarks.compose_latency train/results/v2/gate-model/lite0.onnx \\
        engines/models/default.onnx [--e2e] --out benchmarks/results/compose-latency.json

(one backbone, the v2 model, then the shipped composite; the committed run of 2026-12-04 named
them default.onnx and composite.onnx, before the composite became the default)

--e2e adds the real pipeline end to end: sweep frames rendered beforehand and replayed at 30 fps
(benchmarks.replay), each model's runs interleaved, e2e and infer p99 from the run reports.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from streamcad.benchmarks.machine import machine_info
from streamcad.errors import ConfigError

__all__ = ["measure", "main"]


def _inputs(spec, n: int) -> list[np.ndarray]:
    import cv2

    from streamcad.preprocess import preprocess
    from streamcad.sources.sweep import SAMPLE_DIR

    paths = sorted(p for p in Path(SAMPLE_DIR).rglob("*.png") if "mask" not in p.name.lower())
    if not paths:
        raise ConfigError(f"no sample images under {SAMPLE_DIR}; expected the repo's bundled sample")
    out = []
    for p in paths[:n]:
        g = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        out.append(preprocess(g, spec)[None])
    return out


def measure(models: list[Path], rounds: int = 300, warmup: int = 20, threads: int = 1) -> dict:
    """-> {model name: {'median_ms', 'p90_ms', 'p99_ms', 'calls'}, 'ratios': {name: median / p99 ratios to the first}}."""
    import onnxruntime as ort

    from streamcad.manifest import read_manifest

    if len(models) < 2:
        raise ConfigError(f"{len(models)} model(s); expected a reference and at least one more to compare")
    specs = [read_manifest(m).spec() for m in models]
    if len({s.size for s in specs}) != 1:
        raise ConfigError(f"input sizes {[s.size for s in specs]}; expected one S for all models")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sessions = [ort.InferenceSession(str(m), opts, providers=["CPUExecutionProvider"]) for m in models]
    xs = _inputs(specs[0], 24)
    for s in sessions:
        for i in range(warmup):
            s.run(None, {"input": xs[i % len(xs)]})
    times = [[] for _ in sessions]
    for r in range(rounds):
        x = xs[r % len(xs)]
        for k, s in enumerate(sessions):
            t0 = time.perf_counter_ns()
            s.run(None, {"input": x})
            times[k].append((time.perf_counter_ns() - t0) / 1e6)
    stats = {}
    for m, t in zip(models, times, strict=True):
        a = np.array(t)
        stats[m.name] = {"median_ms": float(np.median(a)), "p90_ms": float(np.quantile(a, 0.9)),
                         "p99_ms": float(np.quantile(a, 0.99)), "calls": len(a)}
    ref = stats[models[0].name]
    ratios = {name: {"median": v["median_ms"] / ref["median_ms"], "p99": v["p99_ms"] / ref["p99_ms"]}
              for name, v in stats.items()}
    return {"models": stats, "ratios_to_first": ratios, "rounds": rounds, "threads": threads, "batch": 1}


def e2e(models: list[Path], frames: int = 600, fps: float = 30.0, runs: int = 2) -> dict:
    """The real pipeline on pre-rendered sweep frames paced at `fps` (benchmarks.replay), one
    thread, the models' runs interleaved -> {model name: {'e2e_p50_ms', 'e2e_p99_ms' (the worst
    run's), 'infer_p99_ms', 'runs', 'frames_out', 'overwritten'}} from each run's report."""
    from streamcad.benchmarks.operating_point import _free_port
    from streamcad.benchmarks.replay import ReplaySource, load_frames
    from streamcad.config import config_from_dict
    from streamcad.pipeline import Pipeline

    rendered = load_frames("sweep:", n=64)  # replayed in a loop, as streamcad bench does
    reports: dict[str, list] = {m.name: [] for m in models}
    for _ in range(runs):
        for m in models:
            cfg = config_from_dict({
                "source": {"uri": "sweep:", "pace": "native", "fps": fps},
                "model": {"path": str(m), "threads": 1},
                "publish": {"endpoint": f"tcp://127.0.0.1:{_free_port()}", "stream": "e2e"},
                "frames": frames,
                "dashboard": False,
            })
            with Pipeline(cfg, source=ReplaySource(rendered, fps=fps)) as pipe:
                reports[m.name].append(pipe.run())
    out = {}
    for name, rs in reports.items():
        out[name] = {"e2e_p50_ms": float(np.median([r.latency_ms["total"]["p50"] for r in rs])),
                     "e2e_p99_ms": float(max(r.latency_ms["total"]["p99"] for r in rs)),
                     "infer_p99_ms": float(max(r.latency_ms["infer"]["p99"] for r in rs)),
                     "runs": len(rs), "frames_out": int(sum(r.frames_out for r in rs)),
                     "overwritten": int(sum(r.overwritten for r in rs))}
    return {"models": out, "frames": frames, "fps": fps, "source": "replay of sweep: frames (pre-rendered)"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", type=Path, nargs="+", help="the reference model first, then the ones compared with it")
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--e2e", action="store_true",
                   help="also the real pipeline end to end (replayed sweep frames at 30 fps, runs interleaved)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    res = measure(args.models, rounds=args.rounds, threads=args.threads)
    if args.e2e:
        res["e2e"] = e2e(args.models)
    res.update({"schema": 1, "wall_s": time.perf_counter() - t0, "machine": machine_info(),
                "command": "python -m streamcad.benchmarks.compose_latency " + " ".join(str(m) for m in args.models)
                           + f" --out {args.out}"})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    for name, v in res["models"].items():
        r = res["ratios_to_first"][name]
        print(f"{name:24s} median {v['median_ms']:6.2f} ms  p99 {v['p99_ms']:6.2f} ms  "
              f"(x{r['median']:.2f} / x{r['p99']:.2f} of the first)"
              + ("" if "e2e" not in res else
                 f"  e2e p50 {res['e2e']['models'][name]['e2e_p50_ms']:.2f} p99 {res['e2e']['models'][name]['e2e_p99_ms']:.2f} ms"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
