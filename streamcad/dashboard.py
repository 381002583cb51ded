"""The live terminal dashboard (rich): source state and granted format, fps in/out, dropped
frames, per-stage latency p50/p99, current probabilities, the state with what it means, the
flags with what they mean, the operating point in use (threshold, band, where it came from),
and a sparkline of the smoothed score. It only reads the pipeline's counters; it runs on the
main thread at a few Hz. STATE_TEXT and FLAG_TEXT are the sentences docs/PROTOCOL.md gives UI
authors to show a clinician."""

from __future__ import annotations

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

__all__ = ["render", "sparkline", "operating_point_line", "STATE_TEXT", "FLAG_TEXT"]

_BARS = "▁▂▃▄▅▆▇█"
_STATE_STYLE = {"suspicious": "bold red", "clear": "green", "no_lesion": "dim", "flagged": "yellow"}
STATE_TEXT = {
    "no_lesion": "No lesion in view.",
    "clear": "Lesion in view: the model's score is below its threshold for 'possibly malignant'. "
             "This is not a benign finding.",
    "suspicious": "Lesion in view: the model's score is at or above its threshold for 'possibly malignant'. "
                  "Many benign lesions score this high too.",
    "flagged": "No score for this image.",
}
FLAG_TEXT = {
    "blank": "The image is blank.",
    "frozen": "The image is frozen: unfreeze the scanner to get a score.",
    "no_signal": "No video from the scanner.",
    "not_ultrasound": "This is not an ultrasound image.",
    "doppler": "Colour Doppler is on: the model scores grey-scale images only.",
    "out_of_domain": "This does not look like a breast ultrasound image the model can assess.",
}


def operating_point_line(point) -> str:
    """'suspicious at smoothed p(malignant) >= 0.281 ... clear below 0.231' for an OperatingPoint."""
    if point.source == "manifest":
        where = "the model's validated operating threshold"
    elif point.operating_threshold is None:
        where = "set in config; the model has no validated threshold"
    else:
        where = f"set in config, NOT the model's validated {point.operating_threshold:.3f}"
    return (f"suspicious at smoothed p(malignant) >= {point.on:.3f} ({where}); "
            f"back to clear below {point.off:.3f}")


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
    if st.last_state in ("clear", "suspicious") and st.malignancy:
        score.append(f"  malignancy {st.malignancy[-1]:.3f}")
    score.append(f"  {STATE_TEXT.get(st.last_state, '')}")
    for flag in sorted(st.last_flags):
        score.append(f"\nflag {flag}: {FLAG_TEXT.get(flag, 'see docs/PROTOCOL.md')}", style="yellow")
    point = pipe.smoother.point
    score.append("\n" + operating_point_line(point), style="" if point.source == "manifest" else "bold yellow")
    score.append("\nmalignancy " + sparkline(st.malignancy))
    return Panel(Group(head, lat, score), title="streamcad", subtitle="Ctrl-C to stop")
