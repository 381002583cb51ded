"""train.common helpers and train.ssl pretraining: schedule values, checkpoints, kNN probe,
a real pretraining run that lowers the loss, exact resume, and the non-finite stop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from streamcad.errors import ArtifactError, ConfigError  # noqa: E402
from streamcad.preprocess import letterbox  # noqa: E402
from streamcad.train.common import (  # noqa: E402
    JsonlLogger,
    NonFiniteLossError,
    check_finite,
    cosine_schedule,
    load_checkpoint,
    save_checkpoint,
    select_device,
)
from streamcad.train.losses import DenseCorrespondenceLoss, InfoNCELoss  # noqa: E402
from streamcad.train.model import build_model  # noqa: E402
from streamcad.train.ssl import SSLConfig, SSLModel, knn_probe, pretrain  # noqa: E402

S = 64


# ----------------------------------------------------------------------------- common helpers


def test_cosine_schedule_values():
    assert cosine_schedule(0, 100, 1.0, 10) == pytest.approx(0.1)  # warmup: (step + 1) / warmup
    assert cosine_schedule(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert cosine_schedule(10, 100, 1.0, 10, min_lr=0.2) == pytest.approx(1.0)  # peak after warmup
    assert cosine_schedule(55, 100, 1.0, 10, min_lr=0.2) == pytest.approx(0.6)  # half way: (1 + 0.2) / 2
    assert cosine_schedule(100, 100, 1.0, 10, min_lr=0.2) == pytest.approx(0.2)
    assert cosine_schedule(500, 100, 1.0, 10, min_lr=0.2) == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="total_steps"):
        cosine_schedule(0, 0, 1.0, 0)


def test_checkpoint_roundtrip_and_bad_files(tmp_path):
    path = save_checkpoint(tmp_path / "a" / "c.pt", {"kind": "ssl", "w": torch.arange(3), "cfg": {"x": 1}})
    ck = load_checkpoint(path)
    assert ck["kind"] == "ssl" and ck["cfg"] == {"x": 1} and ck["w"].tolist() == [0, 1, 2]
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]  # no temp file left behind
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match="bad.pt"):
        load_checkpoint(bad)
    with pytest.raises(ArtifactError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ArtifactError, match="plain dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_select_device_is_explicit():
    assert select_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="'tpu'"):
        select_device("tpu")
    if not torch.cuda.is_available():
        assert select_device("auto").type == "cpu"
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            select_device("cuda")


def test_jsonl_logger_and_check_finite(tmp_path):
    log = JsonlLogger(tmp_path / "log.jsonl")
    log.write({"epoch": 1, "loss": torch.tensor(0.5), "n": np.int64(3)})
    log.write({"epoch": 2, "loss": 0.25, "auc": None})
    assert log.read() == [{"epoch": 1, "loss": 0.5, "n": 3}, {"epoch": 2, "loss": 0.25, "auc": None}]
    check_finite(torch.tensor(1.0), 0)
    with pytest.raises(NonFiniteLossError, match="nan at step 7"):
        check_finite(torch.tensor(float("nan")), 7)


def test_ssl_config_rejects_unknown_keys_and_wrong_types():
    assert SSLConfig.from_dict({"epochs": 3, "lr": 1}).lr == 1
    with pytest.raises(ConfigError, match="'epoch'"):
        SSLConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="'epochs'"):
        SSLConfig.from_dict({"epochs": "3"})
    with pytest.raises(ConfigError, match="'amp'"):
        SSLConfig.from_dict({"amp": 1})
    with pytest.raises(ConfigError, match="multiple of 32"):
        SSLConfig(size=100)


def test_knn_probe_votes_by_weighted_neighbours():
    # train: two benign near e1, two malignant near e2; val: one near each, one between (closer to e2)
    tr = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]]), dim=1)
    va = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]), dim=1)
    out = knn_probe(tr, np.array([1, 1, 2, 2]), va, np.array([1, 2, 2]), k=4)
    assert out["knn_bal_acc"] == 1.0 and out["knn_auc"] == 1.0
    out = knn_probe(tr, np.array([1, 1, 2, 2]), va, np.array([2, 1, 1]), k=4)  # every label wrong
    assert out["knn_bal_acc"] == 0.0 and out["knn_auc"] == 0.0
    assert knn_probe(tr, np.array([1, 1, 2, 2]), va, np.array([1, 1, 1]), k=2)["knn_auc"] is None


# ----------------------------------------------------------------------------- pretraining


@pytest.fixture(scope="module")
def images(busbra_dir):
    import cv2

    files = sorted((busbra_dir / "Images").glob("*.png"))[::40][:32]
    assert len(files) == 32
    return np.stack([letterbox(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), S) for f in files])


def _augment():
    from streamcad.train.augment import TwoViewAugment

    # milder than the default so that a handful of steps measurably lowers the loss
    return TwoViewAugment(S, min_overlap=0.5, scale=(0.5, 1.0), photometric=0.3)


def _fixed_view_loss(images, ckpt=None) -> float:
    """Instance + 0.5 dense loss on one fixed pair of views of all images."""
    torch.manual_seed(0)  # pretrain seeds the same way, so this is its initial model
    model = SSLModel(build_model("tiny"), 256, 128, dense=True)
    if ckpt is not None:
        model.backbone.load_state_dict(ckpt["model"])
        model.projector.load_state_dict(ckpt["projector"])
        model.dense_projector.load_state_dict(ckpt["dense_projector"])
    x = torch.from_numpy(images).float().unsqueeze(1) / 255
    v1, v2, t1, t2 = _augment()(x, torch.Generator().manual_seed(123))
    with torch.no_grad():
        z, zd = model(torch.cat([v1, v2]))
        return (InfoNCELoss(0.2)(*z.chunk(2)) + 0.5 * DenseCorrespondenceLoss(0.2)(*zd.chunk(2), t1, t2)).item()


def test_pretrain_lowers_the_loss_and_writes_a_finetunable_checkpoint(images, tmp_path):
    cfg = SSLConfig(model="tiny", size=S, epochs=6, batch_size=32, lr=2e-3, warmup_epochs=0, device="cpu")
    labels = np.array([1, 2] * 16)
    path = pretrain(cfg, images, tmp_path, probe=(images[:16], labels[:16], images[16:], labels[16:]), augment=_augment())
    ckpt = load_checkpoint(path)
    assert _fixed_view_loss(images, ckpt) < _fixed_view_loss(images) - 0.2
    assert ckpt["kind"] == "ssl" and ckpt["epoch"] == 6 and ckpt["train_config"] == cfg.to_dict()
    assert ckpt["preprocess"] == {"size": S, "mean": 0.0, "std": 1.0, "resize": "letterbox"}
    model = build_model(**ckpt["model_config"])
    model.load_state_dict(ckpt["model"], strict=True)  # what fine-tuning does
    records = [json.loads(line) for line in (tmp_path / "ssl_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) and 0 <= r["knn_bal_acc"] <= 1 and r["steps"] == 1 for r in records)


def test_resume_continues_exactly(images, tmp_path):
    cfg = SSLConfig(model="tiny", size=S, epochs=3, batch_size=8, lr=1e-3, warmup_epochs=1, device="cpu",
                    max_steps_per_epoch=2, dense_weight=0.5)
    straight = load_checkpoint(pretrain(cfg, images[:16], tmp_path / "a", augment=_augment()))
    # "killed" after epoch 2, then resumed by a new call
    part = pretrain(cfg, images[:16], tmp_path / "b", augment=_augment(), stop_after_epoch=2)
    assert part.name == "last.pt" and load_checkpoint(part)["epoch"] == 2
    assert not (tmp_path / "b" / "ssl.pt").exists()
    resumed = load_checkpoint(pretrain(cfg, images[:16], tmp_path / "b", augment=_augment(), resume=True))
    assert resumed["epoch"] == straight["epoch"] == 3
    for k, v in straight["model"].items():
        torch.testing.assert_close(resumed["model"][k], v, msg=k)
    steps = [s["step"] for s in resumed["optimizer"]["state"].values()]
    assert steps and all(float(s) == 6 for s in steps)  # 3 epochs x 2 steps: Adam state restored
    lines = (tmp_path / "b" / "ssl_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    with pytest.raises(ConfigError, match="lr"):
        pretrain(SSLConfig(**{**cfg.to_dict(), "lr": 5e-4}), images[:16], tmp_path / "b", resume=True)
    # a pool named at the start is stored, and a resume on another pool is refused
    ids = [f"img{i}" for i in range(16)]
    pretrain(cfg, images[:16], tmp_path / "c", augment=_augment(), stop_after_epoch=1, pool_ids=ids)
    assert load_checkpoint(tmp_path / "c" / "last.pt")["pool"]["ids"] == ids
    with pytest.raises(ConfigError, match="another image pool"):
        pretrain(cfg, images[:16], tmp_path / "c", augment=_augment(), resume=True, pool_ids=ids[::-1][:15] + ["other"])


def test_non_finite_loss_stops_with_a_clear_error(images, tmp_path):
    cfg = SSLConfig(model="tiny", size=S, epochs=1, batch_size=8, lr=1e30, warmup_epochs=0, grad_clip=0.0,
                    device="cpu", max_steps_per_epoch=4)
    with pytest.raises(NonFiniteLossError, match=r"loss is (nan|inf) at step [1-3]"):
        pretrain(cfg, images, tmp_path, augment=_augment())
    assert not (tmp_path / "ssl.pt").exists() and not (tmp_path / "last.pt").exists()


def test_pretrain_rejects_wrong_images(tmp_path):
    with pytest.raises(ConfigError, match=r"uint8 \(M, 64, 64\)"):
        pretrain(SSLConfig(size=S, device="cpu"), np.zeros((8, 32, 32), np.uint8), tmp_path)
