"""The lesion zoom (streamcad/zoom.py, RecipeConfig.zoom): boxes from masks and from lesion maps, the
crop, the training batch, the manifest's `zoom`, the runtime's two looks (FrameProcessor, engines
evaluate) on the shipped ONNX graph, and one zoom run end to end: train -> export -> ONNX Runtime
scores the test images as training did."""

import numpy as np
import pytest

from streamcad.errors import ConfigError
from streamcad.zoom import (
    MARGIN,
    MIN_SIDE,
    TRAIN_MARGIN,
    box_from_map,
    box_from_mask,
    crop,
    square_box,
    zoom_views,
)


def _inside(box, size):
    x0, y0, s = box
    return 0 <= x0 and 0 <= y0 and x0 + s <= size and y0 + s <= size


def test_box_from_mask_holds_the_lesion_at_the_margin():
    mask = np.zeros((320, 320), np.uint8)
    mask[100:140, 50:110] = 255  # 60 wide, 40 tall
    x0, y0, s = box_from_mask(mask)
    assert s == round(MARGIN * 60) and x0 <= 50 and x0 + s >= 110 and y0 <= 100 and y0 + s >= 140
    rng = np.random.default_rng(0)
    for _ in range(200):
        b = box_from_mask(mask, rng)
        assert _inside(b, 320) and TRAIN_MARGIN[0] * 60 - 1 <= b[2] <= TRAIN_MARGIN[1] * 60 + 1
        x0, y0, s = b  # jitter <= 10% of the side: the lesion's centre stays well inside
        assert x0 < 80 < x0 + s and y0 < 120 < y0 + s
    corner = np.zeros((320, 320), np.uint8)
    corner[300:318, 300:318] = 255  # a lesion at the edge: the square moves inside, not cut
    b = box_from_mask(corner)
    assert _inside(b, 320) and b[2] == round(MIN_SIDE * 320) and b[0] + b[2] == 320
    assert box_from_mask(np.zeros((320, 320), np.uint8)) == (0, 0, 320)  # normal tissue: the whole view
    b = box_from_mask(np.zeros((320, 320), np.uint8), rng)
    assert _inside(b, 320) and 0.4 * 320 - 1 <= b[2] <= 0.8 * 320 + 1


def test_box_from_map_finds_the_strongest_region():
    pmap = np.full((20, 20), 0.05, np.float32)
    pmap[4:8, 12:18] = 0.9  # the lesion: cells x 12..17, y 4..7 of a 160 px view (8 px cells)
    pmap[15:17, 1:3] = 0.7  # a weaker second region elsewhere is not part of the box
    x0, y0, s = box_from_map(pmap, 160)
    assert s == round(MARGIN * 6 * 8) and x0 <= 96 and x0 + s >= 144 and y0 <= 32 and y0 + s >= 64
    assert y0 + s < 120  # the second region (y >= 120) is outside
    faint = np.full((20, 20), 0.02, np.float32)
    faint[10, 10] = 0.3  # nothing reaches 0.5: the region around the maximum at half of it
    x0, y0, s = box_from_map(faint, 160)
    assert s == round(MIN_SIDE * 160) and x0 <= 80 <= x0 + s and y0 <= 80 <= y0 + s
    with pytest.raises(ConfigError, match="square"):
        box_from_map(np.zeros((20, 10)), 160)


def test_crop_is_the_box_resampled():
    img = np.zeros((320, 320), np.uint8)
    img[100:140, 100:140] = 200
    out = crop(img, (80, 80, 80), 160)  # 2x enlargement of a box with the square in its middle
    assert out.shape == (160, 160)
    assert out[40:120, 40:120].mean() > 190 and out[:30].max() == 0
    np.testing.assert_array_equal(crop(img, (0, 0, 320), 160), img.reshape(160, 2, 160, 2).mean((1, 3)).round().astype(np.uint8))
    with pytest.raises(ConfigError, match="outside"):
        crop(img, (300, 0, 40), 160)
    assert square_box(10, 10, 1000, 320) == (0, 0, 320)
    views = zoom_views(np.stack([img, img]), [(50, 50, 20), (0, 0, 160)], 160)  # boxes in 160 px of the full view: the square, the whole
    assert views.shape == (2, 160, 160) and views[0].mean() > 190 and views[1].mean() < 50


def test_zoom_batch_replaces_its_share_with_lesion_crops():
    pytest.importorskip("torch")
    from streamcad.train.cv import zoom_batch

    rng = np.random.default_rng(0)
    hi = rng.integers(0, 255, (8, 320, 320), dtype=np.uint8)
    mhi = np.zeros((8, 320, 320), np.uint8)
    mhi[:, 140:180, 140:200] = 255
    lo = hi.reshape(8, 160, 2, 160, 2).mean((2, 4)).astype(np.uint8)
    mlo = mhi[:, ::2, ::2].copy()
    x, m = zoom_batch(lo, mlo, hi, mhi, 0.0, rng)
    np.testing.assert_array_equal(x, lo)
    np.testing.assert_array_equal(m, mlo)
    x, m = zoom_batch(lo, mlo, hi, mhi, 0.999, np.random.default_rng(1))
    assert x.shape == lo.shape and m.shape == mlo.shape
    lesion_share = (m > 127).mean((1, 2))
    assert (lesion_share > 2 * (mlo > 127).mean((1, 2))).all()  # the lesion fills more of every zoomed view
    assert set(np.unique(m)) <= {0, 255}


def test_one_zoom_run_scores_the_mean_of_both_views(tmp_path, data_root):
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    from streamcad.engines.export import export_checkpoint
    from streamcad.manifest import load_model
    from streamcad.train.cv import RecipeConfig, load_both, run, select
    from streamcad.zoom import ZoomSpec, two_view

    res = run(RecipeConfig(epochs=1, batch_size=8, zoom=0.5), "cv", tmp_path / "fold0", fold=0, limit=40)
    pred = res["predictions"]
    assert res["recipe"]["zoom"] == 0.5 and len(pred["zoom_boxes"]) == len(pred["ids"]) == res["n_test"]
    assert all(_inside(b, 160) for b in pred["zoom_boxes"])
    # the judged p is the softmax of the mean logits: the mean of the views' log-probabilities, renormalised
    lp = (np.log(np.asarray(pred["probs_full"])) + np.log(np.asarray(pred["probs_zoom"]))) / 2
    p = np.exp(lp - lp.max(1, keepdims=True))
    np.testing.assert_allclose(p / p.sum(1, keepdims=True), np.asarray(pred["probs"]), atol=1e-5)
    assert not np.allclose(pred["probs_full"], pred["probs_zoom"])
    # export: the manifest asks for the two looks, and ONNX Runtime scores them as training did
    manifest, parity = export_checkpoint(tmp_path / "fold0" / "classifier.pt", tmp_path / "z.onnx", data_root=data_root)
    assert parity.passed and manifest.zoom == ZoomSpec().to_dict() and manifest.saliency_kind == "lesion_probability"
    model = load_model(tmp_path / "z.onnx")
    assert model.zoom == ZoomSpec()
    _, test = select(load_both(160), "cv", fold=0)
    idx = {i: k for k, i in enumerate(test.ids)}
    rows = [idx[i] for i in pred["ids"][:8]]
    _, test_hi = select(load_both(320), "cv", fold=0)
    spec = model.spec
    x = ((test.images[rows].astype(np.float32) / 255 - spec.mean) / spec.std)[:, None]
    out = two_view(model.backend, x, test_hi.images[rows], spec, model.zoom)
    e = np.exp(out["logits"] - out["logits"].max(1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(1, keepdims=True), np.asarray(pred["probs"][:8]), atol=1e-4)
    assert [list(b) for b in out["zoom_boxes"]] == pred["zoom_boxes"][:8]


def test_zoom_spec_in_the_manifest_is_checked():
    from streamcad.errors import ArtifactError
    from streamcad.zoom import ZoomSpec

    assert ZoomSpec.from_dict(ZoomSpec().to_dict()) == ZoomSpec()
    for bad in ({"kind": "crop"}, {"margin": 0.5}, {"scale": 5}, {"extra": 1}, "zoom"):
        with pytest.raises(ArtifactError, match="zoom"):
            ZoomSpec.from_dict(bad, "m.json")


def _zoom_copy(tmp_path, saliency_kind="lesion_probability"):
    """The shipped graph under a manifest that asks for the zoom (resealed by write_manifest)."""
    import shutil

    from streamcad.manifest import read_manifest, write_manifest
    from streamcad.pipeline import DEFAULT_MODEL
    from streamcad.zoom import ZoomSpec

    onnx = tmp_path / "zoomed.onnx"
    shutil.copy(DEFAULT_MODEL, onnx)
    m = read_manifest(DEFAULT_MODEL).to_fields()
    write_manifest(onnx, **{**m, "zoom": ZoomSpec().to_dict(), "saliency_kind": saliency_kind})
    return onnx


def test_the_runtime_takes_two_looks_and_averages_them(tmp_path, data_root):
    """FrameProcessor and engines.evaluate.predict on a zoom manifest: the mean of the full view's
    logits and those of the crop around the lesion map's region, computed here by hand."""
    pytest.importorskip("onnxruntime")
    import cv2

    from streamcad.config import config_from_dict
    from streamcad.engines.evaluate import predict
    from streamcad.manifest import load_model
    from streamcad.pipeline import DEFAULT_MODEL
    from streamcad.preprocess import letterbox, preprocess
    from streamcad.processor import FrameProcessor
    from streamcad.sources.base import Frame

    paths = sorted((data_root / "BUSI" / "malignant").glob("malignant (1*).png"))[:3]
    if not paths:
        pytest.skip("BUSI malignant images not found")
    zoomed, single = load_model(_zoom_copy(tmp_path)), load_model(DEFAULT_MODEL)
    spec, be = single.spec, single.backend
    assert single.zoom is None and zoomed.zoom is not None
    manual = []
    for path in paths:
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        full = be.infer(preprocess(img, spec)[None])
        box = box_from_map(full["saliency"][0, 0], spec.size)
        view = crop(letterbox(img, 2 * spec.size), tuple(2 * v for v in box), spec.size)
        manual.append((full["logits"][0] + be.infer(preprocess(view, spec)[None])["logits"][0]) / 2)
    manual = np.stack(manual)
    soft = np.exp(manual - manual.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    np.testing.assert_allclose(predict(zoomed, paths), soft, atol=1e-5)
    assert not np.allclose(predict(single, paths), soft, atol=1e-3)  # the second look changes the answer

    img = cv2.imread(str(paths[0]), cv2.IMREAD_GRAYSCALE)
    h, w = img.shape
    cfg = config_from_dict({"roi": {"box": [0, 0, w, h]}, "quality": {"enabled": False}})  # the whole still is the sector
    proc = FrameProcessor(cfg, zoomed)
    item = proc.infer(proc.prepare(Frame(index=0, image=img, t_capture_ns=0)))
    assert item.roi == (0, 0, w, h)
    assert item.hi is None  # released after the second look
    np.testing.assert_allclose(item.logits, manual[0], atol=1e-5)
    np.testing.assert_allclose(item.saliency, be.infer(preprocess(img, spec)[None])["saliency"][0, 0], atol=1e-6)


def test_a_zoom_manifest_needs_the_lesion_map(tmp_path):
    from streamcad.errors import ArtifactError

    with pytest.raises(ArtifactError, match="lesion_probability"):
        _zoom_copy(tmp_path, saliency_kind="attention")
