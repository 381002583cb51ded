"""A/B of two versions of the code on the same model file: `streamcad run` as each version ships it.

    git worktree (old) / this checkout (new)  --the same ONNX bytes (the old version's manifest;
        the new one upgraded by `python -m streamcad.engines.upgrade_manifest`)-->
    `python -m streamcad.cli run --config X.toml` (a subprocess, cwd + PYTHONPATH = that version)
        --ZeroMQ 127.0.0.1--> a raw SUB here (json only: no schema of either version involved)
    paced:   the recording at its native rate, e2e = arrival (CLOCK_MONOTONIC) - t_capture_ns
    unpaced: pace = "none" (every frame scored, the reader waits), throughput = scores / s

Runs alternate old, new, old, new, ... (`--runs` pairs) so that drifting machine load hits both;
the verdict compares the medians with the run-to-run spread of each version. The interface both
versions share is the CLI and the wire, so this works across any refactoring of the inside.

    git worktree add /tmp/ab-old f54010c
    python -m streamcad.benchmarks.ab_code --old /tmp/ab-old --new . \\
        --video ../shared/data/video/clarius-ocular-short.mp4 --runs 3 --out benchmarks/results/ab-restructuring.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from streamcad.benchmarks.machine import machine_info


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _git(checkout: Path) -> str:
    r = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "?"


def prepare_models(old: Path, new: Path, work: Path, model: str) -> dict[str, Path]:
    """The old checkout's `model` (relative path) as each version reads it: same ONNX bytes."""
    src = old / model
    paths = {}
    for name in ("old", "new"):
        d = work / name
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, d / src.name)
        shutil.copy2(src.with_suffix(".json"), d / src.with_suffix(".json").name)
        paths[name] = d / src.name
    r = subprocess.run([sys.executable, "-m", "streamcad.engines.upgrade_manifest", str(paths["new"])], cwd=new,
                       env={**os.environ, "PYTHONPATH": str(new)}, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise SystemExit(f"ab_code: upgrading the manifest for the new code failed: {r.stderr.strip()[-300:]}")
    return paths


def one_run(checkout: Path, model: Path, video: Path, pace: str, frames: int, timeout_s: float) -> dict:
    """One `streamcad run` of `checkout`; scores received by a raw SUB that connected first."""
    port = _free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "ab.toml"
        cfg.write_text(f'version = 1\ndashboard = false\nframes = {frames}\n[source]\nuri = "file:{video}"\npace = "{pace}"\nloop = true\n'
                       f'[model]\npath = "{model}"\nthreads = 1\n[publish]\nendpoint = "{endpoint}"\nstream = "ab"\n')
        ctx = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoint)
        proc = subprocess.Popen([sys.executable, "-m", "streamcad.cli", "run", "--config", str(cfg)], cwd=checkout,
                                env={**os.environ, "PYTHONPATH": str(checkout)}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        lat, arrivals, stages = [], [], {}
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline and len(lat) < frames:
                if not sub.poll(200):
                    if proc.poll() is not None:
                        break
                    continue
                parts = sub.recv_multipart()
                now = time.monotonic_ns()
                raw = parts[-1]  # one frame: topic prefix, then the JSON object
                msg = json.loads(raw[raw.index(b"{"):])
                if msg.get("type") == "score":
                    lat.append((now - msg["t_capture_ns"]) / 1e6)
                    arrivals.append(now)
                    for k, v in (msg.get("latency_ms") or {}).items():  # the pipeline's own stage times
                        stages.setdefault(k, []).append(v)
            rc = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            sub.close(linger=0)
        err = proc.stderr.read()
    if len(lat) < 0.9 * frames:
        raise SystemExit(f"ab_code: {checkout} ({pace}) delivered {len(lat)} of {frames} scores (rc {rc}): {err.strip()[-400:]}")
    lat_a = np.asarray(lat[len(lat) // 10:])  # the first 10% warm up (ROI detection, ORT first runs)
    span_s = (arrivals[-1] - arrivals[len(arrivals) // 10]) / 1e9
    return {"scores": len(lat), "rc": rc, "e2e_p50_ms": float(np.percentile(lat_a, 50)),
            "e2e_p99_ms": float(np.percentile(lat_a, 99)), "fps": float((len(arrivals) - len(arrivals) // 10 - 1) / span_s),
            "stage_p50_ms": {k: float(np.median(v[len(v) // 10:])) for k, v in stages.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m streamcad.benchmarks.ab_code", description=__doc__.split("\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="checkout of the old version (a git worktree)")
    ap.add_argument("--new", type=Path, default=Path("."), help="checkout of the new version (default: this one)")
    ap.add_argument("--model", default="engines/models/default.onnx", help="model file inside the OLD checkout (both run it)")
    ap.add_argument("--video", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=3, help="old/new pairs per mode")
    ap.add_argument("--frames", type=int, default=900, help="paced frames per run (unpaced: 2x)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    old, new, video = args.old.resolve(), args.new.resolve(), args.video.resolve()
    if not video.is_file():
        raise SystemExit(f"ab_code: --video {video} is not a file; expected a recording (../shared/data/video/*.mp4)")
    with tempfile.TemporaryDirectory() as tmp:
        models = prepare_models(old, new, Path(tmp), args.model)
        runs = []
        for i in range(args.runs):
            for pace, frames in (("native", args.frames), ("none", 2 * args.frames)):
                for name, checkout in (("old", old), ("new", new)) if i % 2 == 0 else (("new", new), ("old", old)):
                    r = one_run(checkout, models[name], video, pace, frames, timeout_s=frames / 10 + 60)
                    runs.append({"code": name, "pace": pace, **r})
                    print(f"{name} pace={pace}: {r['fps']:.1f} fps, e2e p50 {r['e2e_p50_ms']:.2f} / p99 {r['e2e_p99_ms']:.2f} ms; "
                          f"stage p50 {', '.join(f'{k} {v:.2f}' for k, v in r['stage_p50_ms'].items())}", flush=True)
    summary = {}
    for pace in ("native", "none"):
        for name in ("old", "new"):
            rs = [r for r in runs if r["code"] == name and r["pace"] == pace]
            summary[f"{name} {pace}"] = {k: {"median": float(np.median([r[k] for r in rs])), "min": min(r[k] for r in rs),
                                             "max": max(r[k] for r in rs)} for k in ("fps", "e2e_p50_ms", "e2e_p99_ms")}
    out = {"meta": {"kind": "ab_code", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "old": f"{old} ({_git(old)})",
                    "new": f"{new} ({_git(new)})", "model": args.model, "video": video.name, "runs": args.runs,
                    "frames": args.frames, "machine": machine_info(), "load_at_start": list(os.getloadavg())},
           "runs": runs, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print("| code | pace | fps (median [min, max]) | e2e p50 ms | e2e p99 ms |\n|---|---|---|---|---|")
    for key, s in summary.items():
        name, pace = key.split()
        cell = lambda m: f"{m['median']:.2f} [{m['min']:.2f}, {m['max']:.2f}]"  # noqa: E731
        print(f"| {name} | {pace} | {cell(s['fps'])} | {cell(s['e2e_p50_ms'])} | {cell(s['e2e_p99_ms'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
