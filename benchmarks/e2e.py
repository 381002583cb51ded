"""End-to-end latency of the real pipeline, received by a subscriber in another process.

    source (sweep | file, paced at F fps or as fast as possible)
      -> Pipeline (threaded .run() or the naive .run_sequential(); same stage functions)
           grab -> preprocess -> queue -> infer -> smooth -> publish (ZeroMQ PUB, 127.0.0.1)
      -> `python -m streamcad.benchmarks.subscriber` (another process): time.monotonic_ns() at receipt
      -> per stage (the message's latency_ms) and end to end (t_recv - t_capture):
         p50 / p90 / p99 / p99.9 / max / std, achieved fps, dropped frames

Method: the backend is warmed up before the clock starts; the subscriber is connected and its
subscription seen by the publisher before the first frame; the first `warmup` received scores
are left out of the statistics (ROI tracker warm-up, caches), drops are counted over the whole
run. Dropped = source overwrites + publisher drops (HWM) + seq gaps seen by the subscriber (at
pace 'none' the sources are lossless, so any overwrite there is a drop too). CPU load (os.getloadavg) is written before and after.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from streamcad.benchmarks.replay import ReplaySource, load_frames
from streamcad.benchmarks.stats import summarize
from streamcad.errors import StreamcadError
from streamcad.messages import STAGES

__all__ = ["E2EConfig", "run_e2e", "RssSampler", "backend_options"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
_FRAMES: dict = {}  # (uri, seed) -> pre-loaded frames for replay runs


@dataclass
class E2EConfig:
    """One measured configuration."""

    model_path: str  # .onnx for onnxruntime/tensorrt, .pt checkpoint for torch
    backend: str = "onnxruntime"
    options: dict = field(default_factory=dict)  # backend options (intra_op_threads, device, ...)
    label: str = "ort-cpu-2t"  # names the backend configuration in tables
    source: str = "sweep:"  # 'sweep:' or 'file:PATH'
    fps: float | None = 30.0  # pacing; None = as fast as possible (pace 'none')
    mode: str = "threaded"  # 'threaded' (Pipeline.run) | 'sequential' (Pipeline.run_sequential)
    frames: int = 1000  # measured frames (after warm-up)
    warmup: int = 20  # scores left out of the statistics
    model_name: str = ""
    seed: int = 0
    replay: bool = False  # True: frames pre-loaded into memory (benchmarks.replay), the pipeline alone
    preview: bool = False  # True: the pipeline also encodes and publishes the 'preview' topic ([preview] defaults)

    @property
    def pace(self) -> str:
        return "none" if self.fps is None else "native"


def backend_options(label: str) -> tuple[str, dict]:
    """'ort-cpu-1t' | 'ort-cpu-2t' | 'torch-cpu' | 'torch-cuda-fp32' | 'torch-cuda-fp16'
    | 'torch-cuda-fp16-graph' | 'tensorrt' -> (backend name, options)."""
    table = {
        "ort-cpu-1t": ("onnxruntime", {"intra_op_threads": 1}),
        "ort-cpu-2t": ("onnxruntime", {"intra_op_threads": 2}),
        "torch-cpu": ("torch", {"device": "cpu"}),
        "torch-cuda-fp32": ("torch", {"device": "cuda", "precision": "fp32"}),
        "torch-cuda-fp16": ("torch", {"device": "cuda", "precision": "fp16"}),
        "torch-cuda-fp16-graph": ("torch", {"device": "cuda", "precision": "fp16", "cuda_graph_batch": 1}),
        "tensorrt": ("tensorrt", {}),
    }
    if label not in table:
        raise StreamcadError(f"unknown backend configuration {label!r}; expected one of {sorted(table)}")
    backend, opts = table[label]
    return backend, dict(opts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RssSampler(threading.Thread):
    """Resident memory (psutil) of some processes, every `interval_s`, until stop()."""

    def __init__(self, pids: dict[str, int], interval_s: float = 1.0) -> None:
        super().__init__(name="bench-rss", daemon=True)
        import psutil

        self._procs = {k: psutil.Process(p) for k, p in pids.items()}
        self.interval_s = interval_s
        self.t: list[float] = []
        self.rss: dict[str, list[float]] = {k: [] for k in pids}
        self._stop_ev = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        import psutil

        while not self._stop_ev.is_set():
            self.t.append(time.monotonic() - self._t0)
            for k, p in self._procs.items():
                try:
                    self.rss[k].append(p.memory_info().rss / 2**20)
                except psutil.Error:
                    self.rss[k].append(float("nan"))
            self._stop_ev.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_ev.set()
        self.join(timeout=5)

    def summary(self, skip_fraction: float = 0.1) -> dict:
        """Per process: start/end/max MB, growth after the first `skip_fraction` of the run, and
        the least-squares slope (MB per minute) over the rest."""
        t = np.asarray(self.t)
        out: dict = {"interval_s": self.interval_s, "samples": int(t.size), "duration_s": float(t[-1]) if t.size else 0.0}
        for k, vals in self.rss.items():
            a = np.asarray(vals, float)
            n = min(a.size, t.size)
            a, tt = a[:n], t[:n]
            ok = np.isfinite(a)
            a, tt = a[ok], tt[ok]
            if a.size < 3:
                out[k] = {"samples": int(a.size)}
                continue
            i0 = min(int(a.size * skip_fraction), a.size - 2)
            slope = float(np.polyfit(tt[i0:], a[i0:], 1)[0]) * 60.0 if a.size - i0 >= 2 else 0.0
            out[k] = {
                "start_mb": float(a[0]), "after_warmup_mb": float(a[i0]), "end_mb": float(a[-1]), "max_mb": float(a.max()),
                "max_growth_mb": float(a[i0:].max() - a[i0]), "slope_mb_per_min": slope,
                "trace_mb": [round(float(x), 2) for x in a[:: max(1, a.size // 400)]],  # <= ~400 points for plots
            }
        return out


def _open(cfg: E2EConfig):
    from streamcad.config import config_from_dict
    from streamcad.manifest import load_model
    from streamcad.sources import open_source

    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    src_opts: dict = {"pace": cfg.pace, "loop": True}
    if cfg.replay:
        pass
    elif cfg.source.startswith("sweep:"):
        src_opts.update(seed=cfg.seed)
        if cfg.fps is not None:
            src_opts["fps"] = float(cfg.fps)
    elif not cfg.source.startswith("file:"):
        raise StreamcadError(f"benchmark source {cfg.source!r}: expected 'sweep:' or 'file:PATH'")
    if cfg.replay:
        key = (cfg.source, cfg.seed)
        if key not in _FRAMES:
            _FRAMES[key] = load_frames(cfg.source, 64, cfg.seed)
        source = ReplaySource(_FRAMES[key], cfg.fps, uri=f"replay:{cfg.source}")
    else:
        source = open_source(cfg.source, **src_opts)
        if cfg.mode == "sequential":
            # the naive loop grabs in its own thread too (no reader thread): benchmarks/naive.py
            from streamcad.benchmarks.naive import InlineSource

            source = InlineSource(source)
    d = {
        "source": {"uri": cfg.source, "pace": cfg.pace, "loop": True},
        "model": {"path": cfg.model_path, "backend": cfg.backend},
        "publish": {"endpoint": endpoint, "stream": "bench"},
        "frames": cfg.warmup + cfg.frames,
        "dashboard": False,
    }
    if cfg.fps is not None:
        d["source"]["fps"] = float(cfg.fps)
    if cfg.preview:
        d["preview"] = {"enabled": True}
    model = load_model(cfg.model_path, backend=cfg.backend, **cfg.options)
    if model.threshold is None:
        # random-init benchmark weights carry no validated operating threshold, and the pipeline
        # refuses to guess one: say explicitly which one the (unmeasured) state uses
        d["smoothing"] = {"on_threshold": 0.5}
    config = config_from_dict(d)
    return config, model, source


def _wait_subscribed(pipe, proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    line = proc.stdout.readline().strip() if proc.stdout else ""
    if line != "READY":
        raise StreamcadError(f"benchmark subscriber did not start (said {line!r}, rc={proc.poll()})")
    end = time.monotonic() + timeout_s
    # both topics (score/ and status/) must have reached the XPUB: an XPUB drops messages of a
    # topic nobody has subscribed to yet, silently (the slow-joiner race)
    while pipe.publisher.subscriptions < 2:
        if time.monotonic() > end:
            raise StreamcadError("benchmark subscriber connected but its subscription never reached the publisher")
        pipe.publisher.service(0.05)


def run_e2e(cfg: E2EConfig, *, sample_rss: bool = False, keep_raw: bool = False) -> dict:
    """Run one configuration end to end -> a JSON-ready dict (see the module docstring)."""
    from streamcad.pipeline import Pipeline

    config, model, source = _open(cfg)
    total = cfg.warmup + cfg.frames
    tmp = tempfile.mkdtemp(prefix="streamcad-bench-")
    out_npz = Path(tmp) / "recv.npz"
    proc = None
    sampler = None
    try:
        with Pipeline(config, model=model, source=source) as pipe:
            S = model.spec.size
            x = np.zeros((1, 1, S, S), np.float32)
            for _ in range(10):  # warm-up outside the clock: allocations, kernel selection, graph capture
                model.backend.infer(x)
            env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            proc = subprocess.Popen(
                [sys.executable, "-m", "streamcad.benchmarks.subscriber", "--endpoint", config.publish.endpoint,
                 "--count", str(total), "--out", str(out_npz)],
                stdout=subprocess.PIPE, text=True, cwd=str(REPO), env=env,
            )
            _wait_subscribed(pipe, proc)
            if sample_rss:
                sampler = RssSampler({"pipeline": os.getpid(), "subscriber": proc.pid})
                sampler.start()
            load_before = os.getloadavg()
            cpu0 = os.times()
            t0 = time.monotonic()
            report = pipe.run() if cfg.mode == "threaded" else pipe.run_sequential()
            wall = time.monotonic() - t0
            cpu1 = os.times()
            load_after = os.getloadavg()
            if sampler is not None:
                sampler.stop()
            src_stats = source.stats
            dropped_publish = pipe.publisher.dropped
            # previews sent (None: the preview topic was off); the proof that the 'on' arm encoded them
            previews = next((s.written for s in pipe.sinks if s.name == "preview"), None)
            backend_desc = {"name": model.backend.name, "device": getattr(model.backend, "device", None),
                            "precision": getattr(model.backend, "precision", None), "input_size": S}
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise StreamcadError("benchmark subscriber did not finish within 15 s of the pipeline's end") from None
        if proc.returncode != 0 or not out_npz.is_file():
            raise StreamcadError(f"benchmark subscriber failed (rc={proc.returncode})")
        raw = dict(np.load(out_npz))
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        out_npz.unlink(missing_ok=True)
        os.rmdir(tmp)
    result = _summarize(cfg, raw, report, src_stats, dropped_publish, wall)
    result.update(
        previews_sent=previews,
        backend=backend_desc,
        load_before=list(load_before),
        load_after=list(load_after),
        cpu_s={"user": cpu1.user - cpu0.user, "system": cpu1.system - cpu0.system},
    )
    if sampler is not None:
        result["rss"] = sampler.summary()
    if keep_raw:
        result["raw"] = raw
    return result


def _summarize(cfg: E2EConfig, raw: dict, report, src_stats, dropped_publish: int, wall: float) -> dict:
    n_recv = int(raw["t_recv_ns"].size)
    w = min(cfg.warmup, max(n_recv - 2, 0))
    sl = slice(w, None)
    t_recv = raw["t_recv_ns"][sl]
    idx = raw["frame_index"][sl]
    dur = (t_recv[-1] - t_recv[0]) / 1e9 if t_recv.size > 1 else 0.0
    # frames of the source that never reached the subscriber inside the measured window
    index_gaps = int(max(0, (idx[-1] - idx[0] + 1) - idx.size)) if idx.size else 0
    fps_kw = {"duration_s": dur * t_recv.size / max(t_recv.size - 1, 1)} if dur > 0 else {}
    stages = {s: summarize(raw[f"lat_{s}"][sl][np.isfinite(raw[f"lat_{s}"][sl])]) for s in STAGES}
    e2e = (raw["t_recv_ns"][sl] - raw["t_capture_ns"][sl]) / 1e6
    transport = (raw["t_recv_ns"][sl] - raw["t_publish_ns"][sl]) / 1e6
    stages["transport"] = summarize(transport)
    overwritten = int(src_stats.frames_overwritten)
    gaps = int(raw["gaps"])
    dropped = {
        "source_overwritten": overwritten,
        "source_rejected": int(src_stats.frames_rejected),
        "publisher_dropped": int(dropped_publish),
        "seq_gaps": gaps,
        "not_received": int(report.frames_out) - n_recv,
        "frame_index_gaps_measured": index_gaps,
    }
    dropped["total"] = overwritten + int(dropped_publish) + gaps
    return {
        "config": {k: v for k, v in asdict(cfg).items()},
        "pace": cfg.pace,
        "frames_out": int(report.frames_out),
        "frames_received": n_recv,
        "frames_measured": int(t_recv.size),
        "wall_s": wall,
        "fps": t_recv.size / fps_kw["duration_s"] if fps_kw else 0.0,
        "e2e_ms": summarize(e2e, dropped=dropped["total"], **fps_kw),
        "stages_ms": stages,
        "dropped": dropped,
    }
