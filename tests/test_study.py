"""streamcad.train.study: seed spread / ensemble and label efficiency over run folders, on
predictions whose answers are known (identical seeds, a perfect seed, a missing fold)."""

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("sklearn")

from streamcad.errors import ConfigError  # noqa: E402
from streamcad.train.study import label_efficiency_study, main, seed_study  # noqa: E402


def _write_run(root, folds, p_of, rng_seed=0):
    """A run folder with cv/foldK/result.json; p_of(labels, rng) -> (N,) p(malignant)."""
    rng = np.random.default_rng(rng_seed)
    for k in folds:
        n = 60
        ds = np.where(np.arange(n) % 2, "busi", "busbra")
        ids = [f"{d}:f{k}i{i}" for i, d in enumerate(ds)]
        groups = [f"{d}:g{k}_{i // 2}" for i, d in enumerate(ds)]  # two images a patient
        labels = np.tile([1, 1, 2, 2], n // 4)  # benign / malignant, same per patient pair
        pm = p_of(labels, rng)
        probs = np.stack([np.zeros(n), 1 - pm, pm], axis=1)
        out = root / "cv" / f"fold{k}"
        out.mkdir(parents=True)
        (out / "result.json").write_text(json.dumps({"fold": k, "threshold": 0.5, "wall_s": 1.0, "predictions": {
            "ids": ids, "groups": groups, "labels": labels.tolist(), "probs": probs.tolist(), "dice": [None] * n}}))


noisy = lambda labels, rng: np.clip((labels == 2) * 0.3 + rng.random(len(labels)) * 0.7, 0, 1)  # noqa: E731
perfect = lambda labels, rng: (labels == 2) * 0.8 + 0.1  # noqa: E731


def test_identical_seeds_have_no_spread_and_a_perfect_seed_wins(tmp_path):
    _write_run(tmp_path / "s0", range(5), noisy, 1)
    _write_run(tmp_path / "s1", range(5), noisy, 1)  # the same predictions
    _write_run(tmp_path / "s2", range(5), perfect)
    rep = seed_study([tmp_path / "s0", tmp_path / "s1", tmp_path / "s2"], n_boot=200)
    assert rep["folds"] == [0, 1, 2, 3, 4]
    for d in ("busi", "busbra"):
        r = rep[d]
        assert r["n"] == 150
        assert r["per_seed"][0]["value"] == pytest.approx(r["per_seed"][1]["value"])
        assert r["paired_vs_first"][0]["auc_difference"] == pytest.approx(0.0)
        assert r["per_seed"][2]["value"] == pytest.approx(1.0)
        assert r["paired_vs_first"][1]["ci_low"] > 0 and r["paired_vs_first"][1]["decision"] == "a better"
        assert r["spread"]["max_minus_min"] == pytest.approx(1.0 - r["per_seed"][0]["value"])
        assert r["ensemble"]["value"] > r["per_seed"][0]["value"]  # averaging in a perfect seed helps


def test_only_common_folds_are_pooled_and_label_efficiency_pairs(tmp_path):
    _write_run(tmp_path / "lite0", range(5), perfect)
    _write_run(tmp_path / "le-scratch-f100", range(3), noisy, 2)  # folds 0-2 only
    _write_run(tmp_path / "le-imagenet-f10", [0, 1], noisy, 3)
    _write_run(tmp_path / "le-scratch-f10", [0, 1], noisy, 3)
    rep = label_efficiency_study(tmp_path, n_boot=200)
    assert set(rep["fractions"]) == {"10", "100"}  # 25 / 50 have no folders
    assert rep["fractions"]["100"]["folds"] == [0, 1, 2]
    assert rep["fractions"]["100"]["busbra"]["n"] == 90
    assert rep["fractions"]["100"]["busbra"]["imagenet_minus_scratch"]["ci_low"] > 0
    assert rep["fractions"]["10"]["busi"]["imagenet_minus_scratch"]["auc_difference"] == pytest.approx(0.0)


def test_errors_name_the_folder(tmp_path, capsys):
    _write_run(tmp_path / "a", [0], noisy)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty"):
        seed_study([tmp_path / "a", tmp_path / "empty"])
    _write_run(tmp_path / "b", [1], noisy)
    with pytest.raises(ConfigError, match="no finished fold in common"):
        seed_study([tmp_path / "a", tmp_path / "b"])
    assert main(["label-efficiency", str(tmp_path / "empty"), "--json", str(tmp_path / "x.json")]) == 2
    assert "le-imagenet-fN" in capsys.readouterr().out


def test_archive_keeps_what_the_studies_read(tmp_path):
    from streamcad.train.study import archive

    _write_run(tmp_path / "runs" / "lite0", range(3), noisy, 4)
    _write_run(tmp_path / "runs" / "lite0-s1", range(3), perfect)
    (tmp_path / "runs" / "lite0" / "cv" / "fold0" / "classifier.pt").write_bytes(b"weights")
    written = archive([tmp_path / "runs" / "lite0", tmp_path / "runs" / "lite0-s1"], tmp_path / "kept")
    assert len(written) == 6 and not list((tmp_path / "kept").rglob("*.pt"))
    a = seed_study([tmp_path / "runs" / "lite0", tmp_path / "runs" / "lite0-s1"], n_boot=100)
    b = seed_study([tmp_path / "kept" / "lite0", tmp_path / "kept" / "lite0-s1"], n_boot=100)
    for d in ("busi", "busbra"):
        assert b[d]["per_seed"][0]["value"] == pytest.approx(a[d]["per_seed"][0]["value"], abs=1e-6)


def test_views_study_scores_each_view_against_the_baseline(tmp_path):
    from streamcad.train.study import archive, views_study

    _write_run(tmp_path / "base", range(2), noisy, 5)
    _write_run(tmp_path / "zoom", range(2), noisy, 5)  # the judged mean: the baseline's own p
    for res in (tmp_path / "zoom").glob("cv/fold*/result.json"):  # a perfect full view, a coin-toss zoom
        r = json.loads(res.read_text())
        labels = np.asarray(r["predictions"]["labels"])
        pm = np.where(labels == 2, 0.9, 0.1)
        r["predictions"]["probs_full"] = np.stack([np.zeros_like(pm), 1 - pm, pm], 1).tolist()
        r["predictions"]["probs_zoom"] = [[0.0, 0.5, 0.5]] * len(labels)
        r["predictions"]["probs_zoom"][0] = [0.0, 0.123456789, 0.876543211]
        res.write_text(json.dumps(r))
    rep = views_study(tmp_path / "zoom", tmp_path / "base", n_boot=100)
    assert rep["folds"] == [0, 1]
    for d in ("busi", "busbra"):
        r = rep[d]
        assert r["mean_minus_baseline"]["auc_difference"] == pytest.approx(0.0)
        assert r["full"]["value"] == pytest.approx(1.0) and r["full_minus_baseline"]["ci_low"] > 0
        assert r["zoom"]["value"] < r["baseline"]["value"]
    with pytest.raises(ConfigError, match="probs_"):
        views_study(tmp_path / "base", tmp_path / "zoom")
    archive([tmp_path / "zoom"], tmp_path / "kept")  # every view's p is rounded, not only 'probs'
    kept = json.loads((tmp_path / "kept" / "zoom" / "cv" / "fold0" / "result.json").read_text())["predictions"]
    assert kept["probs_zoom"][0] == [0.0, 0.123457, 0.876543]


def test_compare_pairs_the_folds_and_the_cross_dataset_runs(tmp_path):
    from streamcad.train.cv import compare_runs

    _write_run(tmp_path / "a", range(2), perfect)
    _write_run(tmp_path / "b", range(2), noisy, 6)
    for name, p_of, seed in (("a", noisy, 7), ("b", perfect, 0)):  # cross: b is the better one
        out = tmp_path / name / "cross" / "busi"
        out.mkdir(parents=True)
        labels = np.tile([1, 2], 40)
        pm = p_of(labels, np.random.default_rng(seed))
        out.joinpath("result.json").write_text(json.dumps({"predictions": {
            "ids": [f"busbra:x{i}" for i in range(80)], "groups": [f"busbra:p{i // 2}" for i in range(80)],
            "labels": labels.tolist(), "probs": np.stack([np.zeros(80), 1 - pm, pm], 1).tolist()}}))
    cmp = compare_runs(tmp_path / "a", tmp_path / "b", n_boot=200)
    assert cmp["busi"]["decision"] == "keep a" and cmp["busbra"]["ci_low"] > 0
    assert set(cmp["cross"]) == {"busi"} and cmp["cross"]["busi"]["decision"] == "b better"
    assert cmp["cross"]["busi"]["n"] == 80 and cmp["cross"]["busi"]["ci_high"] < 0
    for fold in (tmp_path / "a" / "cv").iterdir():  # cross-dataset runs alone (they run first) compare too
        for f in fold.iterdir():
            f.unlink()
        fold.rmdir()
    cross_only = compare_runs(tmp_path / "a", tmp_path / "b", n_boot=200)
    assert cross_only["folds_a"] is None and "busi" not in cross_only
    assert cross_only["cross"] == cmp["cross"]
    shutil.rmtree(tmp_path / "a" / "cross")
    with pytest.raises(ConfigError, match="no cv/fold"):
        compare_runs(tmp_path / "a", tmp_path / "b")


def _cross_run(root, cal_malignant, cal_benign, test_malignant, test_benign, threshold, threshold_lcb=0.0):
    """run folder with cross/busi/result.json: calibration and test p(malignant) given per class."""
    def block(mal, ben, tag):
        pm = np.concatenate([mal, ben])
        labels = [2] * len(mal) + [1] * len(ben)
        return {"ids": [f"{tag}{i}" for i in range(len(pm))], "groups": [f"{tag}g{i}" for i in range(len(pm))],
                "labels": labels, "probs": np.stack([np.zeros(len(pm)), 1 - pm, pm], 1).tolist()}
    out = root / "cross" / "busi"
    out.mkdir(parents=True)
    (out / "result.json").write_text(json.dumps({
        "source": "busi", "threshold": threshold, "recipe": {"target_sensitivity": 0.95, "threshold_lcb": threshold_lcb},
        "calibration": block(np.asarray(cal_malignant), np.asarray(cal_benign), "busi:c"),
        "predictions": block(np.asarray(test_malignant), np.asarray(test_benign), "busbra:t")}))


def test_threshold_study_reads_the_rule_its_spread_and_the_shift(tmp_path):
    from streamcad.train.study import threshold_study

    cal_mal = np.linspace(0.30, 0.99, 40)  # 40 malignant: the rule keeps 38 -> threshold = the 3rd lowest
    t = float(cal_mal[2])
    test_mal = np.linspace(0.0, 1.0, 101)  # the new scanner: malignant scores spread over [0, 1]
    _cross_run(tmp_path / "a", cal_mal, np.linspace(0.0, 0.5, 60), test_mal, np.linspace(0.0, 0.6, 100), t)
    row = threshold_study([tmp_path / "a"], n_boot=300)["rows"][0]
    assert row["threshold"] == pytest.approx(t)
    assert row["sensitivity"] == pytest.approx(np.mean(test_mal >= t))  # ~0.65: the shift, exactly counted
    lo, med, hi = row["boot_sensitivity_q05_med_q95"]
    assert lo <= med <= hi and lo < row["sensitivity"] + 0.05 and hi > row["sensitivity"] - 0.05
    assert row["boot_share_sensitivity_at_least_floor"] < 0.2  # the shift, not the calibration's noise
    assert row["part"] == "cross busi" and row["test_threshold_for_target"] == pytest.approx(0.05)  # its own rule: 96 of 101 kept
    assert row["calibration_sensitivity_at_that_threshold"] == 1.0
    # a stored threshold the rule does not give back is refused
    _cross_run(tmp_path / "b", cal_mal, np.linspace(0.0, 0.5, 60), test_mal, np.linspace(0.0, 0.6, 100), t + 0.05)
    with pytest.raises(ConfigError, match="not the run's"):
        threshold_study([tmp_path / "b"])


def test_threshold_study_under_rule_r2(tmp_path):
    from streamcad.train.study import threshold_study

    cal_mal = np.linspace(0.30, 0.99, 29)  # 29 malignant vouch for 0.90 only if all 29 are found
    test_mal = np.linspace(0.0, 1.0, 101)
    _cross_run(tmp_path / "a", cal_mal, np.linspace(0.0, 0.5, 60), test_mal, np.linspace(0.0, 0.6, 100), 0.30, 0.90)
    row = threshold_study([tmp_path / "a"], n_boot=300)["rows"][0]
    assert row["threshold"] == pytest.approx(0.30) and row["threshold_lcb"] == 0.90
    assert row["sensitivity"] == pytest.approx(np.mean(test_mal >= 0.30))
    # resamples with fewer than 29 malignant rows cannot vouch for it: counted, at R2's limit (their lowest malignant)
    assert 0 < row["n_boot_infeasible"] < row["n_boot"] == 300
    lo, med, hi = row["boot_threshold_q05_med_q95"]
    assert 0.30 <= lo <= med <= hi < 0.40  # always the resample's lowest malignant score, here near 0.30
    # the point rule's stored threshold under an R2 recipe is refused (it is not what R2 gives)
    _cross_run(tmp_path / "b", cal_mal, np.linspace(0.0, 0.5, 60), test_mal, np.linspace(0.0, 0.6, 100), float(cal_mal[1]), 0.90)
    with pytest.raises(ConfigError, match="not the run's"):
        threshold_study([tmp_path / "b"])
