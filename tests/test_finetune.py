"""train.finetune: leakage-free splits, label subsampling, class weights, temperature scaling,
the overlay ablation, SSL initialisation and one training epoch."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training test: needs the train extra")

from streamcad.errors import ConfigError  # noqa: E402
from streamcad.preprocess import PreprocessSpec  # noqa: E402
from streamcad.train.common import save_checkpoint  # noqa: E402
from streamcad.train.finetune import (  # noqa: E402
    FinetuneConfig,
    apply_overlay,
    build_classifier,
    class_weights,
    fit_temperature,
    split_train_val,
    subsample_labels,
    train_one_epoch,
)


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP spinning makes 2 threads 5-10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_split_train_val_is_group_disjoint_and_stratified():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(300), 2)  # two images per patient, like BUS-BRA
    labels = np.repeat(rng.choice([1, 2], size=300, p=[0.7, 0.3]), 2)
    tr, va = split_train_val(labels, groups, 0.2, seed=0)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 600
    assert not set(groups[tr]) & set(groups[va])
    assert 0.15 < len(va) / 600 < 0.25
    assert abs(np.mean(labels[va] == 2) - np.mean(labels == 2)) < 0.05
    tr2, va2 = split_train_val(labels, groups, 0.2, seed=0)
    assert np.array_equal(va, va2)
    assert not np.array_equal(va, split_train_val(labels, groups, 0.2, seed=1)[1])


def test_subsample_labels_is_stratified_and_nested():
    labels = np.array([0] * 40 + [1] * 200 + [2] * 100)
    idx10 = subsample_labels(labels, 0.1, seed=3)
    assert np.bincount(labels[idx10], minlength=3).tolist() == [4, 20, 10]
    idx50 = subsample_labels(labels, 0.5, seed=3)
    assert set(idx10) <= set(idx50)  # adding labels, not redrawing
    assert np.array_equal(subsample_labels(labels, 1.0, seed=3), np.arange(340))
    few = np.array([1] * 5 + [2])
    assert np.bincount(few[subsample_labels(few, 0.1, 0)], minlength=3).tolist() == [0, 1, 1]  # >= 1 per class


def test_class_weights_inverse_frequency_and_absent_class_zero():
    busi = np.array([0] * 133 + [1] * 437 + [2] * 210)
    w = class_weights(busi)
    np.testing.assert_allclose(w, [780 / (3 * 133), 780 / (3 * 437), 780 / (3 * 210)], rtol=1e-6)
    # every class then contributes the same total weight
    np.testing.assert_allclose(w * np.bincount(busi), [260, 260, 260], rtol=1e-5)
    busbra = np.array([1] * 1001 + [2] * 448)
    w2 = class_weights(busbra)
    assert w2[0] == 0.0 and w2[1] == pytest.approx(1449 / 2002) and w2[2] == pytest.approx(1449 / 896)


def test_fit_temperature_recovers_the_generating_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(scale=3.0, size=(3000, 3))
    t_true = 2.5
    p = np.exp(z / t_true)
    p /= p.sum(1, keepdims=True)
    y = (rng.random((3000, 1)) > p.cumsum(1)).sum(1)  # one categorical draw per row
    t = fit_temperature(z, y)
    assert t == pytest.approx(t_true, rel=0.08)
    # overconfident logits (x6) need a proportionally larger T
    assert fit_temperature(z * 6, y) == pytest.approx(6 * t_true, rel=0.08)


def test_overlay_remove_erases_caliper_marks_and_add_draws_them():
    rng = np.random.default_rng(1)
    base = rng.integers(40, 120, size=(2, 64, 64), dtype=np.uint8)
    marked = base.copy()
    marked[:, 30, 20:27] = 255  # a caliper cross
    marked[:, 27:34, 23] = 255
    cleaned = apply_overlay(marked, "remove")
    assert cleaned[:, 30, 23].max() < 200 and cleaned[:, 30, 20:27].max() < 200
    assert np.abs(cleaned.astype(int) - base).max() < 130
    # a large bright region (a strong tissue echo) is not an overlay
    echo = base.copy()
    echo[:, 10:25, 10:25] = 250
    assert np.array_equal(apply_overlay(echo, "remove"), echo)
    added = apply_overlay(base, "add", seed=0)
    assert (added > 200).sum() > 2 * 10 and (base > 200).sum() == 0
    assert np.array_equal(added, apply_overlay(base, "add", seed=0))  # seeded
    assert np.array_equal(apply_overlay(base, "none"), base)
    with pytest.raises(ConfigError):
        apply_overlay(base, "blur")


def test_config_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(ConfigError, match="lr_head"):
        FinetuneConfig.from_dict({"lr_head": 0.1})
    with pytest.raises(ConfigError, match="epochs"):
        FinetuneConfig.from_dict({"epochs": "3"})
    with pytest.raises(ConfigError, match="label_fraction"):
        FinetuneConfig(label_fraction=0.0)
    with pytest.raises(ConfigError, match="overlay"):
        FinetuneConfig(overlay="paint")
    with pytest.raises(ConfigError):
        FinetuneConfig(model="resnet18", multiscale=False)
    cfg = FinetuneConfig.from_dict({"epochs": 2, "lr": 1, "augment": False})
    assert cfg.epochs == 2 and cfg.lr == 1 and not cfg.from_ssl


def test_build_classifier_loads_ssl_backbone_and_reinitialises_head(tmp_path):
    from streamcad.train.model import build_model

    torch.manual_seed(0)
    ssl_model = build_model("tiny")
    with torch.no_grad():
        ssl_model.head.fc.weight.fill_(7.0)
    path = save_checkpoint(tmp_path / "ssl.pt", {
        "kind": "ssl", "model_config": dict(ssl_model.model_config), "model": ssl_model.state_dict(),
        "preprocess": PreprocessSpec(size=64).to_dict(), "epoch": 3, "metrics": {}, "train_config": {},
    })
    model, spec, info = build_classifier(FinetuneConfig(model="tiny", size=64, init=str(path)))
    sd, ref = model.state_dict(), ssl_model.state_dict()
    backbone = [k for k in ref if not k.startswith("head.")]
    assert backbone and all(torch.equal(sd[k], ref[k]) for k in backbone)
    assert not torch.equal(sd["head.fc.weight"], ref["head.fc.weight"])
    assert spec.size == 64 and info["ssl_epoch"] == 3
    with pytest.raises(ConfigError, match="size"):
        build_classifier(FinetuneConfig(model="tiny", size=96, init=str(path)))
    with pytest.raises(ConfigError, match="model"):
        build_classifier(FinetuneConfig(model="small", size=64, init=str(path)))
    save_checkpoint(tmp_path / "cls.pt", {"kind": "classifier", "model_config": {}, "model": {}})
    with pytest.raises(ConfigError, match="kind"):
        build_classifier(FinetuneConfig(model="tiny", size=64, init=str(tmp_path / "cls.pt")))


def test_train_one_epoch_fits_a_learnable_problem(one_thread):
    """Bright-square images are 'malignant', dark ones 'benign': a few epochs must drive the
    weighted loss well below log(2) and every parameter must receive a gradient."""
    from streamcad.train.finetune import _param_groups
    from streamcad.train.model import build_model

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, S = 64, 32
    labels = rng.choice([1, 2], size=n).astype(np.int64)
    images = rng.integers(0, 60, size=(n, S, S), dtype=np.uint8)
    images[labels == 2, 8:24, 8:24] += 150
    cfg = FinetuneConfig(model="tiny", size=32, lr=3e-3, batch_size=16)
    model = build_model("tiny")
    opt = torch.optim.AdamW(_param_groups(model, cfg))
    w = torch.from_numpy(class_weights(labels))
    spec = PreprocessSpec(size=S)
    losses = []
    for epoch in range(6):
        stats = train_one_epoch(model, images, labels, opt, w, spec, epoch, 4, 24, 2, 16, torch.device("cpu"))
        losses.append(stats["loss"])
    assert losses[-1] < 0.3 < losses[0]
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
