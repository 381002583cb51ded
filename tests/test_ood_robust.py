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


def _hospitals(rng, d=12, n=300, apart=4.0):
    """Two 'hospitals' whose breast frames lie `apart` apart along one axis, two strata each."""
    out = {}
    for k, ds in enumerate(("a", "b")):
        for sec in ("linear", "raw"):
            e = rng.normal(0, 1, (n, d))
            e[:, 0] += apart * k
            out[(ds, sec)] = (StreamFeatures(e.astype(np.float32), np.zeros((n, 3), np.float32), [()] * n,
                                             list(rng.integers(0, 2, n).astype(str))), np.arange(n) % 4)
    return out


def test_the_hospital_rule_sets_a_threshold_that_a_third_hospital_passes():
    """A third hospital as far from the two fitted ones as they are from each other, in a direction
    of its own: the fold rule flags most of it, the hospital rule (its threshold at least the 95th
    percentile of each hospital's frames under a gate fitted on the other) passes most of it; both
    flag what lies far away."""
    rng = np.random.default_rng(4)
    d = 12
    strata = _hospitals(rng, d)
    emb, labels, folds, which = stack_strata(strata)
    hosp = np.array([ds for ds, _ in strata])[which]
    fold_gate, _, q = fit_calibrated(emb, labels, folds, which, n_axes=4)
    gate, _, q2 = fit_calibrated(emb, labels, folds, which, n_axes=4, hospitals=hosp)
    assert q2 == q and gate.threshold == max(max(q.values()), max(gate.info["hospital_quantiles"].values()))
    assert gate.threshold > 1.5 * fold_gate.threshold and gate.info["hospital_rate"] == 0.05
    third = rng.normal(0, 1, (1000, d))
    third[:, 1] += 4.0  # as far as b is from a, along an axis neither varies in
    assert float(fold_gate.out_of_domain(third).mean()) > 0.5
    assert float(gate.out_of_domain(third).mean()) < 0.2
    assert float(gate.out_of_domain(rng.normal(0, 1, (200, d)) + 12.0).mean()) == 1.0
    with pytest.raises(Exception, match="at least 2"):
        fit_calibrated(emb, labels, folds, which, hospitals=np.full(len(emb), "a"))


def test_nested_check_leaves_each_group_out_of_fit_and_threshold():
    from streamcad.benchmarks.ood_robust import nested_check

    rng = np.random.default_rng(5)
    strata = _hospitals(rng, apart=5.0)
    groups = {k: np.full(len(f), k[0]) for k, (f, _) in strata.items()}
    groups[("b", "linear")][:150] = groups[("b", "raw")][:150] = "c"  # b split into two 'devices' b and c
    for rule in (False, True):
        out = nested_check(strata, groups, rule)
        assert set(out) == {"a", "b", "c"} and out["a"]["images"] == 300 and out["c"]["images"] == 150
    raw, hosp = nested_check(strata, groups, False), nested_check(strata, groups, True)
    # a left out: the fit (b + c, one hospital's two devices) has no hospital-sized spread to learn
    # from, so neither rule passes a: the nested check does not flatter the hospital rule
    assert raw["a"]["images_flagged"] > 0.5 and hosp["a"]["images_flagged"] > 0.5
    # b left out: the hospital rule over a and c has seen a hospital-sized shift: a higher threshold
    assert hosp["b"]["threshold"] > 1.5 * raw["b"]["threshold"]
    assert hosp["b"]["images_flagged"] <= raw["b"]["images_flagged"] <= 0.1


def test_decide_hospital_is_the_rule_written_before_the_first_run():
    from streamcad.benchmarks.ood_robust import decide_hospital

    raw = {"nested": {"busi": {"images_flagged": 0.9}, "busbra/5": {"images_flagged": 0.3},
                      "busbra/7": {"images_flagged": 0.08}}}
    ok = {"nested": {"busi": {"images_flagged": 0.45}, "busbra/5": {"images_flagged": 0.1},
                     "busbra/7": {"images_flagged": 0.09}},
          "breast_images_flagged": 0.01, "breast_test_flagged": 0.0, "breast_test_video_flagged": 0.05,
          "recording_frames_flagged": 0.40}
    assert decide_hospital(raw, ok)["adopt"]
    for change, failed in [({"nested": {**ok["nested"], "busi": {"images_flagged": 0.46}}}, "a_nested_left_out_images"),
                           ({"nested": {**ok["nested"], "busbra/5": {"images_flagged": 0.16}}}, "a_nested_left_out_images"),
                           ({"breast_images_flagged": 0.051}, "b_breast_held_out"),
                           ({"recording_frames_flagged": 0.399}, "c_recordings_floor")]:
        v = decide_hospital(raw, {**ok, **change})
        assert not v["adopt"] and not v[failed], change


def test_site_stratum_labels_by_the_models_prediction_and_deals_the_folds():
    from streamcad.benchmarks.ood_robust import site_stratum

    logits = np.array([[0, 1, 2], [5, 0, 0], [0, 3, 1], [0, 0, 9], [1, 0, 0]], np.float32)
    f = StreamFeatures(np.zeros((5, 4), np.float32), logits, [()] * 5, [None] * 5)
    s, folds = site_stratum(f, [1, 2, 4])
    assert s.labels == ["malignant", "normal", "benign", "malignant", "normal"]
    assert folds.tolist() == [1, 2, 4, 1, 2] and s.embeddings is f.embeddings


def test_site_study_lets_a_new_site_in_with_its_own_images():
    """A site far from the fitted hospital: with none of its images the gate flags it, with 100 of
    them (labels the model's own) it passes its held-out images and still flags far recordings."""
    from streamcad.benchmarks.ood_negatives import HeldOut
    from streamcad.benchmarks.ood_robust import decide_site, site_study

    rng = np.random.default_rng(6)
    d = 12
    strata = _hospitals(rng, d, n=300, apart=5.0)
    for f, _ in strata.values():  # logits: class 1 mostly, as a model's would be
        f.logits[:] = rng.normal(0, 1, f.logits.shape) + np.array([0, 2, 0])
    test = {ds: rng.normal(0, 1, (150, d)) + np.r_[5.0 * k, np.zeros(d - 1)] for k, ds in enumerate(("a", "b"))}
    held = HeldOut(np.concatenate(list(test.values())), None, np.repeat(["a", "b"], 150), {},
                   images=np.concatenate(list(test.values())), image_datasets=np.repeat(["a", "b"], 150))
    clips = {"far": rng.normal(0, 1, (80, d)) + np.r_[np.zeros(d - 1), 9.0]}
    from streamcad.benchmarks.ood_robust import SITE_SIZES

    study = site_study(strata, [1, 2, 3, 4], clips, held)
    assert set(study) == {"a", "b"} and set(study["a"]) == {str(n) for n in SITE_SIZES}
    for site in ("a", "b"):
        assert study[site]["0"]["site_images_flagged"] > 0.6  # the other hospital's gate alone
        assert study[site]["100"]["site_images_flagged"] <= 0.05
        assert study[site]["100"]["other_images_flagged"] <= 0.1
        assert study[site]["100"]["recording_frames_flagged"] == 1.0
    assert decide_site(study)["offer_site"]


def test_decide_site_is_the_rule_written_before_the_first_run():
    from streamcad.benchmarks.ood_robust import decide_site

    ok = {"busi": {"100": {"site_images_flagged": 0.05, "recording_frames_flagged": 0.5}},
          "busbra": {"100": {"site_images_flagged": 0.01, "recording_frames_flagged": 0.7}}}
    assert decide_site(ok)["offer_site"]
    for site, change, failed in [("busi", {"site_images_flagged": 0.051}, "a_site_images"),
                                 ("busbra", {"recording_frames_flagged": 0.49}, "b_recordings_floor")]:
        bad = {k: {"100": {**v["100"], **(change if k == site else {})}} for k, v in ok.items()}
        v = decide_site(bad)
        assert not v["offer_site"] and not v[failed], change

