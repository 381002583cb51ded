"""Leak-free 5-fold splits, computed once and committed under train/splits/.

    BUSI:    images --dedup (near-duplicate groups, exact pixel hashes)--> drop exact
             cross-class duplicates and groups with conflicting labels --> StratifiedGroupKFold
             (5 folds, seed 0, groups = duplicate groups)                  --> busi_5fold.csv
    BUS-BRA: bus_data.csv (patient = Case) + the authors' 5-fold-cv.csv kFold (1..5 -> 0..4)
                                                                           --> busbra_5fold.csv

Each CSV has columns dataset,image_id,label,group,fold,reason (label = class name; dropped
images have fold=-1 and a reason). `split_hash(dataset)` is the sha256 of the committed file;
caches and checkpoints record it so that a changed split invalidates them.

Regenerate (only when the rules change; commit the result):
    python -m streamcad.train.data.splits --write [--root ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from streamcad.errors import ConfigError
from streamcad.train.data.datasets import (
    CLASSES,
    DATASETS,
    Sample,
    data_root,
    load_samples,
    read_gray,
)
from streamcad.train.data.dedup import (
    DedupConfig,
    exact_duplicates,
    near_duplicate_pairs,
    pair_agreement,
    read_curator_pairs,
    union_find_groups,
)

__all__ = [
    "N_FOLDS",
    "SEED",
    "SPLIT_DIR",
    "SplitRow",
    "busi_dedup",
    "compute_split",
    "read_split",
    "split_hash",
    "split_path",
    "write_split",
]

log = logging.getLogger(__name__)

N_FOLDS = 5
SEED = 0  # fixed: the committed files are the split; the seed only makes them reproducible
SPLIT_DIR = Path(__file__).resolve().parents[1] / "splits"
COLUMNS = ("dataset", "image_id", "label", "group", "fold", "reason")


@dataclass(frozen=True)
class SplitRow:
    dataset: str
    image_id: str
    label: str  # class name (CLASSES)
    group: str  # duplicate group (BUSI) or patient (BUS-BRA)
    fold: int  # 0..4, or -1 when dropped
    reason: str  # '' when kept


def split_path(dataset: str) -> Path:
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
    return SPLIT_DIR / f"{dataset}_5fold.csv"


def split_hash(dataset: str) -> str:
    """sha256 (hex) of the committed split file of `dataset`."""
    p = split_path(dataset)
    if not p.exists():
        raise ConfigError(f"split file {p} missing; regenerate with python -m streamcad.train.data.splits --write")
    return hashlib.sha256(p.read_bytes()).hexdigest()


def read_split(dataset: str) -> dict[str, SplitRow]:
    """The committed split of `dataset` -> {image_id: SplitRow}."""
    p = split_path(dataset)
    if not p.exists():
        raise ConfigError(f"split file {p} missing; regenerate with python -m streamcad.train.data.splits --write")
    with open(p, newline="") as f:
        rows = [SplitRow(r["dataset"], r["image_id"], r["label"], r["group"], int(r["fold"]), r["reason"])
                for r in csv.DictReader(f)]
    return {r.image_id: r for r in rows}


@lru_cache(maxsize=2)
def _busi_images(root: Path) -> tuple[tuple[Sample, ...], tuple[np.ndarray, ...]]:
    samples = tuple(load_samples("busi", root))
    return samples, tuple(read_gray(s.path) for s in samples)


@dataclass(frozen=True)
class BusiDedup:
    samples: tuple[Sample, ...]
    groups: np.ndarray  # int64 (N,) union-find group per image
    pairs: list[tuple[int, int]]
    exact_cross_class: list[list[int]]  # exact-duplicate sets spanning more than one class
    agreement: dict[str, float] | None  # vs the curator's pairs, when the file is present


def busi_dedup(root: str | os.PathLike | None = None, cfg: DedupConfig | None = None) -> BusiDedup:
    """Near-duplicate groups and exact duplicates of BUSI, plus agreement with the curator."""
    cfg = cfg or DedupConfig()
    base = data_root(root)
    samples, images = _busi_images(base.resolve())
    pairs = near_duplicate_pairs(list(images), cfg)
    groups = union_find_groups(len(samples), pairs)
    exact = [s for s in exact_duplicates(list(images)) if len({samples[k].label for k in s}) > 1]
    cur = base / "BUSI" / "near_duplicate_pairs.csv"
    agreement = None
    if cur.exists():
        found = {frozenset((samples[i].image_id, samples[j].image_id)) for i, j in pairs}
        agreement = pair_agreement(found, read_curator_pairs(cur))
    return BusiDedup(samples, groups, pairs, exact, agreement)


def _split_busi(root: str | os.PathLike | None) -> list[SplitRow]:
    from sklearn.model_selection import StratifiedGroupKFold

    d = busi_dedup(root)
    n = len(d.samples)
    gname = [f"busi_g{g:03d}" for g in d.groups]
    reason = [""] * n
    for dup in d.exact_cross_class:
        for k in dup:
            reason[k] = "exact_cross_class_duplicate"
    labels_of: dict[int, set[int]] = {}
    for k, s in enumerate(d.samples):
        labels_of.setdefault(int(d.groups[k]), set()).add(s.label)
    for k in range(n):
        if not reason[k] and len(labels_of[int(d.groups[k])]) > 1:
            reason[k] = "conflicting_labels_in_group"
    keep = np.array([r == "" for r in reason])
    idx = np.nonzero(keep)[0]
    y = np.array([d.samples[k].label for k in idx])
    g = np.array([gname[k] for k in idx])
    fold = np.full(n, -1, np.int64)
    sgkf = StratifiedGroupKFold(n_splits=N_FOLDS, shuffle=True, random_state=SEED)
    for f, (_, test) in enumerate(sgkf.split(np.zeros(len(idx)), y, g)):
        fold[idx[test]] = f
    return [
        SplitRow("busi", s.image_id, s.label_name, gname[k], int(fold[k]), reason[k])
        for k, s in enumerate(d.samples)
    ]


def _split_busbra(root: str | os.PathLike | None) -> list[SplitRow]:
    samples = load_samples("busbra", root)
    cv_path = data_root(root) / "BUS-BRA" / "5-fold-cv.csv"
    if not cv_path.exists():
        raise ConfigError(f"{cv_path} missing; expected the authors' patient-wise 5-fold file")
    with open(cv_path, newline="") as f:
        kfold = {r["ID"]: int(r["kFold"]) - 1 for r in csv.DictReader(f)}
    rows, case_fold = [], {}
    for s in samples:
        if s.image_id not in kfold:
            raise ConfigError(f"BUS-BRA {s.image_id} has no row in {cv_path}")
        f = kfold[s.image_id]
        if case_fold.setdefault(s.group, f) != f:
            raise ConfigError(f"BUS-BRA patient {s.group} sits in folds {case_fold[s.group]} and {f} of {cv_path}")
        rows.append(SplitRow("busbra", s.image_id, s.label_name, s.group, f, ""))
    return rows


def compute_split(dataset: str, root: str | os.PathLike | None = None) -> list[SplitRow]:
    """Recompute the split of `dataset` from the data (what the committed file must equal)."""
    if dataset == "busi":
        return _split_busi(root)
    if dataset == "busbra":
        return _split_busbra(root)
    raise ConfigError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")


def format_split(rows: list[SplitRow]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([r.dataset, r.image_id, r.label, r.group, r.fold, r.reason])
    return buf.getvalue()


def write_split(dataset: str, root: str | os.PathLike | None = None) -> Path:
    p = split_path(dataset)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(format_split(compute_split(dataset, root)))
    return p


def summary(dataset: str) -> dict:
    """Fold sizes per class and drop counts of the committed split."""
    rows = list(read_split(dataset).values())
    out: dict = {"dropped": {}, "folds": {}}
    for r in rows:
        if r.fold < 0:
            out["dropped"][r.reason] = out["dropped"].get(r.reason, 0) + 1
        else:
            fd = out["folds"].setdefault(r.fold, {c: 0 for c in CLASSES})
            fd[r.label] += 1
    out["groups"] = len({r.group for r in rows if r.fold >= 0})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Compute (and with --write, commit-ready write) the 5-fold splits.")
    ap.add_argument("--root", default=None)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for ds in DATASETS:
        if a.write:
            log.info("wrote %s", write_split(ds, a.root))
        log.info("%s: %s", ds, summary(ds))
    log.info("BUSI dedup vs curator: %s", busi_dedup(a.root).agreement)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
