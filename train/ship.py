"""Train, export and document the shipped default model.

    BUSI (3 classes) + BUS-BRA (benign/malignant), committed 5-fold splits
      fold 0 of BOTH datasets held out: never seen by pretraining or fine-tuning
    SSL pool = the other folds' images of both datasets + real video frames (unlabeled)
      --train.ssl.pretrain--> ssl.pt
    fine-tune on folds 1-4 (validation carved out by group inside, for early stopping,
      temperature and threshold) --train.finetune.finetune--> classifier.pt
    --engines.export (parity on real frames)--> engines/models/default.onnx + default.json
    metrics on the held-out fold 0, per dataset, with 95% bootstrap CIs -> manifest + JSON
    --train.ood.calibrate (the out-of-domain gate, fitted on the training folds' embeddings of
      the exported graph, threshold from a training fold the fit did not see)--> manifest `ood`

Why both datasets: the runtime gates its smoothing on p(normal) (is a lesion in view?), which
only BUSI teaches (BUS-BRA has no normal images), while BUS-BRA brings twice the lesions and
two more scanner models. Folds are assigned within each dataset by duplicate group / patient,
so the union of fold 0 is leak-free as well.

    streamcad train ship --recipe v1 --device cpu --ssl-budget 1200 --ft-budget 600

The settings are train.config.PRESETS['ship'] (ExperimentConfig; its `folds` are unused here: fold
SHIP_TEST_FOLD is held out); the report records them under 'config' with their version.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from streamcad.train.config import SHIP_REPORT, SHIP_WORK, SHIPPED_MODEL, ExperimentConfig, preset
from streamcad.train.config import SHIP_TEST_FOLD as TEST_FOLD

log = logging.getLogger(__name__)



# The terms of the labelled data (../shared/data/MANIFEST.md); the video clips' terms are read
# per clip from video/sectors.json (data_terms), since the pool takes every clip in the folder.
DATASET_TERMS = {
    "BUSI": "no licence text with the release; cite Al-Dhabyani et al., Data in Brief 28 (2020) 104863",
    "BUS-BRA": "permissive licence (the release's LICENSE.txt, copied in streamcad/data/sample/LICENSE.txt): "
               "cite Gómez-Flores et al., Medical Physics (2024)",
}


def data_terms(root: str | os.PathLike | None, data_npz: str | os.PathLike | None = None) -> dict:
    """The terms of everything the weights were trained on: the two datasets (DATASET_TERMS) and
    each video clip of the SSL pool with its licence note from video/sectors.json.
    -> {'datasets': {name: terms}, 'video_clips': [{'file', 'licence'}] | None, 'unlicensed': [file]}
    ('video_clips' None: a packed data file, whose clip list is not recorded)."""
    from streamcad.train.data.arrays import data_root

    out: dict = {"datasets": dict(DATASET_TERMS), "video_clips": None, "unlicensed": []}
    if data_npz:
        return out
    vdir = data_root(root) / "video"
    notes: dict[str, str] = {}
    sectors = vdir / "sectors.json"
    if sectors.is_file():
        for c in json.loads(sectors.read_text()):
            notes[c["file"]] = c.get("licence") or c.get("licence_note") or ""
    clips = [{"file": f.name, "licence": notes.get(f.name) or "not recorded in sectors.json"}
             for f in sorted(vdir.glob("*.mp4"))]
    out["video_clips"] = clips
    out["unlicensed"] = [c["file"] for c in clips if c["licence"].upper().startswith(("NO LICENCE", "NOT RECORDED"))]
    return out


def _terms_section(report: dict) -> str:
    """The model card's 'Data terms' section from report['data_terms'] (older reports: the
    datasets' terms and a note that the clips were not recorded)."""
    terms = report.get("data_terms") or {"datasets": DATASET_TERMS, "video_clips": None, "unlicensed": []}
    lines = ["## Data terms", "The weights are derived from the data below; its terms travel with them.", ""]
    lines += [f"- **{name}** (labelled; fine-tuning, SSL pool): {t}." for name, t in terms["datasets"].items()]
    clips = terms.get("video_clips")
    if clips is None:
        lines.append("- **Video frames** (SSL pool only): the clips were not recorded in this report; their "
                     "terms are per clip in ../shared/data/video/sectors.json and MANIFEST.md.")
    else:
        lines.append(f"- **Video frames** (SSL pool only, {len(clips)} clips):")
        lines += [f"  - `{c['file']}`: {c['licence']}" for c in clips]
    if terms.get("unlicensed"):
        lines += ["", f"**Trained on {len(terms['unlicensed'])} recording(s) without a licence** "
                  f"({', '.join(terms['unlicensed'])}; all rights reserved by default): these weights are for "
                  "local development only; do not redistribute them until they are retrained without those clips."]
    return "\n".join(lines) + "\n"


def combine(arrays: dict) -> object:
    """{'busi': LabeledArrays, 'busbra': LabeledArrays} -> one LabeledArrays (ids/groups prefixed)."""
    from streamcad.train.data import LabeledArrays

    parts = {}
    for f in fields(LabeledArrays):
        vals = []
        for ds, a in arrays.items():
            v = getattr(a, f.name)
            if f.name in ("groups", "ids"):
                v = np.array([f"{ds}:{x}" for x in v])
            vals.append(v)
        parts[f.name] = np.concatenate(vals)
    return LabeledArrays(**parts)


def _per_dataset_metrics(pred: dict, n_boot: int, seed: int) -> dict:
    from streamcad.train.evaluate import bootstrap_metrics

    ids = np.array(pred["ids"])
    labels = np.array(pred["labels"])
    probs = np.array(pred["probs"])
    out = {}
    for ds in ("busi", "busbra", "all"):
        sel = np.ones(len(ids), bool) if ds == "all" else np.char.startswith(ids.astype(str), ds + ":")
        out[ds] = bootstrap_metrics(labels[sel], probs[sel], pred["threshold"], n_boot=n_boot, seed=seed)
    return out


def ship(
    out: str | os.PathLike = SHIPPED_MODEL,
    work: str | os.PathLike = SHIP_WORK,
    cfg: ExperimentConfig | None = None,
    *,
    data_npz: str | None = None,
    root: str | None = None,
    ssl_budget_s: float | None = None,
    ft_budget_s: float | None = None,
    report_path: str | os.PathLike = SHIP_REPORT,
) -> dict:
    """Train (SSL + fine-tune) the v1 recipe on both datasets with fold TEST_FOLD held out, export it,
    fit its gate and write the report + model card. cfg: default preset('ship'); its epochs are
    upper bounds that the budgets (seconds, optional) shrink to whole cosine schedules."""
    from streamcad.engines.export import export_checkpoint
    from streamcad.manifest import read_manifest, write_manifest
    from streamcad.train.common import git_commit, machine_info
    from streamcad.train.data import load_arrays, load_npz, read_video_frames, split_hash
    from streamcad.train.finetune import finetune
    from streamcad.train.ssl import pretrain

    cfg = preset("ship") if cfg is None else cfg
    size, seed, n_boot = cfg.size, cfg.seed, cfg.n_boot
    t0 = time.perf_counter()
    work = Path(work)
    if data_npz:
        packed, video = load_npz(data_npz)
    else:
        packed = {ds: load_arrays(ds, size, root) for ds in ("busi", "busbra")}
        video = read_video_frames(size, root)
    data = combine(packed)
    train_part = data.subset(data.folds != TEST_FOLD)
    pool = np.concatenate([train_part.images, video])
    probe_tr, probe_va = train_part.fold_split(1)  # kNN probe inside the training folds only
    probe = (probe_tr.images, probe_tr.labels, probe_va.images, probe_va.labels)
    log.info("ship: %d training images (+%d video frames) for SSL; %d held out", len(train_part), len(video), int((data.folds == TEST_FOLD).sum()))

    ssl_cfg = cfg.ssl_config()
    if ssl_budget_s:
        # time one epoch, then fit the schedule into the budget (a whole cosine schedule, not a cut-off one)
        t = time.perf_counter()
        pretrain(replace(ssl_cfg, epochs=1), pool, work / "ssl-timing")
        per_epoch = time.perf_counter() - t
        ssl_cfg = replace(ssl_cfg, epochs=max(2, min(cfg.epochs_ssl, int(ssl_budget_s / per_epoch))))
        log.info("ship: SSL epoch %.1f s -> %d epochs in the %.0f s budget", per_epoch, ssl_cfg.epochs, ssl_budget_s)
    t_ssl = time.perf_counter()
    ssl_path = pretrain(ssl_cfg, pool, work / "ssl", probe=probe, resume=(work / "ssl" / "last.pt").is_file())
    t_ssl = time.perf_counter() - t_ssl

    ft_cfg = cfg.finetune_config(init=str(ssl_path))
    if ft_budget_s:
        t = time.perf_counter()
        finetune(replace(ft_cfg, epochs=1, n_boot=10), data, TEST_FOLD, work / "finetune-timing")
        per_epoch = time.perf_counter() - t
        ft_cfg = replace(ft_cfg, epochs=max(2, min(cfg.epochs_ft, int(ft_budget_s / per_epoch))))
        log.info("ship: fine-tune epoch %.1f s -> %d epochs in the %.0f s budget", per_epoch, ft_cfg.epochs, ft_budget_s)
    res = finetune(ft_cfg, data, TEST_FOLD, work / "finetune")
    metrics = _per_dataset_metrics(res["predictions"], n_boot, seed)

    manifest, parity = export_checkpoint(res["checkpoint"], out, data_npz=data_npz, data_root=root)
    m = read_manifest(out).to_fields()
    m["operating_threshold"] = float(res["threshold"])
    m["metrics"] = {"held_out": f"fold {TEST_FOLD} of both datasets (committed splits)", **metrics}
    m["training_data"] = {
        "datasets": ["BUSI", "BUS-BRA"],
        "train_folds": [1, 2, 3, 4],
        "test_fold": TEST_FOLD,
        "split_sha256": {"busi": split_hash("busi"), "busbra": split_hash("busbra")},
        "n_train": res["n_train"], "n_val": res["n_val"], "n_test": res["n_test"],
        "ssl_pool": f"{len(train_part)} training-fold images of both datasets + {len(video)} real video frames",
    }
    write_manifest(out, **m)
    from streamcad.train.ood import calibrate

    # every shipped model gets its gate refitted: the embedding changes with every training run
    ood = calibrate(out, root=root, data_npz=data_npz, test_fold=TEST_FOLD, seed=seed)

    report = {
        "schema": 1,
        "what": "shipped default model",
        "onnx": str(Path(out).name),
        "model": cfg.model, "size": size,
        "config": cfg.to_dict(),  # the recipe-level settings with their version (train.config)
        "ssl_config": ssl_cfg.to_dict(),
        "finetune_config": ft_cfg.to_dict(),
        "best_epoch": res["best_epoch"], "epochs_run": res["epochs_run"],
        "temperature": res["temperature"], "threshold": res["threshold"],
        "metrics": metrics,
        "parity": parity.to_dict(),
        "ood_gate": {k: ood[k] for k in ("method", "dim", "threshold", "chosen", "rates", "fitted_on")},
        "wall_s": {"ssl": t_ssl, "total": time.perf_counter() - t0},
        "git_commit": git_commit(), "machine": machine_info(),
        "data_terms": data_terms(root, data_npz),
    }
    path = Path(report_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
    card = write_model_card(report, Path(out).with_name("MODEL_CARD.md"), read_manifest(out).sha256)
    log.info("ship: wrote %s, %s and %s", out, path, card)
    return report


def _ci(m: dict, key: str, pct: bool = False) -> str:
    v = m.get(key)
    if not isinstance(v, dict):
        return "n/a"
    f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3f}")
    return f"{f(v['value'])} [{f(v['ci_low'])}, {f(v['ci_high'])}]"


def write_model_card(report: dict, path: str | os.PathLike, manifest_sha256: str) -> Path:
    """MODEL_CARD.md from the ship report: every number comes from the report, none typed by hand."""
    rows = []
    for ds, name in (("busi", "BUSI fold 0"), ("busbra", "BUS-BRA fold 0"), ("all", "both, pooled")):
        m = report["metrics"][ds]
        n = f"{m.get('n_normal', 0)}/{m.get('n_benign', 0)}/{m.get('n_malignant', 0)}"
        rows.append(
            f"| {name} | {n} | {_ci(m, 'auc')} | {_ci(m, 'sensitivity', True)} | {_ci(m, 'specificity', True)} "
            f"| {_ci(m, 'f1')} | {_ci(m, 'balanced_accuracy')} | {_ci(m, 'ece')} | {_ci(m, 'brier')} "
            f"| {_ci(m, 'auc_macro_ovr') if m.get('n_normal') else 'n/a'} |"
        )
    ssl, ft = report["ssl_config"], report["finetune_config"]
    mach = report["machine"]
    wall = report["wall_s"]
    text = f"""# Model card: `engines/models/{report['onnx']}`

Generated by `streamcad train ship` (train/ship.py) from `train/results/shipped_default.json`;
do not edit by hand. sha256 `{manifest_sha256}`.

## Intended use
Decision-support **research**: a per-frame estimate of p(normal), p(benign), p(malignant) for a
breast-ultrasound image sector, smoothed over the frames that show a lesion. **Not a medical
device**; not cleared for diagnosis; never a substitute for a radiologist's reading or biopsy.
Inputs outside what it was trained on (other organs, Doppler, elastography, other vendors,
paediatric or male patients) give scores without meaning; the runtime's quality flags catch only
the grossest cases (blank, frozen, no signal, not ultrasound-like).

## Model
`{report['model']}` multiscale CNN with cross-scale attention (train/model.py, docs/MODEL.md),
input 1x{report['size']}x{report['size']} (letterboxed grayscale), outputs `logits` (N, 3)
(temperature {report['temperature']:.3f} baked in) and `saliency` (N, 1, h, w).
Operating threshold on p(malignant): {report['threshold']:.3f} (Youden's J on validation).

## Data and protocol
- BUSI (Al-Dhabyani et al. 2020; GE LOGIQ E9; 760 of 780 images kept: near-duplicate groups
  kept together, conflicting-label groups and the cross-class exact duplicate dropped) and
  BUS-BRA (Gómez-Flores et al. 2024; GE Logiq 5 / 7; 1,449 images, split by patient with the
  authors' folds). Committed splits: `train/splits/*_5fold.csv` (sha256 in the manifest).
- Fold 0 of both datasets is held out from everything below and scored once at the end.
- Self-supervised pretraining (SimCLR-style instance contrast + dense correspondence term) on
  the training folds' images of both datasets + real video frames, no labels:
  {ssl['epochs']} epochs, batch {ssl['batch_size']}, {ssl['device']}, {wall['ssl'] / 60:.0f} min.
- Fine-tuning on folds 1-4 (a group-wise 20% validation split inside them drives early
  stopping, temperature scaling and the threshold): up to {ft['epochs']} epochs, best epoch
  {report['best_epoch']}, class-weighted cross entropy, ultrasound augmentations.
- Machine: {mach.get('gpu') or mach.get('processor', '?')} ({mach.get('cpu_count', '?')} CPU cores,
  {mach.get('torch_threads', '?')} torch thread(s), shared with other jobs), total wall time
  {wall['total'] / 60:.0f} min. Reproduce: `streamcad train ship` with the settings in the
  JSON report (the GPU preset trains longer; see docs/TRAINING.md).

## Held-out metrics (fold 0, 95% stratified-bootstrap CIs)
AUC, sensitivity, specificity, F1 and balanced accuracy are benign vs malignant on the lesion
images (normals excluded), scored by p(malignant) at the operating threshold; the 3-class
macro AUC (one-vs-rest) also counts BUSI's normal images.

| test set | n normal/benign/malignant | AUC | sensitivity | specificity | F1 | balanced acc. | ECE | Brier | 3-class macro AUC |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

These are one fold (about a fifth of each dataset), so the intervals are wide; the 5-fold
protocol results of the architecture are in docs/TRAINING.md.

{_terms_section(report)}
## Calibration
Temperature scaling on validation data; ECE above (15 equal-width bins) and the reliability
diagrams of the experiment runs in `train/results/plots/`.

## Known limitations
- **BUSI near-duplicates**: BUSI has no patient ids; splits group near-duplicate images
  (perceptual hash + thumbnail distance, recall 0.996 against the curator's pairs), but
  different images of one patient that do not look alike can still sit on both sides.
- **Caliper / text shortcut**: most images in both datasets carry calipers or annotations,
  which correlate with the label; live scanning without calipers may score differently.
  The overlay add/remove ablation in docs/TRAINING.md measures the dependence where it was run.
- **Scanners seen**: GE LOGIQ E9 (BUSI), GE Logiq 5 and 7 (BUS-BRA) only. Other vendors,
  presets and probe frequencies are out of distribution.
- **Small CPU budget**: this shipped model was trained within a CPU time budget (few SSL
  epochs); it is far from converged. The GPU preset (docs/TRAINING.md) trains longer.
- **No breast video**: video-level behaviour was only checked on a simulated sweep over still
  images and on non-breast (ocular) real recordings.
"""
    p = Path(path)
    p.write_text(text)
    return p
