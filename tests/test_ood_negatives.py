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


def test_cross_dataset_flags_an_unseen_dataset_only_where_it_leans_to_the_negatives():
    from streamcad.benchmarks.ood_negatives import cross_dataset

    rng = np.random.default_rng(3)
    d = 16
    neg = rng.normal(0, 1, (200, d)) + 4.0
    a = rng.normal(0, 1, (400, d))
    for b_shift, low in ((0.0, True), (2.5, False)):  # b like a; b half-way to the negatives
        b = rng.normal(0, 1, (400, d)) + b_shift
        z = np.concatenate([a, b])
        ds = np.array(["a"] * 400 + ["b"] * 400)
        folds = np.tile(np.arange(4), 200)
        strata = (ds == "b").astype(int)
        test = np.concatenate([rng.normal(0, 1, (150, d)), rng.normal(0, 1, (150, d)) + b_shift])
        test_ds = np.array(["a"] * 150 + ["b"] * 150)
        out = cross_dataset(z, folds, strata, ds, test, test_ds, neg, target_rate=0.05)
        assert out["b"]["fitted_on"] == ["a"] and out["b"]["unseen_dataset_frames"] == 150
        if low:
            assert out["b"]["unseen_dataset_head_flagged"] < 0.15
        else:
            assert out["b"]["unseen_dataset_head_flagged"] > 0.5
            assert out["a"]["seen_datasets_head_flagged"] < 0.15  # b's own frames, under the head fitted on b


def test_the_fixed_degradations_do_what_they_are_named():
    pytest.importorskip("cv2")
    from streamcad.benchmarks.ood_negatives import DEGRADATIONS

    rng = np.random.default_rng(0)
    g = np.zeros((240, 320), np.uint8)
    g[40:200, 60:260] = np.clip(rng.normal(90, 40, (160, 200)), 0, 255).astype(np.uint8)
    hp = lambda a: float(np.abs(np.diff(a.astype(float), axis=1)).mean())  # noqa: E731
    out = {k: fn(g) for k, fn in DEGRADATIONS.items()}
    assert all(o.shape == g.shape and o.dtype == np.uint8 for o in out.values())
    for k in ("half_resolution", "blur_sigma2"):
        assert hp(out[k]) < 0.8 * hp(g), k
    assert hp(out["jpeg_q30"]) < hp(g) and np.abs(out["jpeg_q30"].astype(float) - g).mean() > 3  # lossy
    assert out["gamma_0.6"][40:200, 60:260].mean() > g[40:200, 60:260].mean() + 20
    assert out["gamma_1.6"][40:200, 60:260].mean() < g[40:200, 60:260].mean() - 20
    assert len(np.unique(out["grey_levels_32"])) <= 32 and out["grey_levels_32"].min() == 0


def test_leave_one_recording_out_measures_the_images_under_each_fit():
    """--design robust: the held-out images as they are are scored under every fit, gate OR head;
    images that lean to a recording are flagged, images like the breast frames are not."""
    breast, folds, strata, test, clips = _data()
    none = {k: np.zeros(len(v), bool) for k, v in clips.items()}
    rng = np.random.default_rng(3)
    images = np.concatenate([rng.normal(0, 1, (100, 16)), rng.normal(0, 1, (100, 16)) + 4.0])  # breast-like, then 'a'-like
    gate_images = np.zeros(200, bool)
    gate_images[:10] = True  # the gate flags 10 of the breast-like images
    out = leave_one_recording_out(breast, folds, strata, test, np.zeros(len(test), bool), clips, none,
                                  z_images=images, gate_images=gate_images)
    for r in out.values():
        assert r["breast_images_either_flagged"] >= r["breast_images_head_flagged"]
        assert 0.45 <= r["breast_images_head_flagged"] <= 0.6  # the 'a'-like half, hardly any of the rest
        assert r["breast_images_either_flagged"] - r["breast_images_head_flagged"] == pytest.approx(0.05, abs=0.03)
