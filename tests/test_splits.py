"""Committed splits: leakage-free by construction and equal to a fresh recomputation."""

from __future__ import annotations

import csv
from collections import defaultdict

import pytest

from streamcad.train.data.splits import (
    SPLIT_DIR,
    busi_dedup,
    compute_split,
    format_split,
    read_split,
    split_hash,
)


def _rows(ds):
    with open(SPLIT_DIR / f"{ds}_5fold.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("ds", ["busi", "busbra"])
def test_no_group_on_both_sides_of_any_fold(ds):
    folds_of = defaultdict(set)
    for r in _rows(ds):
        if int(r["fold"]) >= 0:
            folds_of[r["group"]].add(int(r["fold"]))
    leaks = {g: f for g, f in folds_of.items() if len(f) > 1}
    assert not leaks, f"groups in several folds: {list(leaks.items())[:5]}"
    assert {f for fs in folds_of.values() for f in fs} == {0, 1, 2, 3, 4}


def test_dropped_rows_have_reasons_and_kept_rows_none():
    for ds in ("busi", "busbra"):
        for r in _rows(ds):
            assert (int(r["fold"]) == -1) == (r["reason"] != ""), r


def test_busi_groups_with_kept_images_have_one_label():
    labels = defaultdict(set)
    for r in _rows("busi"):
        if int(r["fold"]) >= 0:
            labels[r["group"]].add(r["label"])
    assert all(len(v) == 1 for v in labels.values())


def test_split_hash_is_sha256_of_the_file():
    import hashlib

    for ds in ("busi", "busbra"):
        assert split_hash(ds) == hashlib.sha256((SPLIT_DIR / f"{ds}_5fold.csv").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def dedup(busi_dir):
    return busi_dedup(busi_dir.parent)


def test_dedup_recall_against_curator_pairs(dedup):
    a = dedup.agreement
    assert a["reference"] == 261
    assert a["recall"] >= 0.9, a
    assert a["precision"] >= 0.9, a  # extra pairs were checked by eye (docs/DATA.md)


def test_exact_cross_class_duplicate_found_and_dropped(dedup):
    ids = {frozenset(dedup.samples[k].image_id for k in s) for s in dedup.exact_cross_class}
    assert frozenset({"benign (433)", "malignant (145)"}) in ids
    split = read_split("busi")
    for iid in ("benign (433)", "malignant (145)"):
        assert split[iid].fold == -1 and split[iid].reason == "exact_cross_class_duplicate"


def test_committed_busi_split_equals_recomputation(busi_dir):
    fresh = format_split(compute_split("busi", busi_dir.parent))
    assert fresh == (SPLIT_DIR / "busi_5fold.csv").read_text()


def test_committed_busbra_split_equals_recomputation_and_authors_folds(busbra_dir):
    fresh = format_split(compute_split("busbra", busbra_dir.parent))
    assert fresh == (SPLIT_DIR / "busbra_5fold.csv").read_text()
    with open(busbra_dir / "5-fold-cv.csv", newline="") as f:
        authors = {r["ID"]: int(r["kFold"]) - 1 for r in csv.DictReader(f)}
    split = read_split("busbra")
    assert {k: r.fold for k, r in split.items()} == authors
