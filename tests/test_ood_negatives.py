"""benchmarks/ood_negatives.py, the leave-one-recording-out study of a negatives head: the head
fitted without a recording is the one that scores it, its threshold keeps the breast rate near
the gate's target, and a recording unlike breast is flagged while one that is breast-like is not."""

import numpy as np
import pytest

pytest.importorskip("sklearn")
from streamcad.benchmarks.ood_negatives import head_threshold, leave_one_recording_out  # noqa: E402


def _data(seed=0, d=16):
    rng = np.random.default_rng(seed)
    breast = rng.normal(0, 1, (800, d))
    folds = np.arange(800) % 4
    strata = (np.arange(800) // 400).astype(int)
    far = np.full(d, 4.0)
    clips = {  # three recordings off to one side of breast, one inside the breast cloud
        "a": rng.normal(0, 1, (60, d)) + far, "b": rng.normal(0, 1, (60, d)) + 1.2 * far,
        "c": rng.normal(0, 1, (60, d)) + 0.9 * far, "breastlike": rng.normal(0, 1, (60, d)),
    }
    test = rng.normal(0, 1, (300, d))
    return breast, folds, strata, test, clips


def test_the_threshold_keeps_the_breast_rate_near_the_target():
    breast, folds, strata, test, clips = _data()
    neg = np.concatenate([clips["a"], clips["b"]])
    from streamcad.benchmarks.ood_negatives import fit_head

    thr = head_threshold(breast, folds, strata, neg, target_rate=0.05)
    rate = float((fit_head(breast, neg).decision_function(test) > thr).mean())
    assert 0.0 < rate < 0.15


def test_leave_one_recording_out_flags_the_unlike_and_spares_the_breast_like():
    breast, folds, strata, test, clips = _data()
    none = {k: np.zeros(len(v), bool) for k, v in clips.items()}  # a gate that flags nothing: the head alone
    out = leave_one_recording_out(breast, folds, strata, test, np.zeros(len(test), bool), clips, none)
    assert set(out) == set(clips)
    for k in ("a", "b", "c"):
        assert out[k]["either_flagged"] > 0.9, (k, out[k])
    assert out["breastlike"]["either_flagged"] < 0.2
    assert all(r["breast_test_either_flagged"] < 0.1 for r in out.values())
    # the recording held out is not in its own head's training set: a recording alone on its side
    # of breast is not learnt from the others when they lie elsewhere
    rng = np.random.default_rng(1)
    lonely = {"x": rng.normal(0, 1, (60, 16)) + 4.0, "y": rng.normal(0, 1, (60, 16)) - 4.0}
    out = leave_one_recording_out(breast, folds, strata, test, np.zeros(len(test), bool), lonely,
                                  {k: np.zeros(60, bool) for k in lonely})
    assert out["x"]["head_flagged"] < 0.5 and out["y"]["head_flagged"] < 0.5
