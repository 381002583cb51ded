import logging
import math

import numpy as np
import pytest

from streamcad.config import SmoothingConfig, config_from_dict
from streamcad.errors import ConfigError
from streamcad.smoothing import OperatingPoint, Smoother

S = 1_000_000_000  # ns per second
THR = 0.37  # a model's operating threshold, as its manifest would give it


def feed(sm, seq, fps=30.0, t0=0):
    out = []
    for i, p in enumerate(seq):
        out.append(sm.update(p, t0 + int(i * S / fps)))
    return out


def test_ema_matches_closed_form():
    cfg = SmoothingConfig(tau_s=0.5)
    sm = Smoother(cfg, THR)
    xs = [0.2, 0.9, 0.9, 0.1]
    probs = [(0.0, 1 - x, x) for x in xs]
    res = feed(sm, probs, fps=10.0)
    alpha = 1 - math.exp(-0.1 / 0.5)
    m = xs[0]
    expected = [m]
    for x in xs[1:]:
        m = m + alpha * (x - m)
        expected.append(m)
    assert all(abs(r.malignancy - e) < 1e-12 for r, e in zip(res, expected, strict=True))


def test_rate_independent():
    """The same 2 s of evidence at 30 and at 60 fps ends at the same smoothed score."""
    cfg = SmoothingConfig(tau_s=0.4)
    a = feed(Smoother(cfg, THR), [(0, 0.2, 0.8)] * 60, fps=30)[-1].malignancy
    b = feed(Smoother(cfg, THR), [(0, 0.2, 0.8)] * 120, fps=60)[-1].malignancy
    assert abs(a - b) < 1e-9


def test_hysteresis_no_flicker():
    cfg = SmoothingConfig(tau_s=0.01, on_threshold=0.6, off_threshold=0.4)
    sm = Smoother(cfg)
    # tau tiny -> EMA follows the input; 0.5 sits between the thresholds
    states = [r.state for r in feed(sm, [(0, 0.3, 0.7), (0, 0.5, 0.5), (0, 0.45, 0.55), (0, 0.7, 0.3)])]
    assert states == ["suspicious", "suspicious", "suspicious", "clear"]
    states = [r.state for r in feed(Smoother(cfg), [(0, 0.5, 0.5), (0, 0.45, 0.55)])]
    assert states == ["clear", "clear"]


def test_leaving_the_lesion_resets():
    cfg = SmoothingConfig(tau_s=1.0, leave_after_s=0.2)
    sm = Smoother(cfg, THR)
    feed(sm, [(0.0, 0.1, 0.9)] * 10, fps=30)
    # brief dropout (< 0.2 s): track held
    r = sm.update((0.9, 0.05, 0.05), int(10 * S / 30))
    assert r.malignancy is not None and r.malignancy > 0.8
    # long absence: reset, then a new lesion starts fresh from its own value
    r = sm.update((0.9, 0.05, 0.05), int(20 * S / 30))
    assert r.state == "no_lesion" and r.malignancy is None
    r = sm.update((0.0, 0.9, 0.1), int(21 * S / 30))
    assert abs(r.malignancy - 0.1) < 1e-12


def test_flags_do_not_update_and_stale_resets():
    sm = Smoother(SmoothingConfig(tau_s=0.01), THR)
    sm.update((0, 0.1, 0.9), 0)
    r = sm.update(None, S // 30, frozenset({"frozen"}))
    assert r.state == "flagged" and abs(r.malignancy - 0.9) < 1e-12
    r = sm.update(None, 2 * S // 30, frozenset({"no_signal"}))
    assert r.state == "flagged" and r.malignancy is None
    r = sm.update((0, 0.8, 0.2), 3 * S // 30)
    assert abs(r.malignancy - 0.2) < 1e-12  # fresh track after the stale source


def test_score_is_the_three_way_p_malignant():
    """The EMA runs on p(malignant) as the softmax gives it, the number the operating threshold
    was validated on; p(malignant | lesion) = 0.4 / 0.7 would be 0.571 here."""
    sm = Smoother(SmoothingConfig(tau_s=0.5), THR)
    r = sm.update((0.3, 0.3, 0.4), 0)
    assert abs(r.malignancy - 0.4) < 1e-12 and r.state == "suspicious"  # 0.4 >= 0.37
    r = Smoother(SmoothingConfig(tau_s=0.5), 0.45).update((0.3, 0.3, 0.4), 0)
    assert r.state == "clear"  # 0.4 < 0.45, although 0.571 would be above it


def test_operating_point_from_the_manifest_threshold_and_band():
    cfg = SmoothingConfig(tau_s=0.01, band=0.25)
    sm = Smoother(cfg, THR)
    off = THR * 0.75  # the band is a fraction of the threshold
    assert sm.point == OperatingPoint(on=THR, off=off, operating_threshold=THR, source="manifest")
    xs = [0.26, THR, 0.34, off + 1e-9, off - 1e-9, 0.36, THR]
    res = feed(sm, [(0.0, 1 - x, x) for x in xs], fps=1.0)  # 1 s apart, tau 0.01 s: alpha == 1.0
    assert [r.malignancy for r in res] == xs
    assert [r.state for r in res] == ["clear", "suspicious", "suspicious", "suspicious", "clear", "clear", "suspicious"]


def _reference_states(xs, on, off):
    """Slow reference: the state after each smoothed value, by the rule written in the docs."""
    out, sus = [], False
    for m in xs:
        sus = m >= on if not sus else m >= off
        out.append("suspicious" if sus else "clear")
    return out


@pytest.mark.parametrize("seed", range(5))
def test_state_matches_reference_on_random_tracks(seed):
    rng = np.random.default_rng(seed)
    thr = float(rng.uniform(0.15, 0.7))
    cfg = SmoothingConfig(tau_s=float(rng.uniform(0.05, 1.0)), band=float(rng.uniform(0.0, 0.3)))
    sm = Smoother(cfg, thr)
    t = np.arange(300) / 30.0
    x = np.clip(thr * (1 + 0.6 * np.sin(2 * np.pi * t / 3.0) + rng.normal(0, 0.3, t.size)), 0, 1)  # swings across thr
    res = feed(sm, [(0.0, 1 - v, v) for v in x])
    ms = [r.malignancy for r in res]
    assert [r.state for r in res] == _reference_states(ms, thr, thr * (1 - cfg.band))
    assert {"clear", "suspicious"} <= {r.state for r in res}  # the track did cross the threshold


def test_no_threshold_needs_an_explicit_config_value():
    with pytest.raises(ConfigError, match=r"^smoothing\.on_threshold: bare\.onnx has no operating_threshold"):
        Smoother(SmoothingConfig(), None, "bare.onnx")
    sm = Smoother(SmoothingConfig(on_threshold=0.5), None, "bare.onnx")
    assert sm.point == OperatingPoint(on=0.5, off=0.5 * (1 - SmoothingConfig().band), operating_threshold=None,
                                      source="config")


def test_override_is_logged_and_kept_apart_from_the_manifest_value(caplog):
    with caplog.at_level(logging.WARNING, logger="streamcad.smoothing"):
        sm = Smoother(SmoothingConfig(on_threshold=0.6, off_threshold=0.4), THR, "m.onnx")
    assert sm.point == OperatingPoint(on=0.6, off=0.4, operating_threshold=THR, source="config")
    assert any("smoothing.on_threshold=0.6 overrides the validated operating threshold 0.37 of m.onnx" in r.message
               for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streamcad.smoothing"):
        Smoother(SmoothingConfig(), THR, "m.onnx")
    assert not caplog.records  # the validated point is not a warning


def test_band_scales_with_the_threshold_and_bad_values_name_the_key():
    # the same relative hysteresis for a model with a low and one with a high threshold
    for thr in (0.1, 0.3, 0.8):
        assert Smoother(SmoothingConfig(band=0.2), thr).point.off == pytest.approx(0.8 * thr)
    with pytest.raises(ConfigError, match=r"^smoothing\.off_threshold: 0\.5 exceeds the on threshold 0\.37"):
        Smoother(SmoothingConfig(off_threshold=0.5), THR)
    with pytest.raises(ConfigError, match=r"^smoothing\.band: .*< 1\.0"):
        config_from_dict({"smoothing": {"band": 1.0}})  # the state could never leave 'suspicious'
    with pytest.raises(ConfigError, match=r"^smoothing\.band: .*>= 0\.0"):
        config_from_dict({"smoothing": {"band": -0.1}})
