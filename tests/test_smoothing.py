import math

from streamcad.config import SmoothingConfig
from streamcad.smoothing import Smoother

S = 1_000_000_000  # ns per second


def feed(sm, seq, fps=30.0, t0=0):
    out = []
    for i, p in enumerate(seq):
        out.append(sm.update(p, t0 + int(i * S / fps)))
    return out


def test_ema_matches_closed_form():
    cfg = SmoothingConfig(tau_s=0.5)
    sm = Smoother(cfg)
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
    a = feed(Smoother(cfg), [(0, 0.2, 0.8)] * 60, fps=30)[-1].malignancy
    b = feed(Smoother(cfg), [(0, 0.2, 0.8)] * 120, fps=60)[-1].malignancy
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
    sm = Smoother(cfg)
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
    sm = Smoother(SmoothingConfig(tau_s=0.01))
    sm.update((0, 0.1, 0.9), 0)
    r = sm.update(None, S // 30, frozenset({"frozen"}))
    assert r.state == "flagged" and abs(r.malignancy - 0.9) < 1e-12
    r = sm.update(None, 2 * S // 30, frozenset({"no_signal"}))
    assert r.state == "flagged" and r.malignancy is None
    r = sm.update((0, 0.8, 0.2), 3 * S // 30)
    assert abs(r.malignancy - 0.2) < 1e-12  # fresh track after the stale source
