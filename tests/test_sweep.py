"""The simulated probe sweep: determinism, labels, true ROI, folder layouts, threaded source."""

from __future__ import annotations

import time
from collections import Counter

import cv2
import numpy as np
import pytest

from streamcad.errors import ConfigError, SourceError
from streamcad.sources import SourceState, open_source
from streamcad.sources.sweep import SAMPLE_DIR, SweepRenderer, load_image_list

SMALL = dict(screen=(480, 360), fps=10.0, dwell_s=1.0, transition_s=0.5)


def test_sample_folder():
    items = load_image_list(SAMPLE_DIR)
    assert len(items) == 24
    assert Counter(label for _, label in items) == {"benign": 12, "malignant": 12}
    assert sum(p.stat().st_size for p in SAMPLE_DIR.rglob("*") if p.is_file()) < 1.5e6
    assert (SAMPLE_DIR / "LICENSE.txt").is_file() and "Gómez-Flores" in (SAMPLE_DIR / "README.md").read_text()


@pytest.mark.parametrize("sector", ["linear", "curved"])
def test_deterministic(sector):
    a = SweepRenderer(SAMPLE_DIR, seed=3, sector=sector, **SMALL)
    b = SweepRenderer(SAMPLE_DIR, seed=3, sector=sector, **SMALL)
    c = SweepRenderer(SAMPLE_DIR, seed=4, sector=sector, **SMALL)
    for i in (0, 7, 13, 101):
        fa, fb = a.render(i), b.render(i)
        assert fa.image.shape == (360, 480) and fa.image.dtype == np.uint8
        assert np.array_equal(fa.image, fb.image) and fa.label == fb.label and fa.index == i
        assert not np.array_equal(fa.image, c.render(i).image)
    assert a.segment(5) == a.segment(5 + a.period) and a.label(5) == a.label(5 + a.period)
    # speckle decorrelates between frames, the anatomy does not
    x, y, w, h = a.roi
    s1 = a.render(2).image[y:y + h, x:x + w].astype(np.float32)
    s2 = a.render(3).image[y:y + h, x:x + w].astype(np.float32)
    assert not np.array_equal(s1, s2)
    blur = lambda s: cv2.GaussianBlur(s, (0, 0), 4)  # noqa: E731
    assert np.corrcoef(blur(s1).ravel(), blur(s2).ravel())[0, 1] > 0.8


@pytest.mark.parametrize("sector", ["linear", "curved"])
def test_roi_is_the_true_sector_box(sector):
    r = SweepRenderer(SAMPLE_DIR, seed=0, sector=sector, **SMALL)
    f = r.render(3)  # mid-dwell
    x, y, w, h = f.roi
    assert f.roi == r.roi and 0 < x and x + w < 480 and 0 < y and y + h < 360
    changed = f.image != r._template  # the sector is the only place the image differs
    changed[: y - 5] = False  # ...apart from the running clock at the top
    ys, xs = np.nonzero(changed)
    assert (xs.min(), ys.min()) >= (x, y) and (xs.max(), ys.max()) <= (x + w - 1, y + h - 1)
    assert xs.min() - x <= 2 and ys.min() - y <= 2 and x + w - 1 - xs.max() <= 2 and y + h - 1 - ys.max() <= 2
    inside = f.image[y:y + h, x:x + w]
    if sector == "curved":  # fan corners are background, the centre line is image
        assert inside[0, 0] == 10 and inside[0, w - 1] == 10
        assert inside[:, w // 2].mean() > 20
    else:
        assert inside.mean() > 20


def test_labels_follow_the_image_shown():
    r = SweepRenderer(SAMPLE_DIR, seed=1, **SMALL)
    seg = r.segment_frames  # 15 frames: 10 dwell, 5 transition
    assert seg == 15 and r.period == 24 * 15 == len(r)
    labels = []
    for i in range(r.period):
        cur, nxt, a = r.segment(i)
        f_label = r.render(i).label if i % 7 == 0 else r.label(i)
        assert f_label == r.items[nxt if a >= 0.5 else cur][1]
        labels.append(f_label)
    assert Counter(labels) == {"benign": 12 * 15, "malignant": 12 * 15}
    # the order is a seeded permutation: every image is shown once per pass
    assert sorted(r.segment(k * seg)[0] for k in range(24)) == list(range(24))


def test_folder_layouts(tmp_path):
    img = np.full((64, 80), 120, np.uint8)
    for cls in ("benign", "malignant", "normal"):
        (tmp_path / "busi" / cls).mkdir(parents=True)
        for k in range(2):
            cv2.imwrite(str(tmp_path / "busi" / cls / f"{cls} ({k}).png"), img)
            cv2.imwrite(str(tmp_path / "busi" / cls / f"{cls} ({k})_mask.png"), img)
    items = load_image_list(tmp_path / "busi")
    assert len(items) == 6 and all("_mask" not in p.name for p, _ in items)
    assert Counter(lab for _, lab in items) == {"benign": 2, "malignant": 2, "normal": 2}
    (tmp_path / "bra" / "Images").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "bra" / "Images" / "bus_0001-l.png"), img)
    (tmp_path / "bra" / "bus_data.csv").write_text("ID,Case,Pathology\nbus_0001-l,1,malignant\n")
    assert [(p.name, lab) for p, lab in load_image_list(tmp_path / "bra")] == [("bus_0001-l.png", "malignant")]
    with pytest.raises(SourceError, match="no such image folder"):
        load_image_list(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        load_image_list(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "labels.csv").write_text("file,label\nmissing.png,benign\n")
    with pytest.raises(SourceError, match="missing"):
        load_image_list(tmp_path / "bad")
    r = SweepRenderer([(img, "normal"), (img + 50, "benign")], **SMALL)
    assert r.render(0).label in ("normal", "benign")
    with pytest.raises(ConfigError, match="sector"):
        SweepRenderer(SAMPLE_DIR, sector="phased")


def test_real_dataset_layouts(busi_dir, busbra_dir):
    busi = load_image_list(busi_dir)
    assert len(busi) == 780 and Counter(lab for _, lab in busi) == {"benign": 437, "malignant": 210, "normal": 133}
    bra = load_image_list(busbra_dir)
    assert len(bra) == 1449 and Counter(lab for _, lab in bra) == {"benign": 1001, "malignant": 448}
    f = SweepRenderer(busi_dir, seed=0, **SMALL).render(0)
    assert f.label in ("benign", "malignant", "normal")


def test_sweep_source_threaded():
    src = open_source("sweep:", pace="none", loop=False, seed=2, **SMALL)
    frames = []
    with src:
        assert src.info.backend == "sweep" and (src.info.width, src.info.height) == (480, 360)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            f = src.read(timeout=0.5)
            if f is not None:
                frames.append(f)
            elif src.ended:
                break
        stats = src.stats
    assert src.state is SourceState.ENDED
    r = src.renderer
    assert stats.frames_grabbed == r.period and frames[-1].index == r.period - 1
    for f in frames[::25]:
        ref = r.render(f.index)
        assert np.array_equal(f.image, ref.image) and f.label == ref.label and f.roi == ref.roi


def test_sweep_native_pace():
    with open_source("sweep:sample", pace="native", **SMALL) as src:  # 10 fps
        t0 = time.monotonic()
        time.sleep(0.5)
        grabbed, elapsed = src.stats.frames_grabbed, time.monotonic() - t0
        assert src.read(timeout=1.0) is not None
    assert 1 <= grabbed <= elapsed * 10 + 2
