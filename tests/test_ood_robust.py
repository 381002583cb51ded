"""The capture-augmented gate (train.ood.capture_degrade, fit_calibrated, pool_strata) and its
study (benchmarks/ood_robust.py): the degradations keep the frame's geometry and change its
pixels as named; the threshold rule holds every stratum near its target; a gate that has also
seen shifted breast frames flags fewer of them while still flagging what lies far away; the
adoption rule is the one written down before the first run."""

import numpy as np
import pytest

from streamcad.train.ood import (
    StreamFeatures,
    capture_degrade,
    fit_calibrated,
    pool_strata,
    stack_strata,
)


def _screen(seed=0, h=240, w=320):
    rng = np.random.default_rng(seed)
    g = np.zeros((h, w), np.uint8)
    g[40:200, 60:260] = np.clip(rng.normal(90, 40, (160, 200)), 0, 255).astype(np.uint8)  # a speckled sector
    return g


def test_capture_degrade_keeps_shape_is_seeded_and_changes_pixels():
    pytest.importorskip("cv2")
    g = _screen()
    outs = [capture_degrade(g, np.random.default_rng([0, i])) for i in range(20)]
    assert all(o.shape == g.shape and o.dtype == np.uint8 for o in outs)
    np.testing.assert_array_equal(capture_degrade(g, np.random.default_rng([0, 3])), outs[3])
    changed = sum(not np.array_equal(o, g) for o in outs)
    assert changed >= 17  # each of the four applies with p = 0.5: all four skipped has p = 1/16
    # the speckle's fine texture is what blur, resolution and JPEG remove: its high-pass energy falls on average
    hp = lambda a: float(np.abs(np.diff(a[40:200, 60:260].astype(float), axis=1)).mean())  # noqa: E731
    assert np.mean([hp(o) for o in outs]) < 0.9 * hp(g)


def _strata(rng, shift=0.0, d=12, n=300):
    out = {}
    for ds in ("a", "b"):
        e = rng.normal(0, 1, (n, d)) + shift
        out[(ds, "linear")] = (StreamFeatures(e.astype(np.float32), np.zeros((n, 3), np.float32), [()] * n,
                                              list(rng.integers(0, 2, n).astype(str))), np.arange(n) % 4)
    return out


def test_fit_calibrated_holds_every_stratum_near_its_target():
    rng = np.random.default_rng(0)
    strata = _strata(rng)
    emb, labels, folds, which = stack_strata(strata)
    gate, oof, q = fit_calibrated(emb, labels, folds, which, target_rate=0.05, n_axes=4)
    assert gate.threshold == max(q.values())
    rates = [float((oof[which == k] > gate.threshold).mean()) for k in np.unique(which)]
    assert max(rates) == pytest.approx(0.05, abs=0.01) and min(rates) <= 0.05
    # fresh frames of the same distribution are flagged near the target, far ones all
    assert float(gate.out_of_domain(rng.normal(0, 1, (1000, 12))).mean()) < 0.12
    assert float(gate.out_of_domain(rng.normal(0, 1, (200, 12)) + 6).mean()) == 1.0


def test_pool_strata_concatenates_each_stratum():
    rng = np.random.default_rng(1)
    a, b = _strata(rng), _strata(rng, shift=1.0)
    p = pool_strata(a, b)
    assert set(p) == set(a)
    for k in a:
        np.testing.assert_array_equal(p[k][0].embeddings, np.concatenate([a[k][0].embeddings, b[k][0].embeddings]))
        assert len(p[k][0]) == len(a[k][0]) + len(b[k][0]) and len(p[k][1]) == len(p[k][0])


def test_the_augmented_design_flags_fewer_shifted_breast_frames_and_still_the_far_recordings():
    from streamcad.benchmarks.ood_negatives import DEGRADATIONS, HeldOut
    from streamcad.benchmarks.ood_robust import decide, measure_design

    rng = np.random.default_rng(2)
    d = 12
    direction = np.zeros(d)
    direction[0] = 6.0  # what the 'degradation' does to an embedding here: a shift along one axis
    clean, shifted = _strata(rng), _strata(rng, shift=direction)
    test = rng.normal(0, 1, (400, d))
    held = HeldOut(test, test + 0.01, np.where(np.arange(400) < 200, "a", "b"),
                   {k: test + direction for k in DEGRADATIONS})
    clips = {"far": rng.normal(0, 1, (60, d)) + 8.0, "other_side": rng.normal(0, 1, (60, d)) - 8.0}
    ds_of = [ds for ds, _ in clean]
    cur = measure_design(clean, ds_of, clips, held)
    aug = measure_design(pool_strata(clean, shifted), ds_of, clips, held)
    assert cur["degradations_flagged"]["blur_sigma2"] > 0.5 > 0.15 > aug["degradations_flagged"]["blur_sigma2"]
    assert cur["recordings"] == {"far": 1.0, "other_side": 1.0} == aug["recordings"]
    assert aug["breast_test_flagged"] <= 0.08 and set(aug["unseen_dataset_flagged"]) == {"a", "b"}
    verdict = decide(cur, aug, n_recordings=2)
    assert verdict["a_recordings"] and verdict["b_breast_held_out"]


def test_decide_is_the_rule_written_before_the_first_run():
    from streamcad.benchmarks.ood_robust import decide

    cur = {"unseen_dataset_flagged": {"busi": 0.20, "busbra": 0.06}}
    ok = {"recording_frames_flagged": 0.93, "recordings_at_least_90pct": 11, "breast_test_flagged": 0.01,
          "breast_test_video_flagged": 0.02, "unseen_dataset_flagged": {"busi": 0.10, "busbra": 0.05}}
    assert decide(cur, ok, 12)["adopt"]
    for change, failed in [({"recording_frames_flagged": 0.89}, "a_recordings"),
                           ({"recordings_at_least_90pct": 10}, "a_recordings"),
                           ({"breast_test_video_flagged": 0.051}, "b_breast_held_out"),
                           ({"unseen_dataset_flagged": {"busi": 0.11, "busbra": 0.05}}, "c_unseen_dataset")]:
        v = decide(cur, {**ok, **change}, 12)
        assert not v["adopt"] and not v[failed], change
