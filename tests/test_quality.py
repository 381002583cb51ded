"""Quality flags on real recordings, real still images and constructed failure cases."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcad.errors import ConfigError, FrameError, StreamcadError
from streamcad.quality import FLAGS, QualityChecker, QualityConfig, speckle_density

# Sector boxes of the recordings (labelled in tests/test_roi.py).
REAL = {
    "clarius-ocular-short.mp4": (264, 87, 752, 786),
    "butterfly-ocular-phantom.mp4": (78, 203, 613, 689),
}


def hasler_chroma(bgr: np.ndarray) -> float:
    """Hasler & Suesstrunk colourfulness, the metric the sources put in Frame.chroma."""
    sub = bgr[::4, ::4]  # a strided subsample, like the sources; the statistic barely changes
    b, g, r = (sub[..., i].astype(np.float32) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _frames(path: Path, n: int | None = None):
    cap = cv2.VideoCapture(str(path))
    try:
        while n is None or n > 0:
            ok, bgr = cap.read()
            if not ok:
                return
            yield bgr
            n = None if n is None else n - 1
    finally:
        cap.release()


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_recordings_have_no_flags(video_dir: Path, name: str) -> None:
    x, y, w, h = REAL[name]
    checker = QualityChecker()
    count = 0
    for bgr in _frames(video_dir / name):
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        flags = checker.check(gray[y : y + h, x : x + w], hasler_chroma(bgr), stale=False)
        assert flags == frozenset(), (count, flags)
        count += 1
    assert count > 40


def test_repeated_frames_through_a_real_video_file_become_frozen(
    video_dir: Path, tmp_path: Path
) -> None:
    """A frozen scanner seen through a lossy capture: one frame repeated, encoded and decoded."""
    x, y, w, h = REAL["clarius-ocular-short.mp4"]
    first = next(_frames(video_dir / "clarius-ocular-short.mp4", 1))
    path = tmp_path / "frozen.mp4"
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (first.shape[1], first.shape[0])
    )
    assert writer.isOpened()
    for _ in range(20):
        writer.write(first)
    writer.release()
    n = QualityConfig().frozen_frames
    checker = QualityChecker()
    results = []
    for bgr in _frames(path):
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        results.append(
            "frozen" in checker.check(gray[y : y + h, x : x + w], hasler_chroma(bgr), False)
        )
    assert len(results) == 20
    assert results == [False] * n + [True] * (20 - n)  # frame n+1 is the n-th unchanged in a row


def test_frozen_clears_when_the_image_moves_again() -> None:
    rng = np.random.default_rng(0)
    a = (rng.rayleigh(40, (200, 200))).clip(0, 255).astype(np.uint8)
    b = (rng.rayleigh(40, (200, 200))).clip(0, 255).astype(np.uint8)
    checker = QualityChecker(QualityConfig(frozen_frames=3))
    got = [("frozen" in checker.check(a, 0.0, False)) for _ in range(5)]
    assert got == [False, False, False, True, True]
    assert "frozen" not in checker.check(b, 0.0, False)
    checker.check(b, 0.0, False)
    checker.reset()
    assert "frozen" not in checker.check(b, 0.0, False)  # counting restarts after reset


def test_blank_and_no_signal() -> None:
    checker = QualityChecker()
    assert checker.check(np.zeros((300, 400), np.uint8), 0.0, False) == {"blank"}
    assert "blank" in QualityChecker().check(np.full((300, 400), 128, np.uint8), 0.0, False)
    speckle = np.random.default_rng(1).rayleigh(40, (300, 400)).clip(0, 255).astype(np.uint8)
    assert QualityChecker().check(speckle, 0.0, True) == {"no_signal"}
    assert QualityChecker().check(speckle, 0.0, False) == frozenset()


def test_not_ultrasound_cases() -> None:
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    gradient = (xx / 640 * 255).astype(np.uint8)
    text_light = np.full((480, 640), 235, np.uint8)
    text_dark = np.zeros((480, 640), np.uint8)
    for i in range(12):
        cv2.putText(
            text_light,
            f"File  Edit  View  quarterly report {i}",
            (10, 30 + 36 * i),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.7,
            30,
            2,
        )
        cv2.putText(
            text_dark,
            f"$ ls -la /home/user/{i}",
            (10, 30 + 36 * i),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.7,
            200,
            1,
        )
    for img in (gradient, text_light, text_dark):
        assert QualityChecker().check(img, 0.0, False) == {"not_ultrasound"}
    # A colourful image: random colour blobs. Its gray version has texture, the chroma betrays it.
    rng = np.random.default_rng(2)
    bgr = cv2.resize(
        rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC
    )
    chroma = hasler_chroma(bgr)
    assert chroma > QualityConfig().chroma_max
    speckle = rng.rayleigh(40, (480, 640)).clip(0, 255).astype(np.uint8)
    assert QualityChecker().check(speckle, chroma, False) == {"not_ultrasound"}


def test_real_still_images_are_ultrasound(busbra_dir: Path, data_root: Path) -> None:
    paths = sorted((busbra_dir / "Images").glob("*.png"))[::40]
    busi = data_root / "BUSI"
    if busi.is_dir():
        paths += sorted(busi.glob("*/*).png"))[::30]
    assert len(paths) > 30
    for p in paths:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        flags = QualityChecker().check(
            cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), hasler_chroma(bgr), False
        )
        assert "not_ultrasound" not in flags and "blank" not in flags, (p.name, flags)


def test_speckle_density_separates() -> None:
    rng = np.random.default_rng(3)
    speckle = cv2.GaussianBlur(rng.rayleigh(40, (128, 128)).astype(np.float32), (3, 3), 0.7)
    flat = np.full((128, 128), 90, np.float32)
    assert speckle_density(speckle) > 0.05
    assert speckle_density(flat) == 0.0


def test_bad_input_and_config() -> None:
    checker = QualityChecker()
    with pytest.raises(FrameError, match="grayscale uint8"):
        checker.check(np.zeros((10, 10, 3), np.uint8), 0.0, False)
    with pytest.raises(FrameError, match="empty"):
        checker.check(np.zeros((0, 10), np.uint8), 0.0, False)
    with pytest.raises(FrameError, match="chroma"):
        checker.check(np.zeros((10, 10), np.uint8), float("nan"), False)
    with pytest.raises(ConfigError, match="frozen_frames"):
        QualityConfig(frozen_frames=0)
    with pytest.raises(ConfigError, match="blank_std"):
        QualityConfig(blank_std=-1.0)
    assert FLAGS == ("blank", "frozen", "no_signal", "not_ultrasound", "doppler")


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 300),
    st.integers(1, 300),
    st.sampled_from(["zeros", "full", "random"]),
    st.floats(0, 200, allow_nan=False),
    st.booleans(),
    st.integers(0, 2**31),
)
def test_random_images_never_raise(
    h: int, w: int, kind: str, chroma: float, stale: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    img = {"zeros": np.zeros((h, w), np.uint8), "full": np.full((h, w), 255, np.uint8)}.get(kind)
    if img is None:
        img = rng.integers(0, 256, (h, w), dtype=np.uint8)
    checker = QualityChecker()
    try:
        for _ in range(2):
            flags = checker.check(img, chroma, stale)
            assert flags <= set(FLAGS)
            assert ("no_signal" in flags) == stale
    except StreamcadError:
        pass
