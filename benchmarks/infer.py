"""Inference alone, batch 1, on real preprocessed frames: backends side by side, interleaved.

    real sample images --engines.gate.load_gate_frames (streamcad.preprocess)--> (K, 1, S, S)
    for round in rounds:                       # interleaved, so load changes hit every backend alike
        for backend in backends: time `iters / rounds` calls of backend.infer(frame[i % K][None])
    -> per backend: p50 / p90 / p99 / p99.9 / max / std (ms)

Timing is time.perf_counter_ns around infer(), which returns numpy arrays (torch CUDA results
are copied to the host inside infer(), which synchronizes): the runtime's own call, nothing less.
"""

from __future__ import annotations

import time

import numpy as np

from streamcad.benchmarks.stats import summarize

__all__ = ["real_batch", "time_backends"]


def real_batch(spec, n: int = 16) -> np.ndarray:
    """(n, 1, S, S) float32 real frames (the repository sample), preprocessed with `spec`."""
    from streamcad.benchmarks.models import SAMPLE_IMAGES
    from streamcad.engines.gate import load_gate_frames

    return load_gate_frames(spec, n=n, images_dir=SAMPLE_IMAGES if SAMPLE_IMAGES.is_dir() else None).batch


def time_backends(backends: dict, frames: np.ndarray, iters: int = 300, rounds: int = 5, warmup: int = 20) -> dict:
    """{label: Backend} -> {label: summary (ms)}, calls interleaved in `rounds` rounds."""
    k = frames.shape[0]
    samples: dict[str, list[float]] = {lbl: [] for lbl in backends}
    for be in backends.values():
        for i in range(warmup):
            be.infer(frames[i % k][None])
    per_round = max(1, iters // rounds)
    for _ in range(rounds):
        for lbl, be in backends.items():
            s = samples[lbl]
            for i in range(per_round):
                x = frames[i % k][None]  # (1, 1, S, S)
                t = time.perf_counter_ns()
                be.infer(x)
                s.append((time.perf_counter_ns() - t) / 1e6)
    return {lbl: summarize(np.asarray(s)) for lbl, s in samples.items()}
