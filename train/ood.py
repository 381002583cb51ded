"""Fitting the out-of-domain gate (streamcad/gate_ood.py) on an exported model and its training data.

    exported NAME.onnx (outputs logits, saliency, embedding) + NAME.json (training_data: folds)
    breast training images of both datasets (BUSI + BUS-BRA, the folds the model trained on)
      --streamcad.sources.sweep.SweepRenderer: every image once in a linear and once in a curved
        simulated scanner screen (probe motion, speckle, gain drift)
      --the runtime's path: RoiTracker -> QualityChecker -> preprocess -> ONNX Runtime--> embeddings
      + every image once as it is (the whole image as the sector, through preprocess: a scanner's
        export; raw_images, the default since 2026-12-04)
    cross-fitting over the training folds: for each fold f, fit_gate on the other training folds
        (standardise, class means, shared covariance as top-k principal axes + residual variance)
        and score fold f -> one out-of-fit score per training frame
    threshold = the largest, over the strata (dataset x {linear, curved, as it is}), of the stratum's
        (1 - target_rate) quantile of the out-of-fit scores: every breast source is held to the
        target rate, not just their pool
    the gate itself = fit_gate on all training folds + that threshold --> manifest `ood`
        (parameters, threshold, how it was chosen, the out-of-fit rates per stratum)

No frame of the held-out test fold and no non-breast recording is used: the gate is fitted on
breast images only, so the real non-breast recordings in ../shared/data/video stay a clean
test set (benchmarks/ood_gate.py). Run alone on any exported model (rewrites its manifest):

    streamcad train gate engines/models/default.onnx [--root ../shared/data] [--target-rate 0.02]

`streamcad train ship` calls calibrate() after the export. The embedding itself is
streamcad.nets.forward_gate (the exporter's and the torch backend's, defined with the networks);
fitting and calibration here run on ONNX Runtime, without torch.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamcad.errors import ArtifactError, ConfigError
from streamcad.gate_ood import BREAST_BUDGET, OodGate

__all__ = [
    "StreamFeatures",
    "embed_stream",
    "breast_frames",
    "video_frames",
    "breast_items",
    "capture_degrade",
    "resample",
    "blur",
    "gamma_curve",
    "jpeg",
    "pool_strata",
    "image_features",
    "raw_strata",
    "stack_strata",
    "fit_calibrated",
    "fit_gate",
    "calibrate",
    "TARGET_RATE",
    "HOSPITAL_RATE",
    "THRESHOLD_RULES",
    "N_AXES",
]

log = logging.getLogger(__name__)

# Breast frames of the calibration fold flagged at the chosen threshold. 2% leaves room under the
# 5% budget for new breast data lying a little farther from the fit than the calibration fold.
TARGET_RATE = 0.02
# The hospital rule (threshold_rule='hospital'): breast frames of a dataset the gate was not fitted
# on flagged at the threshold. The unseen dataset is the stand-in for new breast data, so the
# budget itself, no margin under it.
HOSPITAL_RATE = BREAST_BUDGET
THRESHOLD_RULES = ("fold", "hospital")
N_AXES = 64  # principal axes kept: 64 x D numbers in the manifest; the rest is one residual variance (32 -> 64: ROC AUC of the shipped tiny model 0.85 -> 0.89, benchmarks.ood_gate)
_BATCH = 32


# ----------------------------------------------------------------------------- frames -> embeddings


@dataclass
class StreamFeatures:
    """What the runtime computes for each frame of one stream, up to the gate."""

    embeddings: np.ndarray  # (N, D) float32; rows of quality-flagged frames are computed anyway
    logits: np.ndarray  # (N, 3) float32
    flags: list[tuple[str, ...]] = field(default_factory=list)  # quality flags per frame (sorted)
    labels: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.flags)


def embed_stream(backend: Any, spec: Any, frames: Iterable[tuple[np.ndarray, float, str | None, np.ndarray | None]],
                 warmup_frames: int = 8) -> StreamFeatures:
    """(gray frame, chroma, label, colour mask) of ONE stream -> StreamFeatures, through the runtime's own steps:
    a RoiTracker over the stream, QualityChecker on the sector crop, preprocess, backend.infer in
    batches. The tracker first sees the stream's opening warmup_frames frames once (a run-in), so
    every measured frame uses the steady-state box: the pipeline's own first frames use a box from
    a single frame, a start-up transient of a fraction of a second."""
    from streamcad.preprocess import preprocess
    from streamcad.quality import QualityChecker, doppler_fraction
    from streamcad.roi import RoiTracker

    tracker, quality = RoiTracker(warmup_frames=warmup_frames), QualityChecker()
    S = spec.size
    buf = np.empty((_BATCH, 1, S, S), np.float32)
    embs, logits, flags, labels = [], [], [], []
    n = 0
    frames = iter(frames)
    opening = [f for _, f in zip(range(warmup_frames), frames, strict=False)]
    for f in opening:
        tracker.update(f[0])
    frames = itertools.chain(opening, frames)

    def flush(k: int) -> None:
        out = backend.infer(buf[:k])
        if "embedding" not in out:
            raise ArtifactError(f"{backend!r} returns no 'embedding'; export the model again with `streamcad export`")
        embs.append(np.array(out["embedding"], np.float32))
        logits.append(np.array(out["logits"], np.float32))

    for image, chroma, label, colour in frames:
        roi = tracker.update(image)
        x, y, w, h = roi.as_tuple()
        if roi.confidence == 0.0:
            fl: tuple[str, ...] = ("not_ultrasound",)
        else:
            cf = doppler_fraction(colour, image.shape, roi.as_tuple())
            fl = tuple(sorted(quality.check(image[y : y + h, x : x + w], chroma, False, cf)))
        flags.append(fl)
        labels.append(label)
        preprocess(image, spec, roi.as_tuple(), out=buf[n])
        n += 1
        if n == _BATCH:
            flush(n)
            n = 0
    if n:
        flush(n)
    if not flags:
        raise ConfigError("embed_stream got no frames")
    return StreamFeatures(np.concatenate(embs), np.concatenate(logits), flags, labels)


def breast_items(datasets: tuple[str, ...], folds: Iterable[int], root: str | os.PathLike | None = None,
                 data_npz: str | os.PathLike | None = None, with_fold: bool = False) -> list[tuple]:
    """(image path or letterboxed array, class name[, fold]) of the given folds of the committed splits."""
    folds = set(int(f) for f in folds)
    items: list[tuple] = []
    if data_npz:
        from streamcad.train.data import load_npz
        from streamcad.train.data.datasets import CLASSES

        packed, _ = load_npz(data_npz)
        for ds in datasets:
            a = packed[ds]
            items += [(a.images[i], CLASSES[int(a.labels[i])], int(a.folds[i])) for i in range(len(a))
                      if int(a.folds[i]) in folds]
    else:
        from streamcad.train.data.datasets import load_samples
        from streamcad.train.data.splits import read_split

        for ds in datasets:
            split = read_split(ds)
            items += [(s.path, s.label_name, split[s.image_id].fold) for s in load_samples(ds, root)
                      if s.image_id in split and split[s.image_id].fold in folds]
    return items if with_fold else [it[:2] for it in items]


def resample(gray: np.ndarray, factor: float) -> np.ndarray:
    """Down to `factor` of the resolution (INTER_AREA) and back up (linear): a lower-resolution source."""
    import cv2

    h, w = gray.shape
    small = cv2.resize(gray, (max(8, round(w * factor)), max(8, round(h * factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def blur(gray: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(gray, (0, 0), sigma)


def gamma_curve(gray: np.ndarray, gamma: float) -> np.ndarray:
    """uint8 -> uint8 through 255 (x / 255)^gamma: another gain curve (< 1 brighter mid-tones)."""
    return np.round(255.0 * (np.arange(256) / 255.0) ** gamma).astype(np.uint8)[gray]


def jpeg(gray: np.ndarray, quality: int) -> np.ndarray:
    import cv2

    ok, buf = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ConfigError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def capture_degrade(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A screen frame as another scanner or capture chain might deliver it: each of four
    degradations with probability 0.5, strength drawn uniformly, in this order: down to 0.4-1.0 of
    the resolution and back up (resample); Gaussian blur sigma 0.5-3 px; gamma 0.5-2
    (log-uniform); JPEG quality 25-95. uint8 (H, W) -> uint8 (H, W)."""
    g = gray
    if rng.random() < 0.5:
        g = resample(g, rng.uniform(0.4, 1.0))
    if rng.random() < 0.5:
        g = blur(g, rng.uniform(0.5, 3.0))
    if rng.random() < 0.5:
        g = gamma_curve(g, float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))))
    if rng.random() < 0.5:
        g = jpeg(g, int(rng.integers(25, 96)))
    return np.ascontiguousarray(g, np.uint8)


def breast_frames(items: list[tuple[Any, str]], sector: str, seed: int = 0,
                  screen: tuple[int, int] = (1024, 768),
                  degrade: bool = False) -> Iterator[tuple[np.ndarray, float, str | None, None]]:
    """Each image once inside the simulated scanner screen (streamcad.sources.sweep): one frame per
    image at its own point of the probe motion, with the sweep's speckle and gain drift;
    degrade=True passes every frame through capture_degrade (its own generator, from seed)."""
    from streamcad.sources.sweep import SweepRenderer

    r = SweepRenderer(items, seed=seed, sector=sector, screen=screen, fps=1.0, dwell_s=1.0, transition_s=0.0)
    rng = np.random.default_rng([seed, 7919])
    for i in range(len(r)):
        f = r.render(i)
        yield (capture_degrade(f.image, rng) if degrade else f.image), f.chroma, f.label, None


def video_frames(path: str | os.PathLike, limit: int | None = None) -> Iterator[tuple[np.ndarray, float, None, np.ndarray | None]]:
    """Every frame of a video file as the runtime receives it (gray, chroma, colour-flow mask)."""
    import cv2

    from streamcad.sources.base import colour_flow_mask, to_gray

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ConfigError(f"cannot open video {path}")
    try:
        k = 0
        while limit is None or k < limit:
            ok, frame = cap.read()
            if not ok:
                break
            gray, chroma = to_gray(frame)
            yield gray, chroma, None, colour_flow_mask(frame) if chroma > 0 else None
            k += 1
    finally:
        cap.release()


# ----------------------------------------------------------------------------- fitting


def fit_gate(emb: np.ndarray, labels: np.ndarray, n_axes: int = N_AXES) -> OodGate:
    """Breast training embeddings (N, D) + class labels (N,) -> OodGate with threshold inf (set by
    calibrate). Standardise per dimension; class means; the pooled within-class covariance as its
    top n_axes eigenvectors + the mean of the remaining eigenvalues (probabilistic PCA)."""
    emb = np.asarray(emb, np.float64)
    labels = np.asarray(labels)
    if emb.ndim != 2 or len(emb) != len(labels) or len(emb) < 10:
        raise ConfigError(f"fit_gate: embeddings {emb.shape} and labels {labels.shape}; expected (N, D) and (N,), N >= 10")
    center = emb.mean(0)
    scale = emb.std(0)
    scale = np.where(scale > 1e-6 * max(float(scale.max()), 1e-12), scale, max(float(scale.max()), 1.0))  # dead units
    z = (emb - center) / scale
    classes = sorted(set(labels.tolist()), key=str)
    means = np.stack([z[labels == c].mean(0) for c in classes])  # (C, D)
    resid = z - means[[classes.index(c) for c in labels.tolist()]]  # within-class deviations
    cov = resid.T @ resid / max(1, len(z) - len(classes))
    w, v = np.linalg.eigh(cov)  # ascending
    w, v = w[::-1], v[:, ::-1]
    D = emb.shape[1]
    k = int(min(n_axes, D - 1, len(z) // 4))
    floor = 1e-6 * float(w[0])
    rest = w[k:]
    residual = max(float(rest.mean()) if rest.size else floor, floor)
    gate = OodGate(center, scale, means, v[:, :k].T.copy(), np.maximum(w[:k], floor), residual, float("inf"),
                   {"classes": [str(c) for c in classes], "n_axes": k, "n_fit": int(len(z))})
    return gate


def strata_features(backend: Any, spec: Any, datasets: tuple[str, ...], folds: list[int], root: Any,
                     data_npz: Any, seed: int,
                     degrade: bool = False) -> dict[tuple[str, str], tuple[StreamFeatures, np.ndarray]]:
    """Every image of `folds` once in a linear and once in a curved screen -> {(dataset, sector):
    (features, fold per frame)}. degrade=True: other frames of the same images (another point of
    the probe motion), each through capture_degrade."""
    out = {}
    for ds in datasets:
        items = breast_items((ds,), folds, root, data_npz, with_fold=True)
        for j, sector in enumerate(("linear", "curved")):
            frames = breast_frames([it[:2] for it in items], sector, seed=seed + j + (10 if degrade else 0), degrade=degrade)
            f = embed_stream(backend, spec, frames)
            out[(ds, sector)] = (f, np.array([it[2] for it in items]))
            log.info("gate: %s %s: %d breast frames%s", ds, sector, len(f), " (capture-degraded)" if degrade else "")
    return out


def image_features(backend: Any, spec: Any, items: list[tuple]) -> StreamFeatures:
    """(image path or gray array, class name, ...) -> StreamFeatures of each image scored as the
    sector: the whole image through preprocess, as `streamcad evaluate` scores it (no screen, no
    tracker). The form a scanner's own B-mode image has; the rendered frames add the simulator's
    speckle, gain drift and geometry."""
    import cv2

    from streamcad.preprocess import preprocess_batch

    embs, logits = [], []
    for start in range(0, len(items), _BATCH):
        chunk = []
        for it in items[start : start + _BATCH]:
            img = it[0] if isinstance(it[0], np.ndarray) else cv2.imread(str(it[0]), cv2.IMREAD_GRAYSCALE)
            if img is None:
                raise ConfigError(f"cannot read image {it[0]}")
            chunk.append(img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
        out = backend.infer(preprocess_batch(chunk, spec))
        if "embedding" not in out:
            raise ArtifactError(f"{backend!r} returns no 'embedding'; export the model again with `streamcad export`")
        embs.append(np.array(out["embedding"], np.float32))
        logits.append(np.array(out["logits"], np.float32))
    if not embs:
        raise ConfigError("image_features got no images")
    return StreamFeatures(np.concatenate(embs), np.concatenate(logits), [()] * len(items), [it[1] for it in items])


def raw_strata(backend: Any, spec: Any, datasets: tuple[str, ...], folds: list[int], root: Any,
               data_npz: Any) -> dict[tuple[str, str], tuple[StreamFeatures, np.ndarray]]:
    """Every image of `folds` once as it is (image_features) -> {(dataset, 'raw'): (features, fold per image)}."""
    out = {}
    for ds in datasets:
        items = breast_items((ds,), folds, root, data_npz, with_fold=True)
        out[(ds, "raw")] = (image_features(backend, spec, items), np.array([it[2] for it in items]))
        log.info("gate: %s raw: %d breast images", ds, len(items))
    return out


def pool_strata(*parts: dict) -> dict[tuple[str, str], tuple[StreamFeatures, np.ndarray]]:
    """{stratum: (features, folds)} dicts with the same strata -> one, each stratum's frames pooled."""
    out = {}
    for key in parts[0]:
        fs = [p[key][0] for p in parts]
        out[key] = (StreamFeatures(np.concatenate([f.embeddings for f in fs]), np.concatenate([f.logits for f in fs]),
                                   [x for f in fs for x in f.flags], [x for f in fs for x in f.labels]),
                    np.concatenate([p[key][1] for p in parts]))
    return out


def stack_strata(strata: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """{stratum: (features, folds)} -> embeddings (N, D), class labels, folds, stratum index per frame."""
    emb = np.concatenate([f.embeddings for f, _ in strata.values()])
    labels = np.array([lab for f, _ in strata.values() for lab in f.labels])
    folds = np.concatenate([fo for _, fo in strata.values()])
    which = np.concatenate([np.full(len(f), k) for k, (f, _) in enumerate(strata.values())])
    return emb, labels, folds, which


def _cross_fitted(emb: np.ndarray, labels: np.ndarray, parts: np.ndarray, which: np.ndarray, rate: float,
                  n_axes: int) -> tuple[np.ndarray, dict[int, float]]:
    """Each part's frames scored by a gate fitted on the other parts -> (scores, {stratum: its
    (1 - rate) quantile})."""
    out = np.empty(len(emb))
    for f in np.unique(parts):
        held = parts == f
        out[held] = fit_gate(emb[~held], labels[~held], n_axes).score(emb[held])
    return out, {int(k): float(np.quantile(out[which == k], 1.0 - rate)) for k in np.unique(which)}


def fit_calibrated(emb: np.ndarray, labels: np.ndarray, folds: np.ndarray, which: np.ndarray,
                   target_rate: float = TARGET_RATE, n_axes: int = N_AXES, hospitals: np.ndarray | None = None,
                   hospital_rate: float = HOSPITAL_RATE) -> tuple[OodGate, np.ndarray, dict]:
    """The gate's rule: each fold's frames scored by a gate fitted on the other folds (out of fit);
    threshold = the largest over strata (`which`) of the stratum's (1 - target_rate) quantile; the
    gate fitted on all frames with that threshold. -> (gate, out-of-fit scores, {stratum: quantile}).

    hospitals (one group per frame, >= 2 groups): the threshold is also at least the hospital
    rule's, the largest over strata of the (1 - hospital_rate) quantile of each group's frames
    scored by a gate fitted on the other groups only; its quantiles are in the gate's
    info['hospital_quantiles']."""
    oof, q = _cross_fitted(emb, labels, folds, which, target_rate, n_axes)
    threshold, info = max(q.values()), {}
    if hospitals is not None:
        if len(np.unique(hospitals)) < 2:
            raise ConfigError(f"hospital rule: groups {sorted(set(hospitals.tolist()))}; expected at least 2")
        _, qh = _cross_fitted(emb, labels, hospitals, which, hospital_rate, n_axes)
        threshold = max(threshold, max(qh.values()))
        info = {"hospital_quantiles": qh, "hospital_rate": hospital_rate}
    g = fit_gate(emb, labels, n_axes)
    gate = OodGate(g.center, g.scale, g.class_means, g.axes, g.variances, g.residual, threshold, {**g.info, **info})
    return gate, oof, q


def folds_from_manifest(m: Any, test_fold: int | None) -> tuple[list[int], int]:
    td = m.training_data or {}
    t = test_fold if test_fold is not None else td.get("test_fold", td.get("fold", 0))
    if not isinstance(t, int) or not 0 <= t <= 4:
        raise ConfigError(f"test fold {t!r}; expected 0..4 (give --test-fold)")
    train = td.get("train_folds") or [f for f in range(5) if f != t]
    return sorted(int(f) for f in train if int(f) != t), t


def calibrate(
    model_path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    data_npz: str | os.PathLike | None = None,
    test_fold: int | None = None,
    target_rate: float = TARGET_RATE,
    n_axes: int = N_AXES,
    datasets: tuple[str, ...] = ("busi", "busbra"),
    seed: int = 0,
    write: bool = True,
    threads: int = 1,
    capture_augment: bool = False,
    raw_images: bool = True,
    threshold_rule: str = "fold",
) -> dict:
    """Fit + calibrate the gate of an exported model and (write=True) store it in its manifest.

    Only the training folds (from the manifest, never the test fold) are used: cross-fitted
    out-of-fit scores set the threshold (module docstring), the gate is fitted on all of them.
    Returns the manifest's `ood` dict.
    """
    from streamcad.backends import load_backend
    from streamcad.manifest import read_manifest, verify_artifact, write_manifest

    if not 0 < target_rate < 0.5:
        raise ConfigError(f"target_rate={target_rate!r}; expected a fraction in (0, 0.5)")
    if threshold_rule not in THRESHOLD_RULES:
        raise ConfigError(f"threshold_rule={threshold_rule!r}; expected one of {', '.join(THRESHOLD_RULES)}")
    if threshold_rule == "hospital" and len(datasets) < 2:
        raise ConfigError(f"threshold_rule='hospital' needs at least two datasets (hospitals); got {datasets}")
    path = Path(model_path)
    m = read_manifest(path)
    verify_artifact(path, m)
    train_folds, t = folds_from_manifest(m, test_fold)
    if len(train_folds) < 2:
        raise ConfigError(f"training folds {train_folds}: need at least 2 (one fits, one calibrates)")
    spec = m.spec()
    with load_backend("onnxruntime", path, intra_op_threads=threads) as be:
        if be.embedding_dim is None:
            raise ArtifactError(f"{path.name} has no 'embedding' output; export it again with `streamcad export`")
        strata = strata_features(be, spec, datasets, train_folds, root, data_npz, seed)
        if capture_augment:
            strata = pool_strata(strata, strata_features(be, spec, datasets, train_folds, root, data_npz, seed, degrade=True))
        if raw_images:
            strata.update(raw_strata(be, spec, datasets, train_folds, root, data_npz))
    emb, labels, folds, which = stack_strata(strata)
    names = [f"{ds}/{sec}" for ds, sec in strata]
    hospitals = np.array([ds for ds, _ in strata])[which] if threshold_rule == "hospital" else None
    gate, oof, qs = fit_calibrated(emb, labels, folds, which, target_rate, n_axes, hospitals=hospitals)
    q = {names[k]: v for k, v in qs.items()}
    threshold = gate.threshold
    info = {
        **gate.info,
        "chosen": (f"the largest over (dataset x sector) strata of the {100 * (1 - target_rate):g}th percentile of "
                   f"cross-fitted out-of-fit scores (each training fold scored by a gate fitted on the other "
                   f"training folds {train_folds}), breast images in the simulated scanner screen"
                   + (" and as they are" if raw_images else "")
                   + (f"; at least the hospital rule's: the largest over strata of the "
                      f"{100 * (1 - HOSPITAL_RATE):g}th percentile of each dataset's scores under a gate fitted "
                      f"on the other dataset only" if hospitals is not None else "")),
        "threshold_rule": threshold_rule,
        **({"hospital_quantiles": {names[k]: v for k, v in gate.info["hospital_quantiles"].items()}}
           if hospitals is not None else {}),
        "target_rate": target_rate,
        "rates": {
            "out_of_fit_flagged": float(np.mean(oof > threshold)),
            "out_of_fit_flagged_by_stratum": {f"{ds}/{sec}": float(np.mean(oof[which == k] > threshold))
                                              for k, (ds, sec) in enumerate(strata)},
            "stratum_quantiles": q,
            "fit_flagged": float(np.mean(gate.score(emb) > threshold)),
            "quality_flagged": float(np.mean([bool(x) for f, _ in strata.values() for x in f.flags])),
        },
        "fitted_on": {
            "datasets": list(datasets),
            "train_folds": train_folds,
            "test_fold_excluded": t,
            "n_frames": int(len(emb)),
            "frames": "every training image once in a linear and once in a curved simulated scanner screen, "
                      + ("and once more in each through capture_degrade (resolution, blur, gamma, JPEG), "
                         if capture_augment else "")
                      + "through RoiTracker (after its warm-up), QualityChecker and preprocess"
                      + ("; and every training image once as it is (the whole image as the sector, through preprocess)"
                         if raw_images else ""),
            "capture_augment": bool(capture_augment),
            "raw_images": bool(raw_images),
            "negatives": "none (breast images only)",
        },
        "model_sha256": m.sha256,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    gate = OodGate(gate.center, gate.scale, gate.class_means, gate.axes, gate.variances, gate.residual, threshold, info)
    ood = gate.to_dict()
    OodGate.from_dict(ood)  # what the runtime will read back
    if write:
        d = m.to_fields()
        d["ood"] = ood
        write_manifest(path, **d)
        log.info("gate: wrote the gate (D=%d, threshold %.4g) into %s", gate.dim, threshold, path.with_suffix(".json").name)
    return ood


def add_arguments(p: Any) -> None:
    p.add_argument("model", type=Path, help="exported NAME.onnx (with its manifest) to fit the gate for")
    p.add_argument("--target-rate", type=float, default=TARGET_RATE,
                   help=f"fraction of out-of-fit breast training frames flagged at the threshold, in the worst "
                        f"(dataset x screen) stratum (default {TARGET_RATE})")
    p.add_argument("--test-fold", type=int, default=None, help="held-out fold never used (default: the manifest's)")
    p.add_argument("--axes", type=int, default=N_AXES, help=f"principal axes kept (default {N_AXES})")
    p.add_argument("--dry-run", action="store_true", help="fit and print, do not rewrite the manifest")
    p.add_argument("--raw-images", action=argparse.BooleanOptionalAction, default=True,
                   help="fit on every training image once as it is too (the whole image as the sector), beside the "
                        "rendered screen frames (default: on, the shipped gate's design, docs/MODEL.md); "
                        "--no-raw-images fits on the rendered frames only (the earlier gate, which flags most "
                        "breast images as a scanner exports them)")
    p.add_argument("--threshold-rule", choices=THRESHOLD_RULES, default="fold",
                   help="fold (default): the threshold from folds of the fitted datasets; hospital: at least "
                        f"the {100 * (1 - HOSPITAL_RATE):g}th percentile of each dataset's frames under a gate "
                        "fitted on the other dataset only, a threshold for a hospital the gate never saw; "
                        "measured and not adopted: its threshold flags no non-breast recording frame (docs/MODEL.md)")
    p.add_argument("--capture-augment", action="store_true",
                   help="fit on each training image once more in each screen through capture_degrade "
                        "(resolution, blur, gamma, JPEG): a gate that flags fewer breast frames of other scanners")
