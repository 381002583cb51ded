"""Supervised fine-tuning of the classifier on one cross-validation fold.

    LabeledArrays (all folds) --fold_split(fold)--> train part | test fold (scored once, at the end)
    train part --group-wise split (StratifiedGroupKFold, seeded)--> train | val
    train --stratified label_fraction subsample--> train'
    init: SSL checkpoint backbone (train.ssl) or scratch --> build_model(model, **overrides)
    for epoch: train_one_epoch(train', weighted CE, AdamW, backbone lr < head lr, cosine)
               val AUC (benign vs malignant) --> keep best weights, stop after `patience`
    best weights --val logits--> temperature T (LBFGS on NLL) --> threshold (Youden J on val)
    test fold --logits / T--> probabilities --> bootstrap metrics (train.evaluate)
    --> classifier checkpoint {'kind': 'classifier', ..., 'temperature', 'threshold'} + result dict

Validation is only used for early stopping, temperature and threshold; the test fold is never
looked at before the end. On BUS-BRA (no normal images) all three logits are trained: the
'normal' class simply has no examples (its class weight is 0), so the softmax learns to push
p(normal) towards 0 on these images and the exported model keeps the 3-logit contract.

FinetuneConfig (every default, with its reason) lives in train/config.py; the checkpoint and the
result record it with 'config_version'.

Run one fold from the command line::

    streamcad train finetune --dataset busbra --fold 0 --init runs/ssl/busbra/ssl.pt --out runs/ft
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from streamcad.errors import ConfigError
from streamcad.preprocess import PreprocessSpec
from streamcad.train.common import (
    JsonlLogger,
    autocast_context,
    check_finite,
    cosine_schedule,
    load_checkpoint,
    maybe_channels_last,
    normalise,
    progress,
    save_checkpoint,
    seed_everything,
    select_device,
    to_unit,
)
from streamcad.train.config import CONFIG_VERSION, OVERLAY_MODES, FinetuneConfig
from streamcad.train.evaluate import (
    binary_view,
    bootstrap_metrics,
    choose_threshold,
    predict_logits,
    softmax,
)

__all__ = [
    "FinetuneConfig",
    "finetune",
    "train_one_epoch",
    "split_train_val",
    "subsample_labels",
    "class_weights",
    "fit_temperature",
    "apply_overlay",
    "build_classifier",
]

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- data preparation


def split_train_val(labels: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of the fold's training part, split by group (no patient / duplicate
    group on both sides), stratified by label: the first fold of a seeded StratifiedGroupKFold
    with round(1 / val_fraction) splits."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, round(1 / val_fraction))
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    tr, va = next(sgkf.split(np.zeros(len(labels)), labels, groups))
    return np.sort(tr), np.sort(va)


def subsample_labels(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Stratified, seeded subsample: round(fraction * n_c) (at least 1) images of each class c.
    Returns sorted indices; fraction 1.0 returns all. Smaller fractions are subsets of larger
    ones for the same seed (the label-efficiency curve adds labels, it does not redraw them)."""
    if fraction >= 1.0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        order = rng.permutation(idx)
        keep.append(order[: max(1, round(fraction * idx.size))])
    return np.sort(np.concatenate(keep))


def class_weights(labels: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """Inverse-frequency weights N / (K * n_c) over the K classes present; absent classes
    (BUS-BRA's 'normal') get 0. float32 (n_classes,)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w.astype(np.float32)


def apply_overlay(images: np.ndarray, mode: str, seed: int = 0) -> np.ndarray:
    """Caliper-shortcut ablation on uint8 (N, S, S) images -> a new array (train.augment's
    overlay tools, applied to every image of train, val and test alike).

    'none': unchanged. 'remove': train.augment.remove_overlays (thin near-white marks:
    calipers '+', dashed lines, text; inpainted). 'add': train.augment.add_overlays with p=1
    (random caliper crosses, a dashed line, text glyphs on *every* image, independent of its
    label): a model that learned "calipers => lesion / malignant" loses that cue.
    """
    if mode == "none":
        return images
    if mode not in OVERLAY_MODES:
        raise ConfigError(f"overlay={mode!r}; expected one of {list(OVERLAY_MODES)}")
    from streamcad.train.augment import add_overlays, remove_overlays

    if mode == "remove":
        return np.stack([remove_overlays(img) for img in images]) if len(images) else images.copy()
    gen = torch.Generator().manual_seed(seed)
    out = np.empty_like(images)
    for i in range(0, len(images), 256):
        x = torch.from_numpy(images[i : i + 256]).unsqueeze(1).float() / 255.0  # (B, 1, S, S)
        y = add_overlays(x, 1.0, gen)
        out[i : i + 256] = (y[:, 0] * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    return out


# ----------------------------------------------------------------------------- model


def build_classifier(cfg: FinetuneConfig) -> tuple[torch.nn.Module, PreprocessSpec, dict]:
    """-> (model, preprocessing spec, provenance of the init). From SSL: the checkpoint's
    model_config and weights (the head is re-initialised: SSL heads are not classifiers);
    the checkpoint's input size and preprocessing must match the config."""
    from streamcad.nets import build_model

    overrides = {}
    if not cfg.multiscale:
        overrides["multiscale"] = False
    if not cfg.cross_attention:
        overrides["cross_attention"] = False
    if not cfg.from_ssl:
        return build_model(cfg.model, **overrides), PreprocessSpec(size=cfg.size), {"init": "scratch"}
    ckpt = load_checkpoint(cfg.init)
    if ckpt.get("kind") != "ssl":
        raise ConfigError(f"init checkpoint {cfg.init} has kind {ckpt.get('kind')!r}; expected 'ssl'")
    mc = dict(ckpt["model_config"])
    if mc.get("name") != cfg.model or any(mc.get(k, True) != v for k, v in overrides.items()):
        raise ConfigError(f"init checkpoint {cfg.init} holds model {mc}; the config asks for {cfg.model} {overrides}")
    spec = PreprocessSpec.from_dict(ckpt["preprocess"])
    if spec.size != cfg.size:
        raise ConfigError(f"init checkpoint {cfg.init} was pretrained at size {spec.size}; config size={cfg.size}")
    model = build_model(**mc)
    state = {k: v for k, v in ckpt["model"].items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise ConfigError(f"init checkpoint {cfg.init} does not fit {mc}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model, spec, {"init": str(cfg.init), "ssl_epoch": ckpt.get("epoch"), "ssl_metrics": ckpt.get("metrics", {})}


def _param_groups(model: torch.nn.Module, cfg: FinetuneConfig) -> list[dict]:
    """Backbone at lr * backbone_lr_scale (SSL init) or lr (scratch); head at lr. No weight
    decay on norms, biases and tokens (1-D parameters)."""
    bb_lr = cfg.lr * (cfg.backbone_lr_scale if cfg.from_ssl else 1.0)
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        part = "head" if name.startswith("head.") else "backbone"
        groups.setdefault((part, p.ndim > 1), []).append(p)
    return [
        {"params": ps, "lr": cfg.lr if part == "head" else bb_lr, "base_lr": cfg.lr if part == "head" else bb_lr,
         "weight_decay": cfg.weight_decay if decay else 0.0, "name": f"{part}{'' if decay else '_nodecay'}"}
        for (part, decay), ps in groups.items()
    ]


# ----------------------------------------------------------------------------- loops


def train_one_epoch(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    optimizer: torch.optim.Optimizer,
    weights: torch.Tensor | None,
    spec: PreprocessSpec,
    epoch: int,
    steps_per_epoch: int,
    total_steps: int,
    warmup_steps: int,
    batch_size: int,
    device: torch.device,
    augment=None,
    amp: bool = False,
    channels_last: bool = False,
    scaler: torch.amp.GradScaler | None = None,
    rng: np.random.Generator | None = None,
) -> dict:
    """One pass over a shuffled copy of (images uint8 (N,S,S), labels (N,)) -> {'loss', 'lr'}.

    Per step: uint8 batch -> [0, 1] float (B,1,S,S) -> augment -> normalise -> model -> weighted
    cross entropy -> AdamW step with the cosine-scheduled lr (per param group, scaled from its
    base_lr). The last incomplete batch is dropped (BatchNorm needs > 1 sample).
    """
    model.train()
    rng = rng or np.random.default_rng(epoch)
    order = rng.permutation(len(labels))
    y_all = torch.from_numpy(labels.astype(np.int64))
    total, n_seen, lr = 0.0, 0, 0.0
    with progress(steps_per_epoch, f"finetune epoch {epoch}") as advance:
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            idx = order[i * batch_size : (i + 1) * batch_size]
            x = to_unit(torch.from_numpy(images[idx]).to(device, non_blocking=True))  # (B, 1, S, S) in [0, 1]
            y = y_all[idx].to(device)
            if augment is not None:
                with torch.no_grad():
                    x = augment(x)
            x = normalise(x, spec)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            lr_scale = cosine_schedule(step, total_steps, 1.0, warmup_steps)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * lr_scale
            lr = optimizer.param_groups[0]["lr"]
            with autocast_context(device, enabled=amp):
                logits, _ = model(x)
            loss = F.cross_entropy(logits.float(), y, weight=weights)
            check_finite(loss, step)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimizer.step()
            total += float(loss.detach()) * len(idx)
            n_seen += len(idx)
            advance(loss=float(loss.detach()))
    return {"loss": total / max(1, n_seen), "lr": lr}


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """Temperature scaling (Guo et al. 2017): T > 0 minimising the NLL of softmax(logits / T)
    on validation data, by LBFGS on log T (keeps T positive). Clamped to [0.05, 20]."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.exp().item())
    if not math.isfinite(t):
        raise ConfigError("temperature scaling diverged (non-finite T); check the validation logits")
    return float(min(max(t, 0.05), 20.0))


def _val_auc(logits: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    _, y, s = binary_view(labels, softmax(logits))
    return float(roc_auc_score(y, s))


# ----------------------------------------------------------------------------- entry point


def finetune(cfg: FinetuneConfig, arrays, fold: int, out_dir: str | os.PathLike) -> dict:
    """Fine-tune on the training part of `fold`, score the held-out fold once.

    arrays: train.data.LabeledArrays of one dataset (all folds). Writes out_dir/classifier.pt
    (contract checkpoint), out_dir/log.jsonl and out_dir/predictions.npz; returns a dict with
    'config', 'fold', 'metrics' (bootstrap CIs), 'temperature', 'threshold', 'best_epoch',
    'history', 'wall_s', 'n_train'/'n_val'/'n_test' and the test 'predictions'
    (ids, labels, probs, threshold) for pooling across folds.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    train_part, test = arrays.fold_split(fold)
    tr_idx, va_idx = split_train_val(train_part.labels, train_part.groups, cfg.val_fraction, cfg.seed)
    if set(train_part.groups[tr_idx]) & set(train_part.groups[va_idx]):
        raise ConfigError("internal: a group sits in both train and val")  # guarded by StratifiedGroupKFold
    train, val = train_part.subset(tr_idx), train_part.subset(va_idx)
    train = train.subset(subsample_labels(train.labels, cfg.label_fraction, cfg.seed))
    tr_images = apply_overlay(train.images, cfg.overlay, cfg.seed)
    va_images = apply_overlay(val.images, cfg.overlay, cfg.seed + 1)
    te_images = apply_overlay(test.images, cfg.overlay, cfg.seed + 2)
    log.info("fold %d: train %d, val %d, test %d (label_fraction %.2f)", fold, len(train), len(val), len(test), cfg.label_fraction)

    model, spec, init_info = build_classifier(cfg)
    model = maybe_channels_last(model.to(device), cfg.channels_last)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg))
    scaler = None
    if cfg.amp and device.type == "cuda":
        from streamcad.train.common import amp_dtype

        if amp_dtype(device) == torch.float16:
            scaler = torch.amp.GradScaler("cuda")
    weights = torch.from_numpy(class_weights(train.labels)).to(device) if cfg.class_weighting else None
    augment = None
    if cfg.augment:
        from streamcad.train.augment import FinetuneAugment

        gen = torch.Generator(device=device).manual_seed(cfg.seed)
        augment = functools.partial(FinetuneAugment(cfg.size), generator=gen)
    steps = len(train) // cfg.batch_size
    if steps < 1:
        raise ConfigError(f"{len(train)} training images < batch_size {cfg.batch_size}; lower batch_size")
    total_steps = steps * cfg.epochs
    logger = JsonlLogger(out_dir / "log.jsonl")
    rng = np.random.default_rng(cfg.seed)
    best = (-1.0, -1, None)  # (val AUC, epoch, state)
    history = []
    for epoch in range(cfg.epochs):
        stats = train_one_epoch(
            model, tr_images, train.labels, optimizer, weights, spec, epoch, steps, total_steps,
            cfg.warmup_epochs * steps, cfg.batch_size, device, augment, cfg.amp, cfg.channels_last, scaler, rng,
        )
        val_logits = predict_logits(model, va_images, spec.mean, spec.std, device=device, amp=cfg.amp, channels_last=cfg.channels_last)
        val_auc = _val_auc(val_logits, val.labels)
        val_loss = float(F.cross_entropy(torch.from_numpy(val_logits), torch.from_numpy(val.labels)))
        rec = {"fold": fold, "epoch": epoch, **stats, "val_auc": val_auc, "val_loss": val_loss}
        history.append(rec)
        logger.write(rec)
        if val_auc > best[0]:
            best = (val_auc, epoch, copy.deepcopy(model.state_dict()))
        elif epoch - best[1] >= cfg.patience:
            log.info("early stop at epoch %d (best val AUC %.4f at epoch %d)", epoch, best[0], best[1])
            break
    model.load_state_dict(best[2])

    val_logits = predict_logits(model, va_images, spec.mean, spec.std, device=device, amp=cfg.amp, channels_last=cfg.channels_last)
    temperature = fit_temperature(val_logits, val.labels)
    _, yv, sv = binary_view(val.labels, softmax(val_logits, temperature))
    threshold = choose_threshold(yv, sv, cfg.threshold_method)
    te_logits = predict_logits(model, te_images, spec.mean, spec.std, device=device, amp=cfg.amp, channels_last=cfg.channels_last)
    te_probs = softmax(te_logits, temperature)
    metrics = bootstrap_metrics(test.labels, te_probs, threshold, n_boot=cfg.n_boot, seed=cfg.seed)
    metrics["val_auc"] = best[0]

    ckpt = {
        "kind": "classifier",
        "model_config": dict(model.model_config),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "preprocess": spec.to_dict(),
        "epoch": best[1],
        "optimizer": None,  # fine-tuned weights are final; resuming is not supported
        "metrics": {k: v["value"] if isinstance(v, dict) else v for k, v in metrics.items()},
        "train_config": {**cfg.to_dict(), "fold": fold, **init_info, "config_version": CONFIG_VERSION},
        "temperature": temperature,
        "threshold": threshold,
    }
    save_checkpoint(out_dir / "classifier.pt", ckpt)
    np.savez(out_dir / "predictions.npz", ids=test.ids, labels=test.labels, logits=te_logits, probs=te_probs)
    return {
        "config": cfg.to_dict(),
        "config_version": CONFIG_VERSION,
        "fold": fold,
        "init": init_info,
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(test),
        "best_epoch": best[1],
        "epochs_run": len(history),
        "temperature": temperature,
        "threshold": threshold,
        "metrics": metrics,
        "history": history,
        "checkpoint": str(out_dir / "classifier.pt"),
        "wall_s": time.perf_counter() - t0,
        "predictions": {"ids": test.ids.tolist(), "labels": test.labels.tolist(), "probs": te_probs.tolist(), "threshold": threshold},
    }
