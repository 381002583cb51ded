"""Near-duplicate grouping for BUSI (no patient ids, so duplicates are the leakage unit).

    gray images --thumbnail 32x32 block mean--> (N, 1024) float32 --pairwise MAD--> (N, N)
                --DCT pHash 63 bits-----------> (N, 63) bool   --pairwise Hamming--> (N, N)
    pair rule: MAD < mad_threshold  OR  (MAD < mad_loose AND Hamming <= phash_threshold)
    pairs --union-find--> group id per image

The two-feature rule: the block-mean MAD alone (the curator's feature) misses same-lesion
pairs that differ by gain; loosening MAD alone pulls in unrelated dark images of different
classes. A pHash agreement gates the looser MAD band. Thresholds were tuned against the
curator's BUSI/near_duplicate_pairs.csv and the extra pairs checked by eye (docs/DATA.md).
Exact duplicates are found separately by hashing the decoded pixels.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "DedupConfig",
    "thumbnails",
    "phashes",
    "near_duplicate_pairs",
    "union_find_groups",
    "exact_duplicates",
    "pixel_hash",
    "pair_agreement",
    "read_curator_pairs",
]


@dataclass(frozen=True)
class DedupConfig:
    thumb: int = 32  # thumbnail side: block means over ~17x15 px of a BUSI image
    mad_threshold: float = 16.0  # grey levels; below this a pair is a duplicate on its own
    mad_loose: float = 20.0  # up to here a pair needs pHash agreement too
    phash_threshold: int = 12  # of 63 bits; <= 12 had no false positive among curator pairs


def thumbnails(images: list[np.ndarray], size: int = 32) -> np.ndarray:
    """Gray uint8 images -> block-mean thumbnails float32 (N, size*size)."""
    th = [cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images]
    return np.stack(th).astype(np.float32).reshape(len(images), -1)  # (N, size*size)


def phashes(images: list[np.ndarray]) -> np.ndarray:
    """DCT perceptual hash: 8x8 low frequencies of a 32x32 thumbnail minus DC, thresholded at
    their median -> bool (N, 63)."""
    out = np.empty((len(images), 63), bool)
    for k, im in enumerate(images):
        t = cv2.resize(im, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
        d = cv2.dct(t)[:8, :8].ravel()[1:]  # (63,)
        out[k] = d > np.median(d)
    return out


def _pairwise_mad(th: np.ndarray) -> np.ndarray:
    n = len(th)
    out = np.empty((n, n), np.float32)
    for i in range(0, n, 64):  # chunks keep memory at 64 x N x D floats
        out[i : i + 64] = np.abs(th[i : i + 64, None, :] - th[None, :, :]).mean(-1)
    return out


def near_duplicate_pairs(images: list[np.ndarray], cfg: DedupConfig | None = None) -> list[tuple[int, int]]:
    """Indices (i < j) of near-duplicate image pairs under the two-feature rule."""
    cfg = cfg or DedupConfig()
    mad = _pairwise_mad(thumbnails(images, cfg.thumb))  # (N, N)
    h = phashes(images).astype(np.int16)  # (N, 63)
    ham = h @ (1 - h).T + (1 - h) @ h.T  # (N, N) Hamming distance
    hit = (mad < cfg.mad_threshold) | ((mad < cfg.mad_loose) & (ham <= cfg.phash_threshold))
    i, j = np.nonzero(np.triu(hit, 1))
    return list(zip(i.tolist(), j.tolist(), strict=True))


def union_find_groups(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Connected components of the pair graph -> int64 (n,) group ids numbered 0.. in order of
    first appearance (so ids are stable for a fixed image order)."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = [find(a) for a in range(n)]
    remap: dict[int, int] = {}
    return np.array([remap.setdefault(r, len(remap)) for r in roots], np.int64)


def pixel_hash(image: np.ndarray) -> str:
    """sha256 of the decoded pixels and shape (format-independent identity)."""
    h = hashlib.sha256(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def exact_duplicates(images: list[np.ndarray]) -> list[list[int]]:
    """Sets (size >= 2) of indices whose decoded pixels are identical."""
    by: dict[str, list[int]] = {}
    for k, im in enumerate(images):
        by.setdefault(pixel_hash(im), []).append(k)
    return [v for v in by.values() if len(v) > 1]


def read_curator_pairs(path: str | Path) -> set[frozenset[str]]:
    """BUSI/near_duplicate_pairs.csv -> set of {image_id_a, image_id_b} (ids without .png)."""
    with open(path, newline="") as f:
        return {frozenset((r["file_a"][:-4], r["file_b"][:-4])) for r in csv.DictReader(f)}


def pair_agreement(found: set[frozenset[str]], reference: set[frozenset[str]]) -> dict[str, float]:
    """Pair-level recall and precision of `found` against `reference`."""
    tp = len(found & reference)
    return {
        "found": len(found),
        "reference": len(reference),
        "true_positive": tp,
        "recall": tp / max(1, len(reference)),
        "precision": tp / max(1, len(found)),
    }
