"""Temporal smoothing of the malignancy score, with lesion gating and hysteresis.

    per-frame probs (normal, benign, malignant) --lesion gate: p(benign) + p(malignant)-->
    p(malignant) --EMA with time constant tau--> malignancy --hysteresis on the operating point--> state

The score smoothed is the 3-way softmax p(malignant), the very number the model's
`operating_threshold` (manifest) was chosen on and the model card's per-image sensitivity and
specificity were measured at. So the `suspicious` state means: over the last ~tau seconds of
frames showing a lesion, the model's p(malignant) has averaged at or above its validated
operating threshold.

States: 'no_lesion' (the frame shows no lesion, or the probe just left one: the EMA is reset),
'clear' (lesion, smoothed score below the operating point), 'suspicious' (entered at smoothed
p(malignant) >= on_threshold, left when it falls below off_threshold), 'flagged' (a quality
flag: no update at all).

The operating point (OperatingPoint.resolve):
    on_threshold  = smoothing.on_threshold if set, else the manifest's operating_threshold
    off_threshold = smoothing.off_threshold if set, else on_threshold x (1 - smoothing.band)
A model without an operating threshold (a bare ONNX loaded with allow_unverified, or a
manifest whose operating_threshold is null) gets no made-up one: smoothing.on_threshold must be
set, else ConfigError. An override is logged as a warning (the model card's numbers do not
describe it) and shows in every status message (`threshold_source` = 'config').

The EMA weight comes from the real time between frames, alpha = 1 - exp(-dt / tau), so a
30 fps and a 60 fps feed smooth alike. Pure numpy/stdlib: no model, no I/O.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from streamcad.config import SmoothingConfig
from streamcad.errors import ConfigError
from streamcad.messages import SCORE_STATES

__all__ = ["Smoother", "SmoothResult", "OperatingPoint", "STATES"]

log = logging.getLogger(__name__)

STATES = SCORE_STATES  # the one list (streamcad.messages): Score.state


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """The thresholds the state machine uses, and where they came from."""

    on: float  # enter 'suspicious' at smoothed p(malignant) >= on
    off: float  # leave it when the smoothed p(malignant) < off
    operating_threshold: float | None  # the model's validated threshold (manifest); None: it has none
    source: str  # 'manifest' (on = operating_threshold) | 'config' (smoothing.on_threshold)

    @classmethod
    def resolve(cls, config: SmoothingConfig, operating_threshold: float | None, model: str = "the model") -> OperatingPoint:
        """Config + the manifest's operating_threshold -> the operating point. ConfigError names the key."""
        thr = None if operating_threshold is None else float(operating_threshold)
        if thr is not None and not 0.0 <= thr <= 1.0:
            raise ConfigError(f"{model}: operating_threshold {thr} in its manifest; expected a probability in [0, 1]")
        if config.on_threshold is not None:
            on, source = float(config.on_threshold), "config"
        elif thr is not None:
            on, source = thr, "manifest"
        else:
            raise ConfigError(
                f"smoothing.on_threshold: {model} has no operating_threshold in a manifest, so there is no "
                "validated threshold for the 'suspicious' state; set smoothing.on_threshold explicitly "
                "(no sensitivity or specificity has been measured for it)"
            )
        if config.off_threshold is not None:
            off = float(config.off_threshold)
            if off > on:
                raise ConfigError(f"smoothing.off_threshold: {off} exceeds the on threshold {on}; expected off <= on")
        else:
            off = on * (1.0 - config.band)  # band in [0, 1) (config): 0 < off <= on for any on > 0
        point = cls(on=on, off=off, operating_threshold=thr, source=source)
        if source == "config" and thr is not None:
            log.warning("smoothing.on_threshold=%.4g overrides the validated operating threshold %.4g of %s: the "
                        "model card's sensitivity/specificity do not describe this 'suspicious' state", on, thr, model)
        elif source == "config":
            log.warning("smoothing.on_threshold=%.4g: %s has no validated operating threshold, so no measured "
                        "sensitivity/specificity describes this 'suspicious' state", on, model)
        log.info("%s", point.describe())
        return point

    def describe(self) -> str:
        where = "the model's validated operating threshold" if self.source == "manifest" else "set by config smoothing.on_threshold"
        return (f"'suspicious' when the smoothed p(malignant) >= {self.on:.4g} ({where}); "
                f"back to 'clear' below {self.off:.4g}")


@dataclass(frozen=True, slots=True)
class SmoothResult:
    malignancy: float | None  # smoothed p(malignant) over lesion frames; None when there is no lesion track
    state: str


class Smoother:
    """One per stream; not thread-safe (the pipeline's smoothing stage owns it).

    `operating_threshold` is the loaded model's (LoadedModel.threshold: the manifest's value,
    None without one); config.on_threshold / off_threshold override it (see OperatingPoint)."""

    def __init__(self, config: SmoothingConfig | None = None, operating_threshold: float | None = None,
                 model: str = "the model") -> None:
        self.config = config or SmoothingConfig()
        self.point = OperatingPoint.resolve(self.config, operating_threshold, model)
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
        if p_benign + p_malignant < cfg.lesion_threshold:
            if self._t_last_lesion_ns is not None and (t_ns - self._t_last_lesion_ns) / 1e9 < cfg.leave_after_s:
                # a brief dropout inside a lesion view: hold the track, do not update it
                return SmoothResult(self._ema, self._state())
            self.reset()
            return SmoothResult(None, "no_lesion")
        x = p_malignant  # the 3-way softmax output the operating threshold was validated on
        if self._ema is None:
            self._ema = x
        else:
            dt = max(0.0, (t_ns - self._t_last_ns) / 1e9)
            alpha = 1.0 - math.exp(-dt / cfg.tau_s)
            self._ema += alpha * (x - self._ema)
        self._t_last_ns = self._t_last_lesion_ns = t_ns
        if self._suspicious and self._ema < self.point.off:
            self._suspicious = False
        elif not self._suspicious and self._ema >= self.point.on:
            self._suspicious = True
        return SmoothResult(self._ema, self._state())

    def _state(self) -> str:
        return "suspicious" if self._suspicious else "clear"
