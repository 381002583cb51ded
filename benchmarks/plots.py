"""PNG plots from a results JSON (matplotlib, Agg backend: no display needed).

    latency_cdf(results, out.png)   end-to-end latency CDF of each measured run (log-x)
    stage_bars(results, out.png)    stacked p50 per stage (+ p99 of the total) per configuration
    rss_trace(long, out.png)        resident memory over the long run
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamcad.messages import STAGES

__all__ = ["latency_cdf", "stage_bars", "rss_trace"]

# the pipeline's stages (streamcad.messages.STAGES, the one list) but its total, then the subscriber's
STAGE_ORDER = (*(s for s in STAGES if s != "total"), "transport")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_cdf(runs: list[dict], out: str | Path, title: str = "") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r in runs:
        a = np.sort(np.asarray(r.get("e2e_samples_ms") or [], float))
        if a.size == 0:
            continue
        y = np.arange(1, a.size + 1) / a.size
        ax.plot(a, y, label=r["name"], lw=1.2)
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency, capture -> received by a subscriber process (ms)")
    ax.set_ylabel("fraction of frames")
    for q in (0.5, 0.99):
        ax.axhline(q, color="grey", lw=0.5, ls=":")
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title or "End-to-end latency CDF")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def stage_bars(runs: list[dict], out: str | Path, title: str = "") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(runs) + 1.8))
    names = [r["name"] for r in runs]
    left = np.zeros(len(runs))
    colors = plt.get_cmap("tab10").colors
    for j, st in enumerate(STAGE_ORDER):
        vals = np.array([r["stages_ms"].get(st, {}).get("p50", 0.0) for r in runs])
        ax.barh(names, vals, left=left, color=colors[j % 10], label=st)
        left += vals
    p99 = [r["e2e_ms"].get("p99", np.nan) for r in runs]
    ax.scatter(p99, names, marker="|", color="k", s=120, zorder=3, label="end-to-end p99")
    ax.set_xlabel("ms (stacked per-stage p50; tick = end-to-end p99)")
    ax.invert_yaxis()
    ax.legend(fontsize=7, ncol=4, loc="lower right")
    ax.grid(True, axis="x", lw=0.3)
    ax.set_title(title or "Per-stage latency")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def rss_trace(rss: dict, out: str | Path, title: str = "") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    dur = rss.get("duration_s", 0.0)
    for k in ("pipeline", "subscriber"):
        tr = rss.get(k, {}).get("trace_mb")
        if tr:
            ax.plot(np.linspace(0, dur, len(tr)), tr, label=f"{k} RSS")
    ax.set_xlabel("s")
    ax.set_ylabel("MiB")
    ax.grid(True, lw=0.3)
    ax.legend()
    ax.set_title(title or "Resident memory over the long run")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
