"""Temporal smoothing of the malignancy score, with lesion gating and hysteresis.

    per-frame probs (normal, benign, malignant) --lesion gate--> p(malignant | lesion)
    --EMA with time constant tau--> malignancy --hysteresis--> state

States: 'no_lesion' (the frame shows no lesion, or the probe just left one: the EMA is reset),
'clear' (lesion, smoothed score below the on-threshold), 'suspicious' (entered at
>= on_threshold, left below off_threshold), 'flagged' (a quality flag: no update at all).
The EMA weight comes from the real time between frames, alpha = 1 - exp(-dt / tau), so a
30 fps and a 60 fps feed smooth alike. Pure numpy/stdlib: no model, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from streamcad.config import SmoothingConfig

__all__ = ["Smoother", "SmoothResult", "STATES"]

STATES = ("no_lesion", "clear", "suspicious", "flagged")


@dataclass(frozen=True, slots=True)
class SmoothResult:
    malignancy: float | None  # smoothed p(malignant | lesion); None when there is no lesion track
    state: str


class Smoother:
    """One per stream; not thread-safe (the pipeline's smoothing stage owns it)."""

    def __init__(self, config: SmoothingConfig | None = None) -> None:
        self.config = config or SmoothingConfig()
        self.reset()

    def reset(self) -> None:
        """Forget the lesion track (probe left the lesion, or the source went stale)."""
        self._ema: float | None = None
        self._t_last_ns: int | None = None
        self._t_last_lesion_ns: int | None = None
        self._suspicious = False

    def update(
        self, probs: tuple[float, float, float] | None, t_ns: int, flags: frozenset[str] | set = frozenset()
    ) -> SmoothResult:
        """Feed one frame. `probs` = (normal, benign, malignant), None for flagged frames."""
        cfg = self.config
        if "no_signal" in flags:
            self.reset()  # a stale source breaks the track: never carry a score across it
            return SmoothResult(None, "flagged")
        if flags or probs is None:
            return SmoothResult(self._ema, "flagged")  # no update, keep the track as it was
        _, p_benign, p_malignant = probs
        lesion = p_benign + p_malignant
        if lesion < cfg.lesion_threshold:
            if self._t_last_lesion_ns is not None and (t_ns - self._t_last_lesion_ns) / 1e9 < cfg.leave_after_s:
                # a brief dropout inside a lesion view: hold the track, do not update it
                return SmoothResult(self._ema, self._state())
            self.reset()
            return SmoothResult(None, "no_lesion")
        x = p_malignant / lesion  # p(malignant | lesion)
        if self._ema is None:
            self._ema = x
        else:
            dt = max(0.0, (t_ns - self._t_last_ns) / 1e9)
            alpha = 1.0 - math.exp(-dt / cfg.tau_s)
            self._ema += alpha * (x - self._ema)
        self._t_last_ns = self._t_last_lesion_ns = t_ns
        if self._suspicious and self._ema < cfg.off_threshold:
            self._suspicious = False
        elif not self._suspicious and self._ema >= cfg.on_threshold:
            self._suspicious = True
        return SmoothResult(self._ema, self._state())

    def _state(self) -> str:
        return "suspicious" if self._suspicious else "clear"
