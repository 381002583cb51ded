"""The live terminal dashboard (rich): source state and granted format, fps in/out, dropped
frames, per-stage latency p50/p99, current probabilities, and a sparkline of the smoothed score.
It only reads the pipeline's counters; it runs on the main thread at a few Hz."""

from __future__ import annotations

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

__all__ = ["render", "sparkline"]

_BARS = "▁▂▃▄▅▆▇█"
_STATE_STYLE = {"suspicious": "bold red", "clear": "green", "no_lesion": "dim", "flagged": "yellow"}


def sparkline(values, width: int = 60) -> str:
    """Values in [0, 1] -> a unicode bar string of the last `width` values."""
    vals = list(values)[-width:]
    return "".join(_BARS[min(len(_BARS) - 1, max(0, int(v * len(_BARS))))] for v in vals)


def render(pipe) -> Panel:
    src = pipe.source
    info = src.info
    stats = src.stats
    state = str(src.state)
    head = Table.grid(padding=(0, 2))
    head.add_row(
        Text(f"source {state}", style="green" if state == "live" else "yellow"),
        f"{getattr(info, 'width', '?')}x{getattr(info, 'height', '?')} "
        f"@ {getattr(info, 'fps', None) or '?'} fps {getattr(info, 'fourcc', '') or ''}",
        f"model {pipe.model.model_id} ({pipe.model.backend.name})",
    )
    head.add_row(
        f"fps out {pipe.stats.fps_out():5.1f}",
        f"in {stats.frames_grabbed}  out {pipe.report.frames_out}",
        f"overwritten {stats.frames_overwritten}  rejected {stats.frames_rejected}  "
        f"pub-dropped {pipe.publisher.dropped}  reconnects {stats.reconnects}",
    )
    lat = Table(title="latency ms", box=None, pad_edge=False)
    lat.add_column("stage")
    lat.add_column("p50", justify="right")
    lat.add_column("p99", justify="right")
    for stage, p in pipe.stats.percentiles((50, 99)).items():
        lat.add_row(stage, f"{p['p50']:.2f}", f"{p['p99']:.2f}")
    probs = pipe.stats.last_probs
    st = pipe.stats
    score = Text()
    if probs is not None:
        score.append(f"normal {probs[0]:.2f}  benign {probs[1]:.2f}  malignant {probs[2]:.2f}\n")
    score.append(f"state {st.last_state}", style=_STATE_STYLE.get(st.last_state, ""))
    if st.last_flags:
        score.append(f"  flags {', '.join(sorted(st.last_flags))}", style="yellow")
    score.append("\nmalignancy " + sparkline(st.malignancy))
    return Panel(Group(head, lat, score), title="streamcad", subtitle="Ctrl-C to stop")
