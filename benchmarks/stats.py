"""Latency statistics the way a GPU engineer reads them: percentiles, not means.

Percentiles use numpy's default linear interpolation (the same definition as
`numpy.percentile`), so results are reproducible by anyone with the raw samples in the JSON.
"""

from __future__ import annotations

import numpy as np

__all__ = ["summarize", "PERCENTILES"]

PERCENTILES = (50, 90, 99, 99.9)


def _key(q: float) -> str:
    return "p" + (str(q).replace(".", "_") if q != int(q) else str(int(q)))  # 99.9 -> p99_9


def summarize(samples_ms, *, duration_s: float | None = None, dropped: int = 0) -> dict:
    """Samples (ms) -> {n, p50, p90, p99, p99_9, max, min, mean, std, [fps], dropped}."""
    a = np.asarray(list(samples_ms) if not isinstance(samples_ms, np.ndarray) else samples_ms, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of latencies, got shape {a.shape}")
    out: dict = {"n": int(a.size), "dropped": int(dropped)}
    if a.size == 0:
        return out
    if not np.all(np.isfinite(a)):
        raise ValueError("latency samples contain NaN or Inf")
    for q in PERCENTILES:
        out[_key(q)] = float(np.percentile(a, q))
    out.update(max=float(a.max()), min=float(a.min()), mean=float(a.mean()), std=float(a.std(ddof=1)) if a.size > 1 else 0.0)
    if duration_s is not None and duration_s > 0:
        out["fps"] = a.size / duration_s
    return out
