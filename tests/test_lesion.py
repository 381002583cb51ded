"""streamcad.lesion: lesion-probability map -> box in frame pixels, through the real letterbox."""

import cv2
import numpy as np
import pytest

from streamcad.lesion import input_to_frame, lesion_box
from streamcad.preprocess import letterbox

S = 160


def _map_of(frame_mask: np.ndarray, roi, grid: int = 20) -> np.ndarray:
    """What an ideal lesion head would output: the ROI crop's mask, letterboxed, area-averaged to the grid."""
    x, y, w, h = roi
    lb = letterbox(frame_mask[y:y + h, x:x + w], S).astype(np.float32) / 255.0
    return cv2.resize(lb, (grid, grid), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("roi", [(100, 40, 600, 400), (30, 10, 300, 500), (0, 0, 640, 480)])
def test_box_recovers_a_lesion_in_frame_pixels(roi):
    frame = np.zeros((600, 800), np.uint8)
    x, y, w, h = roi
    lx, ly, lw, lh = x + w // 3, y + h // 2, w // 4, h // 5  # the lesion, inside the ROI
    frame[ly:ly + lh, lx:lx + lw] = 255
    box = lesion_box(_map_of(frame, roi), roi, S)
    assert box is not None
    cell = max(w, h) / 20  # one grid cell in frame pixels: the map's resolution
    bx, by, bw, bh = box.box
    assert abs(bx - lx) <= cell and abs(by - ly) <= cell
    assert abs((bx + bw) - (lx + lw)) <= cell and abs((by + bh) - (ly + lh)) <= cell
    assert 0.5 <= box.confidence <= 1.0


def test_largest_component_wins_and_confidence_is_its_max():
    prob = np.zeros((20, 20), np.float32)
    prob[2:4, 2:4] = 0.9  # small, confident
    prob[10:16, 8:15] = 0.6  # large
    prob[12, 10] = 0.8
    box = lesion_box(prob, (0, 0, 160, 160), S)
    assert box.box == (64, 80, 56, 48)  # cells 8..14 x 10..15, 8 px per cell
    assert box.confidence == pytest.approx(0.8)


def test_no_lesion_gives_none_and_bad_maps_are_refused():
    assert lesion_box(np.full((20, 20), 0.49, np.float32), (0, 0, 100, 100), S) is None
    with pytest.raises(ValueError, match="finite"):
        lesion_box(np.full((20, 20), np.nan), (0, 0, 100, 100), S)


def test_input_to_frame_inverts_the_letterbox_of_a_wide_roi():
    roi = (50, 20, 400, 200)  # letterboxed: scale 0.4, 80 px tall, top pad 40
    assert input_to_frame(0, 40, roi, S) == pytest.approx((50, 20))
    assert input_to_frame(160, 120, roi, S) == pytest.approx((450, 220))
