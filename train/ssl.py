"""Self-supervised pretraining: SimCLR instance loss + a geometry-matched dense term.

    images uint8 (M, S, S) --per-epoch seeded permutation (sharded by rank)--> batch (B, 1, S, S) in [0, 1]
      --TwoViewAugment--> view1, view2, theta1, theta2
      --backbone.forward_embedding_dense--> emb (B, D), dense (B, Dd, S/16, S/16)   (per view)
      --ProjectionHead / DenseProjectionHead--> z (B, 128), zd (B, 128, S/16, S/16)
      --InfoNCELoss(z1, z2) + dense_weight * DenseCorrespondenceLoss(zd1, zd2, theta1, theta2)
      --AdamW (cosine lr, warmup), grad clip--> weights
    each epoch: kNN probe (cosine, k=20) on labeled images -> balanced accuracy / AUC,
                one JSON line in out_dir/ssl_log.jsonl, checkpoint out_dir/last.pt
    end: out_dir/ssl.pt  {'kind': 'ssl', 'model_config', 'model' (backbone incl. an untrained
         classifier head), 'projector', 'dense_projector', 'preprocess', 'epoch', 'optimizer', ...,
         'pool' (the images' ids + their sha256, when the caller gave them: train.cv checks it)}

Every epoch's randomness (order, augmentation) is seeded from (seed, epoch, rank), so a run
resumed from a checkpoint continues exactly as an uninterrupted one would.

SSLConfig (every default, with its reason) lives in train/config.py; checkpoints record it as
'train_config' with 'config_version'.

Run (single process, or `torchrun --nproc_per_node=N` for DDP)::

    from streamcad.train.ssl import SSLConfig, pretrain
    pretrain(SSLConfig(model="tiny", size=160, epochs=30), pool_uint8, "runs/ssl/busbra",
             probe=(train_x, train_y, val_x, val_y))
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamcad.errors import ConfigError
from streamcad.preprocess import PreprocessSpec
from streamcad.train.common import (
    JsonlLogger,
    amp_dtype,
    autocast_context,
    check_finite,
    cleanup_distributed,
    cosine_schedule,
    git_commit,
    is_main_process,
    load_checkpoint,
    machine_info,
    maybe_channels_last,
    model_input,
    normalise,
    progress,
    save_checkpoint,
    seed_everything,
    select_device,
    setup_distributed,
    to_unit,
)
from streamcad.train.config import CONFIG_VERSION, SSLConfig
from streamcad.train.losses import DenseCorrespondenceLoss, InfoNCELoss

__all__ = [
    "SSLConfig",
    "ProjectionHead",
    "DenseProjectionHead",
    "SSLModel",
    "pretrain",
    "train_one_epoch",
    "knn_probe",
    "embed_images",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- heads


class ProjectionHead(nn.Module):
    """SimCLR projector g(.) (Chen et al. 2020): Linear-BN-ReLU-Linear, (B, D) -> (B, proj_dim).
    The loss sees g(h); the backbone embedding h is what transfers."""

    def __init__(self, dim: int, hidden: int = 256, out: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DenseProjectionHead(nn.Module):
    """DenseCL's dense projector (Wang et al. 2021): 1x1 conv-BN-ReLU-1x1 conv,
    (B, Dd, h, w) -> (B, proj_dim, h, w)."""

    def __init__(self, dim: int, hidden: int = 256, out: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(), nn.Conv2d(hidden, out, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SSLModel(nn.Module):
    """Backbone + projectors. x (B, 1, S, S) -> z (B, proj_dim), zd (B, proj_dim, h, w) or None.

    The classifier head is frozen during SSL (not used; frozen so DDP does not wait for its
    gradients) and saved with the backbone."""

    def __init__(self, backbone: nn.Module, hidden: int, out: int, dense: bool):
        super().__init__()
        self.backbone = backbone
        self.backbone.head.requires_grad_(False)
        self.projector = ProjectionHead(backbone.embed_dim, hidden, out)
        self.dense_projector = DenseProjectionHead(backbone.dense_dim, hidden, out) if dense else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        emb, dense = self.backbone.forward_embedding_dense(x)
        z = self.projector(emb)
        zd = self.dense_projector(dense) if self.dense_projector is not None else None
        return z, zd


# ----------------------------------------------------------------------------- kNN probe


@torch.no_grad()
def embed_images(backbone: nn.Module, images: np.ndarray, spec: PreprocessSpec, device: torch.device,
                 batch_size: int = 128) -> torch.Tensor:
    """uint8 (N, S, S) -> L2-normalised embeddings (N, D) on the CPU (backbone in eval mode)."""
    was = backbone.training
    backbone.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = _to_input(images[i : i + batch_size], spec, device)
        out.append(F.normalize(backbone.forward_embedding(x).float(), dim=1).cpu())
    backbone.train(was)
    return torch.cat(out)


def knn_probe(train_emb: torch.Tensor, train_y: np.ndarray, val_emb: torch.Tensor, val_y: np.ndarray,
              k: int = 20, t: float = 0.07) -> dict:
    """Weighted cosine kNN (Wu et al. 2018, as used by DINO): each of the k nearest training
    embeddings votes for its class with weight exp(cos / t). -> {'knn_bal_acc', 'knn_auc'}
    (AUC of the malignant vote share, malignant vs rest; None if val has one class only)."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    n_cls = 3
    k = min(k, len(train_emb))
    sim = val_emb @ train_emb.t()  # (Nv, Nt) cosine similarities (inputs are normalised)
    top, idx = sim.topk(k, dim=1)  # (Nv, k)
    votes = torch.zeros(len(val_emb), n_cls)
    ty = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    votes.scatter_add_(1, ty[idx], torch.exp(top / t))
    probs = (votes / votes.sum(1, keepdim=True)).numpy()
    pred = probs.argmax(1)
    vy = np.asarray(val_y)
    auc = None
    malignant = vy == 2
    if malignant.any() and not malignant.all():
        auc = float(roc_auc_score(malignant, probs[:, 2]))
    return {"knn_bal_acc": float(balanced_accuracy_score(vy, pred)), "knn_auc": auc}


# ----------------------------------------------------------------------------- the loop


def _to_input(images: np.ndarray, spec: PreprocessSpec, device: torch.device) -> torch.Tensor:
    """uint8 (B, S, S) -> float (B, 1, S, S) normalised as streamcad.preprocess does."""
    return model_input(torch.from_numpy(np.ascontiguousarray(images)).to(device), spec)  # (B, 1, S, S)


def train_one_epoch(model, images, batches, augment, inst_loss, dense_loss, optimizer, scaler, cfg: SSLConfig,
                    spec: PreprocessSpec, device, epoch: int, steps_per_epoch: int, generator) -> dict:
    """One pass over `batches` (lists of pool indices). -> mean losses, lr, throughput."""
    model.train()
    total_steps = cfg.epochs * steps_per_epoch
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total_steps - 1)
    sums = {"loss": 0.0, "loss_instance": 0.0, "loss_dense": 0.0}
    params = [p for p in model.parameters() if p.requires_grad]
    t0, n_images, lr = time.perf_counter(), 0, cfg.lr
    with progress(len(batches), f"ssl epoch {epoch + 1}/{cfg.epochs}") as advance:
        for i, idx in enumerate(batches):
            step = epoch * steps_per_epoch + i
            lr = cosine_schedule(step, total_steps, cfg.lr, warmup, cfg.min_lr)
            for g in optimizer.param_groups:
                g["lr"] = lr
            x = to_unit(torch.from_numpy(images[idx]).to(device))  # (B, 1, S, S) in [0, 1]
            v1, v2, th1, th2 = augment(x, generator)
            v = normalise(torch.cat([v1, v2]), spec)  # (2B, 1, S, S): one pass, BN sees both views
            if cfg.channels_last:
                v = v.contiguous(memory_format=torch.channels_last)
            with autocast_context(device, cfg.amp):
                z, zd = model(v)
            z1, z2 = z.float().chunk(2)
            l_inst = inst_loss(z1, z2)
            loss = l_inst
            l_dense = torch.zeros((), device=device)
            if zd is not None:
                zd1, zd2 = zd.float().chunk(2)
                l_dense = dense_loss(zd1, zd2, th1.to(device), th2.to(device))
                loss = loss + cfg.dense_weight * l_dense
            check_finite(loss, step)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            sums["loss"] += loss.item()
            sums["loss_instance"] += l_inst.item()
            sums["loss_dense"] += l_dense.item()
            n_images += len(idx)
            advance(loss=loss.item(), lr=lr)
    n = max(1, len(batches))
    dt = time.perf_counter() - t0
    return {**{k: v / n for k, v in sums.items()}, "lr": lr, "steps": len(batches), "epoch_s": dt,
            "images_per_s": n_images / dt if dt > 0 else None}


def _epoch_batches(n: int, cfg: SSLConfig, epoch: int, rank: int, world: int) -> list[np.ndarray]:
    """Same seeded permutation on every rank; rank r takes every world-th batch slice.
    Drops the last partial batch (BN and InfoNCE want full batches)."""
    per_rank = cfg.batch_size // world
    perm = np.random.default_rng([cfg.seed, epoch]).permutation(n)
    steps = n // cfg.batch_size
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    return [perm[s * cfg.batch_size + rank * per_rank : s * cfg.batch_size + (rank + 1) * per_rank] for s in range(steps)]


def _check_resume(ckpt: dict, cfg: SSLConfig, path: Path) -> None:
    old = dict(ckpt.get("train_config", {}))
    new = cfg.to_dict()
    # the device / precision / memory format may change between runs; the recipe may not
    changeable = {"device", "amp", "channels_last"}
    diff = sorted(k for k in new if k not in changeable and old.get(k) != new[k])
    if diff:
        raise ConfigError(f"cannot resume from {path}: config differs in {diff} "
                          f"(checkpoint {[old.get(k) for k in diff]} vs now {[new[k] for k in diff]})")


def pretrain(config: SSLConfig, images_uint8: np.ndarray, out_dir: str | os.PathLike,
             probe: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
             resume: bool = False, augment=None, stop_after_epoch: int | None = None,
             spec: PreprocessSpec | None = None, pool_ids: list[str] | None = None) -> Path:
    """Pretrain `config.model` on unlabeled uint8 images (M, S, S); -> path of out_dir/ssl.pt.

    probe: (train_images, train_labels, val_images, val_labels) for the per-epoch kNN probe.
    resume: continue from out_dir/last.pt (same config except device/amp/channels_last).
    augment: callable (x (B,1,S,S) in [0,1], generator) -> (view1, view2, theta1, theta2);
    default train.augment.TwoViewAugment(size, min_overlap).
    stop_after_epoch: end this process after that many completed epochs (time-boxed jobs;
    resume later); returns last.pt then.
    spec: the input normalisation (default PreprocessSpec(size); 'lite0' wants ImageNet's grey statistics).
    pool_ids: the ids of the images, stored in the checkpoint as 'pool' (ids + sha256), so that a
    fine-tune can refuse an SSL start that has seen its test images (train.cv).
    """
    from streamcad.nets import build_model

    cfg = config
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (cfg.size, cfg.size):
        raise ConfigError(f"pretrain images must be uint8 (M, {cfg.size}, {cfg.size}); got {images.dtype} {images.shape}")
    rank, world, _ = setup_distributed()
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size={cfg.batch_size} is not divisible by the {world} DDP ranks")
    if len(images) < cfg.batch_size:
        raise ConfigError(f"pretrain needs at least batch_size={cfg.batch_size} images; got {len(images)}")
    device = select_device(cfg.device)
    out_dir = Path(out_dir)
    spec = spec or PreprocessSpec(size=cfg.size)
    if spec.size != cfg.size:
        raise ConfigError(f"pretrain spec size {spec.size} differs from the config's size {cfg.size}")
    if pool_ids is not None and len(pool_ids) != len(images):
        raise ConfigError(f"pool_ids has {len(pool_ids)} ids for {len(images)} images; expected one id per image")
    pool = None if pool_ids is None else {"ids": [str(i) for i in pool_ids], "sha256": _ids_sha256(pool_ids)}
    seed_everything(cfg.seed)  # same initial weights on every rank

    backbone = build_model(cfg.model, **cfg.model_overrides())
    ssl_model = SSLModel(backbone, cfg.proj_hidden, cfg.proj_dim, dense=cfg.dense_weight > 0).to(device)
    ssl_model = maybe_channels_last(ssl_model, cfg.channels_last)
    decay = [p for n, p in ssl_model.named_parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for n, p in ssl_model.named_parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and amp_dtype(device) == torch.float16)
    history, start_epoch = [], 0
    last = out_dir / "last.pt"
    if resume and last.is_file():
        ckpt = load_checkpoint(last)
        _check_resume(ckpt, cfg, last)
        if (ckpt.get("pool") or {}).get("sha256") != (pool or {}).get("sha256"):
            raise ConfigError(f"cannot resume from {last}: it was pretrained on another image pool; use another out_dir")
        ssl_model.backbone.load_state_dict(ckpt["model"])
        ssl_model.projector.load_state_dict(ckpt["projector"])
        if ssl_model.dense_projector is not None:
            ssl_model.dense_projector.load_state_dict(ckpt["dense_projector"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, history = int(ckpt["epoch"]), list(ckpt.get("history", []))
        log.info("resumed from %s at epoch %d", last, start_epoch)
    train_model: nn.Module = ssl_model
    if world > 1:
        if device.type == "cuda":
            train_model = nn.SyncBatchNorm.convert_sync_batchnorm(ssl_model)
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)

    augment = augment or _default_augment(cfg)
    inst_loss = InfoNCELoss(cfg.temperature, decoupled=cfg.decoupled)
    dense_loss = DenseCorrespondenceLoss(cfg.dense_temperature)
    logger = JsonlLogger(out_dir / "ssl_log.jsonl")
    steps_per_epoch = len(_epoch_batches(len(images), cfg, 0, 0, 1))
    probe_cache = None
    end_epoch = cfg.epochs if stop_after_epoch is None else min(cfg.epochs, stop_after_epoch)
    try:
        for epoch in range(start_epoch, end_epoch):
            gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + rank)
            batches = _epoch_batches(len(images), cfg, epoch, rank, world)
            metrics = train_one_epoch(train_model, images, batches, augment, inst_loss, dense_loss, optimizer,
                                      scaler, cfg, spec, device, epoch, steps_per_epoch, gen)
            if probe is not None:
                if probe_cache is None:
                    probe_cache = tuple(np.asarray(a) for a in probe)
                tr_x, tr_y, va_x, va_y = probe_cache
                metrics.update(knn_probe(embed_images(ssl_model.backbone, tr_x, spec, device), tr_y,
                                         embed_images(ssl_model.backbone, va_x, spec, device), va_y, cfg.knn_k))
            metrics = {"epoch": epoch + 1, **metrics}
            history.append(metrics)
            logger.write(metrics)
            if is_main_process():
                save_checkpoint(last, _checkpoint(ssl_model, optimizer, scaler, cfg, spec, epoch + 1, metrics, history, pool))
        if end_epoch < cfg.epochs:
            return last
        final = out_dir / "ssl.pt"
        if is_main_process():
            ckpt = load_checkpoint(last) if end_epoch == start_epoch else None
            save_checkpoint(final, ckpt or _checkpoint(ssl_model, optimizer, scaler, cfg, spec, end_epoch,
                                                       history[-1] if history else {}, history, pool))
        return final
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
        cleanup_distributed()


def _default_augment(cfg: SSLConfig):
    from streamcad.train.augment import TwoViewAugment

    if cfg.views == "scanner":  # what lever 4 removed from fine-tuning must not become an invariance either
        return TwoViewAugment(cfg.size, min_overlap=cfg.min_overlap, ratio=(1.0, 1.0), max_shear=0.0, shadow=False)
    return TwoViewAugment(cfg.size, min_overlap=cfg.min_overlap)


def _ids_sha256(ids) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(str(i) for i in ids)).encode()).hexdigest()


def _checkpoint(ssl_model: SSLModel, optimizer, scaler, cfg: SSLConfig, spec: PreprocessSpec, epoch: int,
                metrics: dict, history: list, pool: dict | None = None) -> dict:
    """The plain-dict SSL checkpoint (docs/MODEL.md; contract in the project brief)."""
    return {
        "kind": "ssl",
        "model_config": dict(ssl_model.backbone.model_config),
        "model": ssl_model.backbone.state_dict(),
        "projector": ssl_model.projector.state_dict(),
        "dense_projector": None if ssl_model.dense_projector is None else ssl_model.dense_projector.state_dict(),
        "preprocess": spec.to_dict(),
        "epoch": epoch,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "metrics": {k: v for k, v in metrics.items() if v is None or isinstance(v, (int, float, str))},
        "history": history,
        "train_config": cfg.to_dict(),
        "config_version": CONFIG_VERSION,  # train.config
        "git_commit": git_commit(),
        "machine": machine_info(),
        "finite": all(math.isfinite(m.get("loss", 0.0)) for m in history),
        "pool": pool,
    }
