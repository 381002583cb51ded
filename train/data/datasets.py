"""Dataset loaders: BUSI and BUS-BRA on disk -> a list of `Sample` records (one per image).

    root/BUSI/{benign,malignant,normal}/NAME.png (+ NAME_mask*.png)  --load_busi-->   [Sample]
    root/BUS-BRA/Images/bus_XXXX-s.png + Masks/mask_XXXX-s.png       --load_busbra--> [Sample]

Only numpy, OpenCV and the standard library are needed (no torch), so splits and dedup run
anywhere. Images are always read as grayscale uint8 (16 BUSI files are colour: they are
converted with OpenCV's standard luma weights); several masks of one image are OR-merged.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from streamcad.engines.gate import busi_images, data_root  # one definition each: engines, train
from streamcad.errors import ConfigError
from streamcad.manifest import CLASS_NAMES as CLASSES

__all__ = [
    "CLASSES",
    "DATASETS",
    "Sample",
    "data_root",
    "load_samples",
    "load_busi",
    "load_busbra",
    "read_gray",
    "read_mask",
]

log = logging.getLogger(__name__)


DATASETS: tuple[str, ...] = ("busi", "busbra")


@dataclass(frozen=True)
class Sample:
    """One labelled image on disk. `group` is the leakage unit: the near-duplicate group for
    BUSI (filled in by train.data.dedup; the image id until then), the patient for BUS-BRA."""

    dataset: str  # 'busi' | 'busbra'
    image_id: str  # 'benign (1)' / 'bus_0001-l': unique within the dataset
    path: Path
    label: int  # index into CLASSES
    group: str
    mask_paths: tuple[Path, ...]

    @property
    def label_name(self) -> str:
        return CLASSES[self.label]


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as grayscale uint8 (H, W); colour files are converted (BGR luma)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ConfigError(f"cannot read image {path}; expected a readable PNG/JPEG file")
    if img.dtype != np.uint8:
        raise ConfigError(f"image {path} has dtype {img.dtype}; expected 8-bit")
    if img.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        img = cv2.cvtColor(img, code)
    return img


def read_mask(paths: tuple[Path, ...] | list[Path], shape: tuple[int, int]) -> np.ndarray:
    """OR-merge mask files into one uint8 (H, W) mask with values {0, 255}. A mask whose size
    differs from the image's is an error (it would misalign the lesion)."""
    out = np.zeros(shape, np.uint8)
    for p in paths:
        m = read_gray(p)
        if m.shape != tuple(shape):
            raise ConfigError(f"mask {p} has shape {m.shape}; expected the image's shape {tuple(shape)}")
        out |= np.where(m > 127, 255, 0).astype(np.uint8)
    return out


def _busi_masks(folder: Path, stem: str) -> tuple[Path, ...]:
    first = folder / f"{stem}_mask.png"
    paths = [first] if first.exists() else []
    k = 1
    while (folder / f"{stem}_mask_{k}.png").exists():
        paths.append(folder / f"{stem}_mask_{k}.png")
        k += 1
    return tuple(paths)


def load_busi(root: str | os.PathLike | None = None) -> list[Sample]:
    """BUSI: 780 images (benign 437, malignant 210, normal 133) with OR-merged masks.

    The image list comes from the folders themselves (files.csv is used only as a cross-check
    of the mask lists). `group` is the image id here; train.data.dedup assigns real groups."""
    base = data_root(root) / "BUSI"
    if not base.is_dir():
        raise ConfigError(f"BUSI folder not found at {base}; expected BUSI/{{benign,malignant,normal}}/")
    samples: list[Sample] = []
    for cls in ("benign", "malignant", "normal"):
        folder = base / cls
        if not folder.is_dir():
            raise ConfigError(f"BUSI class folder {folder} missing; expected benign/, malignant/, normal/")
        for p in busi_images(folder):
            masks = _busi_masks(folder, p.stem)
            if not masks:
                raise ConfigError(f"BUSI image {p} has no mask file {p.stem}_mask.png")
            samples.append(Sample("busi", p.stem, p, CLASSES.index(cls), p.stem, masks))
    meta = base / "files.csv"
    if meta.exists():  # cross-check mask counts against the curator's table
        with open(meta, newline="") as f:
            n_masks = {r["file"][:-4]: int(r["n_masks"]) for r in csv.DictReader(f)}
        bad = [s.image_id for s in samples if n_masks.get(s.image_id, len(s.mask_paths)) != len(s.mask_paths)]
        if bad:
            raise ConfigError(f"BUSI mask files disagree with files.csv n_masks for {bad[:5]}")
    return samples


def load_busbra(root: str | os.PathLike | None = None) -> list[Sample]:
    """BUS-BRA: 1,449 images (benign 1,001, malignant 448); `group` = patient (`Case`).

    The CSV's Width/Height are not used (four rows disagree with the PNGs; the image wins)."""
    base = data_root(root) / "BUS-BRA"
    meta = base / "bus_data.csv"
    if not meta.exists():
        raise ConfigError(f"BUS-BRA metadata {meta} not found; expected BUS-BRA/bus_data.csv")
    samples: list[Sample] = []
    with open(meta, newline="") as f:
        for r in csv.DictReader(f):
            iid = r["ID"]
            path = base / "Images" / f"{iid}.png"
            mask = base / "Masks" / f"{iid.replace('bus_', 'mask_')}.png"
            if r["Pathology"] not in ("benign", "malignant"):
                raise ConfigError(f"BUS-BRA {iid}: Pathology {r['Pathology']!r}; expected benign or malignant")
            if not path.exists() or not mask.exists():
                raise ConfigError(f"BUS-BRA {iid}: missing {path if not path.exists() else mask}")
            samples.append(
                Sample("busbra", iid, path, CLASSES.index(r["Pathology"]), f"case{int(r['Case']):04d}", (mask,))
            )
    return samples


def load_samples(dataset: str, root: str | os.PathLike | None = None) -> list[Sample]:
    """'busi' | 'busbra' -> list[Sample] (BUSI groups are the raw image ids: see dedup)."""
    if dataset == "busi":
        return load_busi(root)
    if dataset == "busbra":
        return load_busbra(root)
    raise ConfigError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
