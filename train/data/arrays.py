"""Training arrays: letterboxed uint8 images/masks with labels, groups and committed folds.

    Sample list + committed split --read_gray/read_mask--> (H, W) uint8
        --streamcad.preprocess.letterbox (the runtime's function)--> (S, S) uint8
        --stack--> LabeledArrays (cached as .npz under $STREAMCAD_CACHE or ~/.cache/streamcad,
                   keyed by dataset, size and split hash)

`save_npz` packs BUSI + BUS-BRA + the video-frame pool into one compressed file for a GPU
machine that has no /work/shared; `load_npz` reads it back and checks the split hashes.
`unlabeled_pool(exclude, ...)` is the SSL pretraining pool: the OTHER dataset(s) plus sector
crops of the real video frames (+ optional sweep frames). Never pretrain on the dataset a
result is reported on (docs/DATA.md).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from streamcad.errors import ConfigError, FrameError
from streamcad.preprocess import letterbox
from streamcad.roi import detect_roi
from streamcad.train.data.datasets import (
    CLASSES,
    DATASETS,
    data_root,
    load_samples,
    read_gray,
    read_mask,
)
from streamcad.train.data.splits import read_split, split_hash

__all__ = [
    "LabeledArrays",
    "cache_dir",
    "load_arrays",
    "save_npz",
    "load_npz",
    "unlabeled_pool",
    "read_video_frames",
    "pool_from_packed",
]

log = logging.getLogger(__name__)

_VIDEO_FRAMES_PER_CLIP = 48  # evenly spaced; consecutive cine frames are near-identical anyway
_VIDEO_ROI_FRAMES = 16  # frames given to detect_roi (its temporal cue separates UI from image)


@dataclass
class LabeledArrays:
    """One dataset at one input size. Only images kept by the committed split (fold >= 0)."""

    images: np.ndarray  # uint8 (N, S, S), letterboxed
    masks: np.ndarray  # uint8 (N, S, S), {0, 255}, letterboxed with the same geometry
    labels: np.ndarray  # int64 (N,), index into CLASSES
    groups: np.ndarray  # str (N,), duplicate group (BUSI) or patient (BUS-BRA)
    folds: np.ndarray  # int64 (N,), 0..4
    ids: np.ndarray  # str (N,), image ids

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> LabeledArrays:
        return LabeledArrays(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def fold_split(self, fold: int) -> tuple[LabeledArrays, LabeledArrays]:
        """(train = all other folds, test = `fold`)."""
        if fold not in set(self.folds.tolist()):
            raise ConfigError(f"fold {fold} not in this split; expected one of {sorted(set(self.folds.tolist()))}")
        return self.subset(self.folds != fold), self.subset(self.folds == fold)


def cache_dir() -> Path:
    return Path(os.environ.get("STREAMCAD_CACHE") or Path.home() / ".cache" / "streamcad")


def _letterbox_mask(mask: np.ndarray, size: int) -> np.ndarray:
    return np.where(letterbox(mask, size) > 127, 255, 0).astype(np.uint8)


def _build(dataset: str, size: int, root) -> LabeledArrays:
    split = read_split(dataset)
    samples = [s for s in load_samples(dataset, root) if s.image_id in split and split[s.image_id].fold >= 0]
    if set(s.image_id for s in samples) != {k for k, r in split.items() if r.fold >= 0}:
        raise ConfigError(f"{dataset}: the data on disk and train/splits/{dataset}_5fold.csv list different images")
    n = len(samples)
    images = np.empty((n, size, size), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    for k, s in enumerate(samples):
        img = read_gray(s.path)
        images[k] = letterbox(img, size)
        masks[k] = _letterbox_mask(read_mask(s.mask_paths, img.shape), size)
    labels = np.array([s.label for s in samples], np.int64)
    for s, y in zip(samples, labels, strict=True):  # the split's label must agree with the folder/CSV label
        if CLASSES[y] != split[s.image_id].label:
            raise ConfigError(f"{dataset} {s.image_id}: label {CLASSES[y]} on disk, {split[s.image_id].label} in the split")
    return LabeledArrays(
        images=images,
        masks=masks,
        labels=labels,
        groups=np.array([split[s.image_id].group for s in samples]),
        folds=np.array([split[s.image_id].fold for s in samples], np.int64),
        ids=np.array([s.image_id for s in samples]),
    )


def _to_dict(a: LabeledArrays, prefix: str = "") -> dict[str, np.ndarray]:
    return {prefix + f.name: getattr(a, f.name) for f in fields(a)}


def _from_dict(d, prefix: str = "") -> LabeledArrays:
    return LabeledArrays(**{f.name: np.asarray(d[prefix + f.name]) for f in fields(LabeledArrays)})


def load_arrays(dataset: str, size: int, root: str | os.PathLike | None = None) -> LabeledArrays:
    """'busi' | 'busbra' at input size S -> LabeledArrays (cached .npz, rebuilt when the split
    file changes since its hash is in the cache key)."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
    if not isinstance(size, int) or size < 16:
        raise ConfigError(f"size={size!r}; expected an int >= 16")
    path = cache_dir() / f"{dataset}_{size}_{split_hash(dataset)[:16]}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as d:
                return _from_dict(d)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("cache %s unreadable (%s); rebuilding", path, exc)
    arrays = _build(dataset, size, data_root(root))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **_to_dict(arrays))
    os.replace(tmp, path)
    log.info("cached %s (%d images) at %s", dataset, len(arrays), path)
    return arrays


def read_video_frames(size: int, root: str | os.PathLike | None = None, per_clip: int = _VIDEO_FRAMES_PER_CLIP) -> np.ndarray:
    """Evenly spaced frames of every clip in root/video, sector-cropped (streamcad.roi.detect_roi
    over 16 frames of the clip), letterboxed -> uint8 (M, S, S)."""
    vdir = data_root(root) / "video"
    clips = sorted(vdir.glob("*.mp4"))
    if not clips:
        raise ConfigError(f"no .mp4 clips in {vdir}; expected the real video clips")
    out = []
    for clip in clips:
        cap = cv2.VideoCapture(str(clip))
        if not cap.isOpened():
            raise ConfigError(f"cannot open video {clip}")
        frames = []
        while True:
            ok, f = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY))
        cap.release()
        if not frames:
            raise ConfigError(f"video {clip} has no decodable frames")
        pick = np.linspace(0, len(frames) - 1, min(_VIDEO_ROI_FRAMES, len(frames))).round().astype(int)
        try:
            roi = detect_roi([frames[i] for i in pick])
        except FrameError as exc:
            raise ConfigError(f"video {clip}: {exc}") from exc
        if roi.confidence <= 0:
            raise ConfigError(f"no image sector found in {clip}")
        x, y, w, h = roi.as_tuple()
        for i in np.linspace(0, len(frames) - 1, min(per_clip, len(frames))).round().astype(int):
            out.append(letterbox(frames[i][y : y + h, x : x + w], size))
        log.info("video %s: %d frames, sector (x=%d, y=%d, w=%d, h=%d)", clip.name, len(frames), x, y, w, h)
    return np.stack(out)


def _sweep(size: int, n: int, uri: str) -> np.ndarray:
    from streamcad.sources import open_source  # the sources helper's factory (contracts)

    out = []
    with open_source(uri) as src:
        src.start()
        while len(out) < n and not src.ended:
            fr = src.read(timeout=2.0)
            if fr is None:
                continue
            img = fr.image
            if fr.roi is not None:
                x, y, w, h = fr.roi
                img = img[y : y + h, x : x + w]
            out.append(letterbox(img, size))
    if len(out) < n:
        raise ConfigError(f"sweep source {uri} gave {len(out)} frames; expected {n}")
    return np.stack(out)


def unlabeled_pool(
    exclude: str | None,
    size: int,
    root: str | os.PathLike | None = None,
    video_frames: bool = True,
    sweep_frames: int = 0,
    sweep_uri: str | None = None,
) -> np.ndarray:
    """SSL pool -> uint8 (M, S, S): every image of the dataset(s) other than `exclude` (all of
    them, labels unused, dropped ones included), + real video sector frames, + `sweep_frames`
    frames from `sweep_uri` (a sweep: source, which must sweep over the OTHER dataset)."""
    if exclude is not None and exclude not in DATASETS:
        raise ConfigError(f"exclude={exclude!r}; expected None or one of {list(DATASETS)}")
    base = data_root(root)
    parts = []
    for ds in DATASETS:
        if ds == exclude:
            continue
        parts.append(np.stack([letterbox(read_gray(s.path), size) for s in load_samples(ds, base)]))
    if video_frames:
        parts.append(read_video_frames(size, base))
    if sweep_frames > 0:
        if not sweep_uri:
            raise ConfigError("sweep_frames > 0 needs sweep_uri (a sweep: URI over the other dataset)")
        parts.append(_sweep(size, sweep_frames, sweep_uri))
    return np.concatenate(parts) if parts else np.zeros((0, size, size), np.uint8)


def save_npz(path: str | os.PathLike, size: int, root: str | os.PathLike | None = None) -> Path:
    """Pack busi + busbra LabeledArrays and the video-frame pool at size S into one compressed
    .npz (uint8) for machines without ../shared/data. The split hashes go in too."""
    base = data_root(root)
    d: dict[str, np.ndarray] = {"size": np.array(size)}
    for ds in DATASETS:
        d.update(_to_dict(load_arrays(ds, size, base), f"{ds}/"))
        d[f"{ds}/split_sha256"] = np.array(split_hash(ds))
    d["pool/video"] = read_video_frames(size, base)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **d)
    log.info("packed %s: %.1f MB", path, path.stat().st_size / 1e6)
    return path


def load_npz(path: str | os.PathLike, check_splits: bool = True) -> tuple[dict[str, LabeledArrays], np.ndarray]:
    """-> ({'busi': LabeledArrays, 'busbra': LabeledArrays}, video pool uint8 (M, S, S)).

    With check_splits, a file packed from other split files than the committed ones is an
    error (its folds would be stale). Build an SSL pool with `pool_from_packed`."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"packed data {path} not found; create it with train.data.save_npz")
    try:
        with np.load(path, allow_pickle=False) as d:
            out = {ds: _from_dict(d, f"{ds}/") for ds in DATASETS}
            pool = np.asarray(d["pool/video"])
            hashes = {ds: str(d[f"{ds}/split_sha256"]) for ds in DATASETS}
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"packed data {path} unreadable or incomplete: {exc}") from exc
    if check_splits:
        for ds, h in hashes.items():
            if h != split_hash(ds):
                raise ConfigError(f"{path}: {ds} packed with split sha256 {h[:12]}, committed split is {split_hash(ds)[:12]}; repack")
    return out, pool


def pool_from_packed(arrays: dict[str, LabeledArrays], video: np.ndarray, exclude: str | None) -> np.ndarray:
    """The unlabeled_pool equivalent from a packed file: other dataset(s) + video frames.
    (Only split-kept images are packed, so BUSI's 20 dropped images are absent here.)"""
    parts = [a.images for ds, a in arrays.items() if ds != exclude] + [video]
    return np.concatenate(parts)
