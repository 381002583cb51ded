"""Loaders and arrays on the real data (skip cleanly without ../shared/data)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from streamcad.errors import ConfigError
from streamcad.preprocess import letterbox
from streamcad.train.data import CLASSES, data_root, load_arrays, load_samples, read_gray, read_mask


def test_busi_counts_per_class(busi_dir):
    s = load_samples("busi", busi_dir.parent)
    assert Counter(CLASSES[x.label] for x in s) == {"benign": 437, "malignant": 210, "normal": 133}
    assert sum(len(x.mask_paths) > 1 for x in s) == 17


def test_busbra_counts_and_patients(busbra_dir):
    s = load_samples("busbra", busbra_dir.parent)
    assert Counter(CLASSES[x.label] for x in s) == {"benign": 1001, "malignant": 448}
    assert len({x.group for x in s}) == 831


def test_busi_masks_are_or_merged(busi_dir):
    s = {x.image_id: x for x in load_samples("busi", busi_dir.parent)}["benign (4)"]
    img = read_gray(s.path)
    parts = [read_mask((p,), img.shape) for p in s.mask_paths]
    merged = read_mask(s.mask_paths, img.shape)
    assert len(parts) == 2 and all(p.any() for p in parts)
    np.testing.assert_array_equal(merged, parts[0] | parts[1])
    assert merged.astype(bool).sum() > max(p.astype(bool).sum() for p in parts)


def test_colour_busi_images_load_as_gray(busi_dir):
    import cv2

    rgb = [p for p in sorted((busi_dir / "benign").glob("*).png"))
           if cv2.imread(str(p), cv2.IMREAD_UNCHANGED).ndim == 3]
    assert rgb, "BUSI should hold colour files"
    assert read_gray(rgb[0]).ndim == 2


def test_load_arrays_letterboxes_like_the_runtime(busi_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMCAD_CACHE", str(tmp_path))
    a = load_arrays("busi", 32, busi_dir.parent)
    assert a.images.shape == (760, 32, 32) and a.images.dtype == np.uint8
    assert a.masks.shape == (760, 32, 32) and set(np.unique(a.masks)) <= {0, 255}
    assert a.labels.dtype == np.int64 and a.folds.dtype == np.int64 and set(a.folds.tolist()) == set(range(5))
    k = int(np.nonzero(a.ids == "benign (10)")[0][0])
    np.testing.assert_array_equal(a.images[k], letterbox(read_gray(busi_dir / "benign" / "benign (10).png"), 32))
    assert list(tmp_path.glob("busi_32_*.npz"))  # cached
    b = load_arrays("busi", 32, busi_dir.parent)  # from the cache: identical
    np.testing.assert_array_equal(a.images, b.images)
    tr, te = a.fold_split(0)
    assert not set(tr.groups) & set(te.groups)


def test_unknown_dataset_and_missing_root_raise(tmp_path):
    with pytest.raises(ConfigError, match="expected one of"):
        load_samples("busx", tmp_path)
    with pytest.raises(ConfigError, match="data root not found"):
        data_root(tmp_path / "nope")


def test_video_frames_are_sector_crops_or_a_clear_error(data_root, tmp_path):
    """read_video_frames (the OOD gate's scanner frames): a real clip gives per_clip letterboxed crops
    of the sector streamcad.roi finds (never a guessed central crop); a clip with no sector is an error."""
    import shutil

    import cv2

    from streamcad.preprocess import letterbox
    from streamcad.roi import detect_roi
    from streamcad.train.data.arrays import read_video_frames

    (tmp_path / "video").mkdir()
    clip = data_root / "video" / "bk-medical-water-phantom.mp4"
    shutil.copy(clip, tmp_path / "video" / clip.name)
    got = read_video_frames(64, root=tmp_path, per_clip=3)
    cap, frames = cv2.VideoCapture(str(clip)), []
    while (f := cap.read())[0]:
        frames.append(cv2.cvtColor(f[1], cv2.COLOR_BGR2GRAY))
    x, y, w, h = detect_roi([frames[i] for i in np.linspace(0, len(frames) - 1, 16).round().astype(int)]).as_tuple()
    assert (w, h) != frames[0].shape[::-1]  # the sector, not the whole screen
    assert got.shape == (3, 64, 64) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[0], letterbox(frames[0][y:y + h, x:x + w], 64))
    blank = tmp_path / "video" / "blank.mp4"
    vw = cv2.VideoWriter(str(blank), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    for _ in range(20):
        vw.write(np.zeros((240, 320, 3), np.uint8))
    vw.release()
    with pytest.raises(ConfigError, match="blank.mp4"):
        read_video_frames(64, root=tmp_path, per_clip=3)
