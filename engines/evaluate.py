"""`streamcad evaluate MODEL DATA_DIR`: score a shipped model file on a labelled image folder.

    MODEL (.onnx / .engine / .pt) + manifest --streamcad.manifest.load_model--> backend
    DATA_DIR (BUS-BRA | BUSI | sample layout) --discover--> image paths + labels
        --cv2 gray--> streamcad.preprocess (the runtime's own path) --backend.infer--> logits
        --softmax--> probs (N, 3) --engines.metrics.bootstrap_metrics--> metrics + 95% CIs

Metric definitions are engines.metrics' (one definition for training reports and this command):
AUC is benign vs malignant with score = p(malignant), the 3-way softmax output the runtime
publishes (NOT renormalised over benign + malignant); normal images are left out of it.
Sensitivity / specificity / F1 binarise p(malignant) >= threshold, where threshold is
--threshold, else the manifest's operating_threshold. `site_threshold` is the threshold the
model's own rule (its manifest's notes.operating_threshold_rule) picks on the evaluated images
themselves, a site's candidate operating point (optimistic on these images; check it on others). ECE uses 15 equal-width bins. CIs are a
stratified percentile bootstrap (--bootstrap resamples). With normals present (BUSI) the
3-class macro one-vs-rest AUC is added.

Needs the `eval` extra (scikit-learn, scipy, matplotlib), no torch. From the checkout, one command
builds .venv with it and runs the check: `make evaluate DATA=DIR` (MODEL=... for another model).

With --json OUT it also writes the ROC curve and the reliability diagram beside OUT
(OUT.roc.png, OUT.reliability.png). When DATA_DIR holds images the model was trained on (by
the manifest's `training_data`: datasets + training folds of the committed splits in
train/splits/, matched by file name) it warns, counts them in the result, and the metrics
are optimistic: a renamed copy of a training image is not recognised.

Layouts recognised:
- BUS-BRA: DATA_DIR/Images/*.png + DATA_DIR/bus_data.csv (columns ID, Pathology)
- BUSI:    DATA_DIR/{benign,malignant,normal}/*.png (masks *_mask*.png ignored)
- sample:  DATA_DIR/images/*.png + DATA_DIR/labels.csv (columns file, label), like streamcad/data/sample
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from streamcad.engines.gate import busbra_images, busi_images, softmax
from streamcad.errors import ConfigError, FrameError, StreamcadError
from streamcad.extras import missing_module_message
from streamcad.gate_ood import BREAST_BUDGET
from streamcad.manifest import CLASS_NAMES as CLASSES

log = logging.getLogger(__name__)

HELP = "score a model on a folder laid out like BUSI or BUS-BRA"

DEFAULT_BATCH = 16


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (.onnx, .engine, or a .pt checkpoint with --backend torch)")
    p.add_argument("data_dir", help="folder laid out like BUS-BRA (Images/ + bus_data.csv) or BUSI (benign/ malignant/ normal/)")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="also write the full result (metrics, per-image probabilities) to this JSON file")
    p.add_argument("--backend", default="onnxruntime", help="inference backend (see `streamcad info`); default onnxruntime")
    p.add_argument("--device", default=None, help="'cpu' or 'cuda' (onnxruntime provider / torch device); default: the backend's own (torch has none: name it)")
    p.add_argument("--allow-unverified", action="store_true", help="load a model file that has no manifest (logged as a warning)")
    p.add_argument("--threshold", type=float, default=None, help="operating threshold on p(malignant); default: the manifest's")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples for the 95%% CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _labelled(rows: list[dict[str, str]], path: Path, id_col: str, label_col: str) -> dict[str, str]:
    if rows and (id_col not in rows[0] or label_col not in rows[0]):
        raise ConfigError(f"{path}: columns {list(rows[0])}; expected {id_col!r} and {label_col!r}")
    out = {}
    for r in rows:
        label = r[label_col].strip().lower()
        if label not in CLASSES:
            raise ConfigError(f"{path}: {r[id_col]!r} has label {r[label_col]!r}; expected one of {list(CLASSES)}")
        out[r[id_col].strip()] = label
    return out


def discover(data_dir: str | Path) -> tuple[str, list[Path], np.ndarray, list[str]]:
    """Find images and labels -> (layout name, image paths, labels (N,) int64 index into CLASSES, ids)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ConfigError(f"data folder {root} does not exist")
    items: list[tuple[str, Path, str]] = []  # (id, path, label)
    if (root / "Images").is_dir() and (root / "bus_data.csv").is_file():
        layout = "busbra"
        csv_path = root / "bus_data.csv"
        labels = _labelled(_read_csv(csv_path), csv_path, "ID", "Pathology")
        for img in busbra_images(root):
            if img.stem in labels:
                items.append((img.stem, img, labels[img.stem]))
            else:
                log.warning("%s: no row in bus_data.csv; skipped", img.name)
        missing = sorted(set(labels) - {i for i, _, _ in items})
        if missing:
            log.info("%d rows of bus_data.csv have no image in Images/ (e.g. %s)", len(missing), missing[0])
    elif any((root / c).is_dir() for c in CLASSES):
        layout = "busi"
        for c in CLASSES:
            for img in busi_images(root / c) if (root / c).is_dir() else []:
                items.append((f"{c}/{img.stem}", img, c))
    elif (root / "images").is_dir() and (root / "labels.csv").is_file():
        layout = "sample"
        csv_path = root / "labels.csv"
        labels = _labelled(_read_csv(csv_path), csv_path, "file", "label")
        for name, label in sorted(labels.items()):
            img = root / "images" / name
            if not img.is_file():
                raise ConfigError(f"{csv_path}: lists {name!r} but {img} does not exist")
            items.append((Path(name).stem, img, label))
    else:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:12]
        raise ConfigError(
            f"unrecognised folder layout in {root}: found {found or 'nothing'}; expected BUS-BRA "
            "(Images/ + bus_data.csv), BUSI (benign/ malignant/ normal/ with PNGs) or sample (images/ + labels.csv)"
        )
    if not items:
        raise ConfigError(f"{root} ({layout} layout) holds no labelled PNG images")
    ids = [i for i, _, _ in items]
    paths = [p for _, p, _ in items]
    y = np.array([CLASSES.index(lbl) for _, _, lbl in items], np.int64)
    return layout, paths, y, ids


def _read_gray(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)  # colour BUSI files -> gray, like the runtime
    if img is None:
        raise FrameError(f"cannot read image {path}")
    return img


def predict(model: Any, paths: list[Path], batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """Run a LoadedModel over image files through the runtime's preprocessing -> probs (N, 3); a
    model whose manifest has `zoom` is scored as the runtime scores it (streamcad.zoom.two_view)."""
    return predict_gated(model, paths, batch_size)[0]


def predict_gated(model: Any, paths: list[Path], batch_size: int = DEFAULT_BATCH) -> tuple[np.ndarray, np.ndarray | None]:
    """predict, and the out-of-domain gate's score of every image (None: the model has no gate):
    -> (probs (N, 3), scores (N,) or None). The gate sees the embedding of the full view, as in the runtime."""
    from streamcad.preprocess import preprocess_batch
    from streamcad.zoom import hi_view, two_view

    be = model.backend
    zoom = getattr(model, "zoom", None)
    gate = getattr(model, "gate", None)
    bs = be.fixed_batch or batch_size
    out = np.empty((len(paths), 3), np.float64)
    scores = None if gate is None else np.empty(len(paths), np.float64)
    for start in range(0, len(paths), bs):
        chunk = [_read_gray(p) for p in paths[start : start + bs]]
        x = preprocess_batch(chunk, model.spec)  # (n, 1, S, S) float32
        n = x.shape[0]
        if be.fixed_batch and n < bs:  # pad the last batch of a fixed-batch engine, drop the padding after
            x = np.concatenate([x, np.zeros((bs - n, *x.shape[1:]), np.float32)])
        if zoom is None:
            res = be.infer(x)
        else:
            hi = np.stack([hi_view(img, None, model.spec.size, zoom) for img in chunk])
            if len(hi) < len(x):
                hi = np.concatenate([hi, np.zeros((len(x) - len(hi), *hi.shape[1:]), np.uint8)])
            res = two_view(be, x, hi, model.spec, zoom)
        out[start : start + n] = softmax(res["logits"][:n])  # temperature already in the logits
        if scores is not None:
            if "embedding" not in res:
                raise StreamcadError(f"{be!r}: the manifest has an out-of-domain gate but the backend returned no 'embedding'")
            scores[start : start + n] = gate.score(res["embedding"][:n])
    return out, scores


def gate_summary(labels: np.ndarray, flagged: np.ndarray, threshold: float) -> dict:
    """How many of these images the model's out-of-domain gate flags (the runtime then shows no
    malignancy for them), overall and per class."""
    by_class = {CLASSES[c]: {"n": int((labels == c).sum()), "flagged": float(flagged[labels == c].mean())}
                for c in range(len(CLASSES)) if (labels == c).any()}
    return {"threshold": float(threshold), "n_flagged": int(flagged.sum()), "flagged": float(flagged.mean()),
            "by_class": by_class,
            "what": "each image scored as the runtime scores a sector crop (the image is the sector; no screen, no "
                    "tracker); a flagged frame shows no malignancy at the bedside, so a high rate here means the gate "
                    "does not know this scanner's breast images"}


def site_threshold(labels: np.ndarray, probs: np.ndarray, rule: dict | None) -> dict:
    """The threshold the model's own rule (its manifest's notes.operating_threshold_rule, written by
    `streamcad train ship`) picks on these images: a site's own operating point for its scanner
    (`[smoothing] on_threshold`), to be confirmed on other cases than the ones it was chosen on (on
    these it is optimistic by construction). labels: class indices (CLASSES), probs (N, 3).
    -> {'rule', 'threshold' (None when the manifest records no rule, or the malignant images are too
    few to vouch for its bound), 'n_malignant', 'sensitivity', 'specificity', 'why'}."""
    from streamcad.engines.metrics import binary_view, threshold_by_rule

    _, y, s = binary_view(labels, probs)
    out = {"rule": rule, "n_malignant": int(y.sum()), "threshold": None, "sensitivity": None, "specificity": None, "why": None}
    if not rule:
        out["why"] = "the model's manifest records no threshold rule (notes.operating_threshold_rule)"
        return out
    try:
        t = threshold_by_rule(y, s, rule)
    except ConfigError as exc:
        out["why"] = str(exc)
        return out
    out.update(threshold=t, sensitivity=float((s[y == 1] >= t).mean()), specificity=float((s[y == 0] < t).mean()))
    return out


def evaluate(
    model_path: str | Path,
    data_dir: str | Path,
    backend: str = "onnxruntime",
    allow_unverified: bool = False,
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    **options: Any,
) -> dict:
    """Score `model_path` on `data_dir` -> a JSON-ready dict (metrics with CIs, per-image probs)."""
    try:
        from streamcad.engines.metrics import bootstrap_metrics
    except ModuleNotFoundError as exc:
        msg = missing_module_message(exc.name or "", "eval")
        if msg is None:
            raise
        raise StreamcadError(msg) from exc
    from streamcad.manifest import load_model

    if n_boot < 1:
        raise ConfigError(f"--bootstrap {n_boot}; expected >= 1")
    layout, paths, labels, ids = discover(data_dir)
    if not {1, 2} <= set(labels.tolist()):
        raise ConfigError(f"{data_dir}: needs both benign and malignant images; found {sorted({CLASSES[i] for i in labels})}")
    with load_model(model_path, backend=backend, allow_unverified=allow_unverified, **options) as model:
        if threshold is not None:
            thr, thr_source = float(threshold), "--threshold"
        elif model.threshold is not None:
            thr, thr_source = float(model.threshold), "manifest operating_threshold"
        else:
            thr, thr_source = 0.5, "default 0.5 (no manifest threshold)"
            log.warning("no operating threshold in the manifest and no --threshold: using 0.5")
        if not 0.0 <= thr <= 1.0:
            raise ConfigError(f"threshold {thr}; expected a probability in [0, 1]")
        log.info("scoring %d images (%s layout) with %r on %s", len(paths), layout, model.backend, Path(model_path).name)
        probs, ood_scores = predict_gated(model, paths)
        gate = getattr(model, "gate", None)
        overlap = training_overlap(model.manifest.training_data if model.manifest else {}, ids)
        rule = (model.manifest.notes or {}).get("operating_threshold_rule") if model.manifest else None
        info = {
            "model": str(model_path),
            "sha256": model.sha256,
            "verified": model.manifest is not None,
            "backend": model.backend.name,
            "device": model.backend.device,
            "precision": model.backend.precision,
        }
    metrics = bootstrap_metrics(labels, probs, thr, n_boot=n_boot, seed=seed)
    ood = flagged = None
    if ood_scores is not None:
        flagged = ~(ood_scores <= gate.threshold)  # NaN counts as out of domain, as in the runtime
        ood = gate_summary(labels, flagged, gate.threshold)
        passed = ~flagged
        # what the bedside would show: only the images the gate lets through are scored
        ood["metrics_on_passed"] = (bootstrap_metrics(labels[passed], probs[passed], thr, n_boot=n_boot, seed=seed)
                                    if {1, 2} <= set(labels[passed].tolist()) else None)
    return {
        **info,
        "data_dir": str(data_dir),
        "layout": layout,
        "score": "p(malignant), 3-way softmax; AUC over benign+malignant images only",
        "threshold": thr,
        "threshold_source": thr_source,
        "n_boot": n_boot,
        "seed": seed,
        "metrics": metrics,
        "site_threshold": site_threshold(labels, probs, rule),
        "ood_gate": ood,
        "training_overlap": overlap,
        "predictions": [
            {"id": i, "label": CLASSES[int(y)], **{f"p_{c}": float(p[k]) for k, c in enumerate(CLASSES)},
             **({} if ood_scores is None else {"ood_score": float(ood_scores[j]), "out_of_domain": bool(flagged[j])})}
            for j, (i, y, p) in enumerate(zip(ids, labels, probs, strict=True))
        ],
    }


def _split_rows(dataset: str) -> tuple[Path, list[dict[str, str]]]:
    """The committed 5-fold split of `dataset` (train/splits/DATASET_5fold.csv): path, rows.
    A data file, found by place: train/ is engines/'s sibling in a checkout and in the wheel
    (streamcad/train), and engines never import train (docs/ARCHITECTURE.md, "Layers")."""
    path = Path(__file__).resolve().parents[1] / "train" / "splits" / f"{dataset}_5fold.csv"
    return path, _read_csv(path)


def training_overlap(training_data: dict, ids: list[str]) -> dict | None:
    """The images of `ids` that the model was trained or validated on, per its manifest.

    training_data (manifest): {'datasets': ['BUSI', 'BUS-BRA'], 'train_folds': [1, 2, 3, 4],
    'test_fold': 0, 'split_sha256': {'busi': hex, ...}}. An id's file name (the part after the
    last '/') is looked up in each named dataset's committed split; rows of a training fold count.
    -> None when the manifest records no datasets, else {'n_overlap', 'n_images', 'n_held_out',
    'per_dataset', 'examples', 'split_matches_manifest'}; logs a warning when n_overlap > 0.
    """
    import hashlib

    datasets = [str(d).lower().replace("-", "").replace("_", "") for d in training_data.get("datasets", [])]
    if not datasets:
        return None
    train_folds = {int(f) for f in training_data.get("train_folds", [])}
    test_fold = training_data.get("test_fold")
    names = {i: i.rsplit("/", 1)[-1] for i in ids}
    hits: dict[str, list[str]] = {}
    held_out = 0
    split_ok: dict[str, bool] = {}
    for ds in datasets:
        try:
            path, rows = _split_rows(ds)
        except ConfigError:
            log.warning("the model was trained on %s, but its split file is not in this install: "
                        "training-data overlap not checked for it", ds)
            continue
        want = (training_data.get("split_sha256") or {}).get(ds)
        split_ok[ds] = want is None or hashlib.sha256(path.read_bytes()).hexdigest() == want
        fold_of = {r["image_id"]: int(r["fold"]) for r in rows}
        hits[ds] = [i for i, n in names.items() if fold_of.get(n, -1) in train_folds]
        held_out += sum(1 for n in names.values() if test_fold is not None and fold_of.get(n) == int(test_fold))
    overlap = sorted({i for v in hits.values() for i in v})
    out = {
        "n_overlap": len(overlap),
        "n_images": len(ids),
        "n_held_out": held_out,
        "per_dataset": {ds: len(v) for ds, v in hits.items()},
        "train_folds": sorted(train_folds),
        "examples": overlap[:5],
        "split_matches_manifest": split_ok,
        "matched_by": "file name against the committed splits (a renamed copy is not recognised)",
    }
    if overlap:
        log.warning(
            "%d of %d images are in this model's training data (%s, folds %s, per its manifest; e.g. %s): "
            "the metrics below are optimistic; evaluate on images the model has never seen",
            len(overlap), len(ids), ", ".join(f"{ds}: {n}" for ds, n in out["per_dataset"].items() if n),
            sorted(train_folds), overlap[0],
        )
    for ds, ok in split_ok.items():
        if not ok:
            log.warning("train/splits/%s_5fold.csv differs from the split this model was trained with "
                        "(sha256 in its manifest): the overlap count is against the committed split", ds)
    return out


def write_plots(result: dict, json_path: str | Path) -> list[Path]:
    """ROC curve and reliability diagram of `result` (evaluate()'s dict) beside `json_path`:
    OUT.roc.png and OUT.reliability.png."""
    from streamcad.engines.metrics import plot_reliability, plot_roc

    labels = np.array([CLASSES.index(p["label"]) for p in result["predictions"]], np.int64)
    probs = np.array([[p[f"p_{c}"] for c in CLASSES] for p in result["predictions"]], np.float64)
    base = Path(json_path)
    title = f"{Path(result['model']).name} on {Path(result['data_dir']).name}"
    roc = plot_roc({Path(result["model"]).stem: (labels, probs)}, base.with_suffix(".roc.png"), title=title)
    rel = plot_reliability(labels, probs, base.with_suffix(".reliability.png"), title=title)
    return [roc, rel]


def _options(backend: str, device: str | None) -> dict:
    """--backend / --device -> the backend's own options, built by the backend registry from a
    [model] section (the runtime's rules: a device the backend cannot use is refused by name)."""
    import msgspec

    from streamcad.backends import options_from_model
    from streamcad.config import ModelConfig

    return msgspec.structs.asdict(options_from_model(ModelConfig(backend=backend, device=device)))


def run(args: argparse.Namespace) -> int:
    result = evaluate(
        args.model,
        args.data_dir,
        backend=args.backend,
        allow_unverified=args.allow_unverified,
        threshold=args.threshold,
        n_boot=args.bootstrap,
        seed=args.seed,
        **_options(args.backend, args.device),
    )
    if args.json_out:
        try:
            result["plots"] = [str(p) for p in write_plots(result, args.json_out)]
        except ModuleNotFoundError as exc:
            raise StreamcadError(missing_module_message(exc.name or "", "eval") or str(exc)) from exc
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    m = result["metrics"]
    con = Console(file=sys.stdout)
    con.print(
        escape(
        f"{Path(result['model']).name} ({result['backend']}, {result['device']}, {result['precision']}"
        f"{'' if result['verified'] else ', UNVERIFIED'}) on {result['data_dir']} [{result['layout']}]: "
        f"n={m['n']} (normal {m['n_normal']}, benign {m['n_benign']}, malignant {m['n_malignant']}); "
        f"threshold {result['threshold']:.3f} from {result['threshold_source']}"
        )
    )
    t = Table("metric", "value", "95% CI", title=f"{result['score']}; {result['n_boot']} bootstrap resamples")
    for k, v in m.items():
        if isinstance(v, dict):
            t.add_row(k, f"{v['value']:.3f}", f"[{v['ci_low']:.3f}, {v['ci_high']:.3f}]")
    con.print(t)
    st = result["site_threshold"]
    if st["threshold"] is None:
        con.print(escape(f"site threshold (the model's rule on these images): none: {st['why']}"))
    else:
        con.print(escape(f"site threshold (the model's rule on these images): {st['threshold']:.3f}, sensitivity "
                         f"{st['sensitivity']:.3f} / specificity {st['specificity']:.3f} here ({st['n_malignant']} malignant); "
                         "set it as [smoothing] on_threshold only after checking it on other cases than these"))
    g = result["ood_gate"]
    if g is None:
        con.print("out-of-domain gate: the model has none (every image is scored, breast or not)")
    else:
        per = ", ".join(f"{c} {100 * v['flagged']:.1f}%" for c, v in g["by_class"].items())
        passed = g["metrics_on_passed"]
        con.print(escape(f"out-of-domain gate: {g['n_flagged']} of {m['n']} images flagged ({100 * g['flagged']:.1f}%: {per}); "
                         "the runtime shows no malignancy for those"
                         + ("" if passed is None or not g["n_flagged"] else
                            f"; AUC on the images it lets through {passed['auc']['value']:.3f}")))
        if g["flagged"] > BREAST_BUDGET:
            con.print(escape(f"warning: the gate flags {100 * g['flagged']:.1f}% of these images, over its {100 * BREAST_BUDGET:.0f}% "
                             "budget for breast images: if they are breast B-mode, this site's scanner or hospital lies "
                             "outside what the gate was fitted on (fitted on one of our two datasets it flagged 84% of "
                             "the other's, docs/MODEL.md), and the runtime will show no score on many of its frames"))
    return 0
