"""engines.gate.busi_images / busbra_images: the one listing of the BUSI and BUS-BRA layouts
that streamcad evaluate, the gate frames and train.data's loaders share, on real files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from streamcad.engines.evaluate import discover
from streamcad.engines.gate import busbra_images, busi_images


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((8, 8), 100, np.uint8))


def test_busi_class_folder_lists_images_sorted_without_masks(tmp_path):
    d = tmp_path / "benign"
    for name in ("benign (2).png", "benign (2)_mask.png", "benign (10).png", "benign (10)_mask.png",
                 "benign (10)_mask_1.png", "notes.jpg"):
        _png(d / name)
    assert busi_images(d) == [d / "benign (10).png", d / "benign (2).png"]  # sorted by path, not number
    # streamcad evaluate lists the same files, with ids and labels
    _png(tmp_path / "malignant" / "malignant (1).png")
    _png(tmp_path / "malignant" / "malignant (1)_mask.png")
    layout, paths, labels, ids = discover(tmp_path)
    assert layout == "busi" and paths == [*busi_images(d), tmp_path / "malignant" / "malignant (1).png"]
    assert ids == ["benign/benign (10)", "benign/benign (2)", "malignant/malignant (1)"]


def test_busbra_lists_images_folder_pngs_sorted(tmp_path):
    for name in ("bus_0002-l.png", "bus_0001-r.png", "bus_0001-l.png"):
        _png(tmp_path / "Images" / name)
    (tmp_path / "Images" / "readme.txt").write_text("not an image")
    _png(tmp_path / "Masks" / "mask_0001-l.png")
    assert busbra_images(tmp_path) == [tmp_path / "Images" / n for n in ("bus_0001-l.png", "bus_0001-r.png", "bus_0002-l.png")]
    assert busbra_images(tmp_path / "absent") == []
