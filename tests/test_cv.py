"""The v2 recipe (train/cv.py): augmentation keeps the lesion, the report's paired test, and one
run end to end on real images -> checkpoint -> ONNX export -> manifest -> load_model -> ORT scores."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")

from streamcad.errors import ConfigError  # noqa: E402
from streamcad.train.augment import ScannerAugment  # noqa: E402
from streamcad.train.cv import (  # noqa: E402
    RecipeConfig,
    _auc_diff_paired,
    dice_scores,
    label_subset,
    lesion_loss,
    run,
    select,
)


def test_scanner_augment_keeps_the_lesion_and_its_aspect_ratio():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 96, 96)
    m = torch.zeros(64, 1, 96, 96)
    m[:, :, 10:30, 60:80] = 1  # a square lesion near the corner: many crops would cut it
    y, mm = ScannerAugment(96)(x, m, g)
    assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1
    kept = mm.flatten(1).sum(1) / m.flatten(1).sum(1)
    assert float(kept.min()) >= 0.9 * 0.9  # >= 90% of the area, minus nearest-neighbour rounding
    rows = (mm[:, 0].sum(2) > 0).sum(1).float()  # lesion height, in rows
    cols = (mm[:, 0].sum(1) > 0).sum(1).float()
    assert float((rows / cols - 1).abs().max()) < 0.35  # rotation <= 10 deg keeps a square square-ish


def test_lesion_loss_prefers_the_right_map():
    masks = torch.zeros(2, 1, 64, 64)
    masks[:, :, 16:48, 16:48] = 1
    good = torch.full((2, 1, 8, 8), -6.0)
    good[:, :, 2:6, 2:6] = 6.0
    assert float(lesion_loss(good, masks)) < 0.1 < float(lesion_loss(-good, masks))


def test_dice_scores_against_masks():
    masks = np.zeros((2, 40, 40), np.uint8)
    masks[0, 10:30, 10:30] = 255
    maps = np.zeros((2, 5, 5), np.float32)
    maps[0, 1:4, 1:4] = 1.0  # 10..30 of 40 in 5 cells: cells 1..3 (8..32 px)
    d = dice_scores(maps, masks)
    assert 0.8 < d[0] <= 1.0 and np.isnan(d[1])


def test_paired_bootstrap_difference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    groups = np.repeat(np.arange(200), 2)
    a = y + rng.normal(0, 0.7, 400)  # informative
    b = rng.normal(0, 1, 400)  # coin toss
    v, lo, hi = _auc_diff_paired(y, a, a, groups, 200, 0)
    assert v == 0 and lo == 0 and hi == 0
    v, lo, hi = _auc_diff_paired(y, a, b, groups, 200, 0)
    assert v > 0.2 and lo > 0


def test_one_run_end_to_end_to_the_runtime(tmp_path, data_root):
    """Fine-tune (1 epoch, every 25th image) -> classifier.pt -> export -> the runtime scores the
    test images as PyTorch did (the checkpoint contract from training to load_model)."""
    from streamcad.engines.export import export_checkpoint
    from streamcad.manifest import load_model
    from streamcad.preprocess import PreprocessSpec, letterbox
    from streamcad.train.common import load_checkpoint
    from streamcad.train.cv import backfill_calibration, load_both, rethreshold
    from streamcad.train.evaluate import binary_view, choose_threshold, sensitivity_lower_bound

    run_dir = tmp_path / "cv" / "fold0"
    res = run(RecipeConfig(epochs=1, batch_size=8), "cv", run_dir, fold=0, limit=25)
    assert res["n_test"] > 0 and 0 <= res["threshold"] <= 1 and res["temperature"] > 0
    saved = json.loads((run_dir / "result.json").read_text())
    assert saved["predictions"]["ids"] == res["predictions"]["ids"]
    # the calibration split is stored, and the threshold rule gives the run's threshold on it
    cal = saved["calibration"]
    assert len(cal["ids"]) == res["n_calibration"] and not set(cal["ids"]) & set(res["predictions"]["ids"])
    _, yc, pc = binary_view(np.asarray(cal["labels"]), np.asarray(cal["probs"]))
    assert choose_threshold(yc, pc, "sens90", target_sensitivity=0.95) == pytest.approx(res["threshold"], abs=1e-9)
    # an older run without it gets the same scores back from its checkpoint ...
    (run_dir / "result.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "calibration"}))
    assert [r["n"] for r in backfill_calibration(tmp_path)] == [res["n_calibration"]]
    back = json.loads((run_dir / "result.json").read_text())["calibration"]
    assert back["ids"] == cal["ids"]
    np.testing.assert_allclose(back["probs"], cal["probs"], atol=1e-6)
    # ... and a run whose stored threshold is not what its checkpoint gives is refused, nothing written
    (run_dir / "result.json").write_text(json.dumps({**{k: v for k, v in saved.items() if k != "calibration"},
                                                      "threshold": res["threshold"] + 0.01}))
    with pytest.raises(ConfigError, match="not the run's split or weights"):
        backfill_calibration(tmp_path)
    assert "calibration" not in json.loads((run_dir / "result.json").read_text())
    # rule R2 re-applied from the stored calibration scores: only the threshold moves
    (run_dir / "result.json").write_text(json.dumps(saved))
    n_mal = int(yc.sum())
    lcb = 0.5 * 0.05 ** (1 / n_mal)  # half of what all n_mal found can vouch for: feasible
    assert [r["n_calibration_malignant"] for r in rethreshold(tmp_path, tmp_path / "r2", lcb)] == [n_mal]
    r2 = json.loads((tmp_path / "r2" / "cv" / "fold0" / "result.json").read_text())
    assert r2["recipe"]["threshold_lcb"] == lcb and r2["predictions"] == saved["predictions"]
    assert r2["temperature"] == saved["temperature"] and r2["rethreshold_from"]["threshold"] == saved["threshold"]
    assert r2["threshold"] <= saved["threshold"]
    assert sensitivity_lower_bound(int((pc[yc == 1] >= r2["threshold"]).sum()), n_mal) >= lcb
    ck_src, ck_r2 = load_checkpoint(run_dir / "classifier.pt"), load_checkpoint(tmp_path / "r2" / "cv" / "fold0" / "classifier.pt")
    assert ck_r2["threshold"] == r2["threshold"] and ck_r2["train_config"]["threshold_lcb"] == lcb
    assert all(torch.equal(ck_src["model"][k], ck_r2["model"][k]) for k in ck_src["model"])
    # a bound the split's malignant count cannot vouch for is refused by name, nothing written
    with pytest.raises(ConfigError, match=f"{n_mal} positives cannot vouch"):
        rethreshold(tmp_path, tmp_path / "r3", min(0.99, 0.05 ** (1 / n_mal) + 0.01))
    assert not (tmp_path / "r3").exists()
    _, test = select(load_both(160), "cv", fold=0)
    assert set(res["predictions"]["ids"]) <= set(test.ids.tolist())  # only fold-0 images are scored
    out = tmp_path / "m.onnx"
    manifest, parity = export_checkpoint(run_dir / "classifier.pt", out, data_root=data_root)
    assert parity.passed and manifest.operating_threshold == pytest.approx(res["threshold"])
    model = load_model(out)
    spec = PreprocessSpec.from_dict(manifest.preprocess)
    idx = [list(test.ids).index(i) for i in res["predictions"]["ids"][:6]]
    x = ((test.images[idx].astype(np.float32) / 255 - spec.mean) / spec.std)[:, None]
    logits = model.backend.infer(x)["logits"]
    e = np.exp(logits - logits.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    np.testing.assert_allclose(p, np.asarray(res["predictions"]["probs"][:6]), atol=1e-4)
    assert letterbox(test.images[idx[0]], 160).shape == (160, 160)


def test_label_subset_is_nested_per_class_whole_groups_and_paired_across_seeds():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(300), rng.integers(1, 4, 300))  # patients with 1-3 images
    labels = (rng.random(300) < 0.35).astype(int)[groups]  # one label per patient
    subsets = {f: label_subset(labels, groups, f) for f in (0.1, 0.25, 0.5, 1.0)}
    assert len(subsets[1.0]) == len(labels)
    for small, big in ((0.1, 0.25), (0.25, 0.5), (0.5, 1.0)):
        assert set(subsets[small]) < set(subsets[big])  # nested: 10% within 25% within 50%
    for f, idx in subsets.items():
        kept = set(groups[idx].tolist())
        assert set(np.nonzero(np.isin(groups, list(kept)))[0]) == set(idx.tolist())  # whole groups only
        for c in (0, 1):
            n_c = int((labels == c).sum())
            got = int((labels[idx] == c).sum())
            assert np.ceil(f * n_c) <= got <= np.ceil(f * n_c) + 3  # at most one group over
    # the subset does not depend on the run's seed (ours and scratch, every seed: the same images)
    assert np.array_equal(label_subset(labels, groups, 0.25), subsets[0.25])
    # the EMA keeps the same end-of-schedule weight on the initial weights at any fraction
    full, tenth = RecipeConfig(), RecipeConfig(label_fraction=0.1)
    assert full.ema_decay_effective == full.ema_decay
    assert np.isclose(tenth.ema_decay_effective ** 55, full.ema_decay ** 550)
    with pytest.raises(ConfigError, match="frozen_blocks"):
        RecipeConfig(init="scratch")
    with pytest.raises(ConfigError, match="label_fraction"):
        RecipeConfig(label_fraction=0.0)


def test_what_frozen_blocks_and_train_stem_freeze():
    from streamcad.nets import build_model

    def trains(model):
        return {"stem": all(p.requires_grad for p in model.stem.parameters()),
                "block0": all(p.requires_grad for p in model.blocks[0].parameters()),
                "block3": all(p.requires_grad for p in model.blocks[3].parameters())}

    assert trains(build_model("lite0", pretrained=False)) == {"stem": False, "block0": False, "block3": True}
    assert trains(build_model("lite0", pretrained=False, frozen_blocks=0)) == {"stem": False, "block0": True, "block3": True}
    everything = build_model("lite0", pretrained=False, frozen_blocks=0, train_stem=True)
    assert trains(everything) == {"stem": True, "block0": True, "block3": True}
    everything.train()
    assert everything.stem.training  # its BatchNorm statistics update too
    assert everything.model_config["train_stem"] is True
    assert "train_stem" not in build_model("lite0", pretrained=False).model_config  # older checkpoints' configs unchanged
    with pytest.raises(ConfigError, match="train_stem"):
        build_model("lite0", pretrained=False, frozen_blocks=2, train_stem=True)
    with pytest.raises(ConfigError, match="train_stem"):
        RecipeConfig(train_stem=True)
    assert RecipeConfig(frozen_blocks=0, train_stem=True).train_stem


def test_an_ssl_start_loads_its_backbone_and_is_refused_when_it_saw_the_test(tmp_path, data_root):
    """Lever 5: `cv pretrain` on a cross run's training part (every 20th BUSI image) stores its pool;
    --ssl-init loads the stem, blocks and fusion (the heads keep the run's own initialisation) for a
    run whose test part is BUS-BRA, and refuses it where the pool holds a test image (the other
    direction, an in-domain fold) or only a test image's group-mate (a BUSI duplicate group)."""
    from streamcad.manifest import sha256_file
    from streamcad.nets import build_model
    from streamcad.train.common import load_checkpoint
    from streamcad.train.cv import load_both, load_ssl_start, pretrain_part

    path = pretrain_part("cross", tmp_path / "ssl", source="busi", steps=2, limit=20, batch_size=8)
    ck = load_checkpoint(path)
    arrays = load_both(160)
    busi = arrays.ids[np.char.startswith(arrays.ids.astype(str), "busi:")]
    assert ck["kind"] == "ssl" and ck["pool"]["ids"] == busi[::20].tolist()
    assert ck["train_config"]["decoupled"] and ck["train_config"]["views"] == "scanner"
    assert ck["model_config"]["name"] == "lite0" and ck["model_config"]["frozen_blocks"] == 3

    _, busbra_test = select(arrays, "cross", source="busi")
    model = build_model("lite0")
    head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("head.", "lesion_"))}
    start = load_ssl_start(model, path, arrays, busbra_test)
    own = model.state_dict()
    assert all(torch.equal(own[k], ck["model"][k]) for k in own if k.startswith(("stem.", "blocks.", "fusion.")))
    imagenet = build_model("lite0").state_dict()
    assert any(not torch.equal(ck["model"][k], imagenet[k]) for k in ck["model"] if k.startswith("blocks.3."))  # trained
    assert all(torch.equal(ck["model"][k], imagenet[k]) for k in ck["model"] if k.startswith(("stem.", "blocks.0.")))  # frozen
    assert all(torch.equal(own[k], v) for k, v in head.items())
    assert start["sha256"] == sha256_file(path) and start["n_pool"] == len(busi[::20])

    for mode, kw in (("cross", {"source": "busbra"}), ("cv", {"fold": 0})):
        _, test = select(arrays, mode, **kw)
        with pytest.raises(ConfigError, match=r"its pool holds [1-9]\d* test images"):
            load_ssl_start(build_model("lite0"), path, arrays, test)
    pool = set(ck["pool"]["ids"])
    mate = next(i for i, g in zip(arrays.ids.tolist(), arrays.groups.tolist(), strict=True)
                if i not in pool and any(p in pool for p in arrays.ids[arrays.groups == g].tolist()))
    with pytest.raises(ConfigError, match="holds 0 test images and 1 test groups"):
        load_ssl_start(build_model("lite0"), path, arrays, arrays.subset(np.nonzero(arrays.ids == mate)[0]))
    with pytest.raises(ConfigError, match="pretrained .*frozen_blocks.: 3.*this run trains .*frozen_blocks.: 0"):
        load_ssl_start(build_model("lite0", frozen_blocks=0), path, arrays, busbra_test)
    with pytest.raises(ConfigError, match="no such file"):
        load_ssl_start(build_model("lite0"), tmp_path / "missing.pt", arrays, busbra_test)

    # the whole run: the fine-tune records its start, and a checkpoint that is not an SSL one is refused
    res = run(RecipeConfig(epochs=1, batch_size=8, ssl_init=str(path)), "cross", tmp_path / "ft", source="busi", limit=25)
    assert res["ssl_start"]["sha256"] == start["sha256"]
    assert "ultrasound SSL" in load_checkpoint(tmp_path / "ft" / "classifier.pt")["train_config"]["init"]
    with pytest.raises(ConfigError, match="kind 'classifier'; expected an SSL checkpoint"):
        load_ssl_start(build_model("lite0"), tmp_path / "ft" / "classifier.pt", arrays, busbra_test)
    with pytest.raises(ConfigError, match="an SSL start is lite0 pretrained from ImageNet"):
        RecipeConfig(ssl_init=str(path), init="scratch", frozen_blocks=0)


def test_an_interrupted_run_resumes_and_counts_its_whole_wall_time(tmp_path, data_root):
    """A run killed after its first epoch (a real process, SIGKILL) restarts from last.pt at the
    second epoch, and its result.json counts the seconds spent before the kill as well."""
    import os
    import subprocess
    import sys
    import time

    from streamcad.train.common import load_checkpoint

    run_dir = tmp_path / "cv" / "fold0"
    code = ("from streamcad.train.cv import RecipeConfig, run; "
            f"run(RecipeConfig(epochs=2, batch_size=8), 'cv', {str(run_dir)!r}, fold=0, limit=25)")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "STREAMCAD_DATA": str(data_root)})
    last = run_dir / "last.pt"
    deadline = time.monotonic() + 600
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # last.pt is written atomically (tmp file + os.replace): present means complete
    proc.wait(timeout=30)
    if not last.exists():
        pytest.fail(f"the run ended (rc {proc.returncode}) or timed out before its first epoch's checkpoint")
    ck = load_checkpoint(last)
    if ck["epoch"] != 0:
        pytest.skip("the machine finished both epochs before the kill; nothing left to resume")
    before = ck["wall_s"]
    assert before > 0
    res = run(RecipeConfig(epochs=2, batch_size=8), "cv", run_dir, fold=0, limit=25)
    assert res["resumed_at_epoch"] == 1
    assert res["wall_s"] > before
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]
    assert not last.exists()
