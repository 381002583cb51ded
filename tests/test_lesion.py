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


def test_published_lesion_box_is_the_offline_one_of_the_same_frame(tmp_path):
    """The shipped model has a lesion head (manifest saliency_kind = lesion_probability): the
    'lesion' of each score equals lesion_box(saliency of model(preprocess(frame, roi))) computed
    here offline, and lies inside the ROI; the sweep's breast images show lesions in some frames."""
    from streamcad.config import config_from_dict
    from streamcad.manifest import load_model, read_manifest
    from streamcad.pipeline import DEFAULT_MODEL, Pipeline
    from streamcad.preprocess import preprocess
    from streamcad.sinks import MemorySink

    if read_manifest(DEFAULT_MODEL).saliency_kind != "lesion_probability":
        pytest.skip("the shipped model has no lesion head")
    cfg = config_from_dict({
        "source": {"uri": "sweep:", "pace": "none", "fps": 30.0, "seed": 2},
        "model": {"path": str(DEFAULT_MODEL), "threads": 1},
        "frames": 200, "dashboard": False,  # the sweep reaches its first lesion after ~130 frames
    })
    kept = MemorySink(wants_frames=True)
    with Pipeline(cfg, sinks=[kept]) as pipe:
        pipe.run_sequential()
    images = {i: img for i, _, img in kept.frames}
    with load_model(DEFAULT_MODEL, intra_op_threads=1) as model:
        seen = 0
        for sc in kept.scores:
            if sc.probs is None:
                assert sc.lesion is None  # flagged frames carry no lesion
                continue
            x = preprocess(images[sc.frame_index], model.spec, tuple(sc.roi))
            sal = np.asarray(model.backend.infer(x[None])["saliency"][0, 0])
            want = lesion_box(sal, tuple(sc.roi), model.spec.size)
            if want is None:
                assert sc.lesion is None
                continue
            seen += 1
            assert tuple(sc.lesion.box) == want.box and sc.lesion.confidence == pytest.approx(want.confidence, abs=1e-5)
            rx, ry, rw, rh = sc.roi
            x0, y0, w, h = sc.lesion.box
            assert rx <= x0 and ry <= y0 and x0 + w <= rx + rw and y0 + h <= ry + rh
    assert seen >= 5
