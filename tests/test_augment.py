"""Augmentations: exact correspondences, overlap, aligned masks, seeded determinism, overlays."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training test: needs the train extra")
import torch.nn.functional as F  # noqa: E402

from streamcad.train.augment import (  # noqa: E402
    FinetuneAugment,
    TwoViewAugment,
    add_overlays,
    blur,
    depth_gain,
    gain_gamma,
    haze,
    overlay_mask,
    remove_overlays,
    shadow,
    speckle,
    view_overlap,
)

S = 64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_theta_maps_a_known_dot_to_its_place_in_each_view():
    B = 32
    x = torch.zeros(B, 1, S, S)
    px = torch.randint(16, 48, (B,), generator=_gen(1))
    py = torch.randint(16, 48, (B,), generator=_gen(2))
    x[torch.arange(B), 0, py, px] = 1.0
    x = F.max_pool2d(x, 3, 1, 1)  # a 3x3 dot: survives bilinear sampling
    v1, v2, t1, t2 = TwoViewAugment(S, min_overlap=0.3, photometric=0.0)(x, _gen(3))
    dot = torch.stack([(px + 0.5) / S * 2 - 1, (py + 0.5) / S * 2 - 1], 1)  # normalized input coords
    checked = 0
    for v, t in ((v1, t1), (v2, t2)):
        for b in range(B):
            if v[b, 0].max() < 0.3:  # the dot is outside this view
                continue
            iy, ix = divmod(int(v[b, 0].argmax()), S)
            u = torch.tensor([(ix + 0.5) / S * 2 - 1, (iy + 0.5) / S * 2 - 1, 1.0])
            mapped = t[b] @ u  # view coords -> input coords
            err_px = ((mapped - dot[b]).abs() * S / 2).max()
            assert err_px < 1.6, (b, err_px)
            checked += 1
    assert checked >= B // 2


def test_views_overlap_at_least_min_overlap():
    t_aug = TwoViewAugment(S, min_overlap=0.5, photometric=0.0)
    _, _, t1, t2 = t_aug(torch.rand(256, 1, S, S), _gen(4))
    fine = view_overlap(t1, t2, k=96)  # finer grid than the sampler's
    assert float(fine.min()) >= 0.5
    # and the measure is right: identical views overlap 1, disjoint ones 0
    far = t1.clone()
    far[:, :, 2] += 10.0
    assert torch.allclose(view_overlap(t1, t1), torch.ones(256))
    assert float(view_overlap(t1, far).max()) == 0.0


def test_finetune_keeps_masks_aligned():
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    disk = (((xx - 28) ** 2 + (yy - 36) ** 2) < 12**2).float()
    rect = ((xx > 10) & (xx < 50) & (yy > 20) & (yy < 30)).float()
    shapes = torch.stack([disk, rect] * 8)[:, None]  # (16,1,S,S)
    aug = FinetuneAugment(S, elastic_p=1.0, photometric=0.0)
    img, m = aug(shapes.clone(), shapes.clone(), generator=_gen(5))
    assert m.shape == img.shape and set(m.unique().tolist()) <= {0.0, 1.0}
    a, b = img > 0.5, m > 0.5
    iou = (a & b).sum((1, 2, 3)).float() / (a | b).sum((1, 2, 3)).clamp_min(1).float()
    assert float(iou.min()) > 0.85, iou
    moved = (m != shapes).float().mean()
    assert moved > 0.01  # the augmentation did transform them


@pytest.mark.parametrize("op", [speckle, depth_gain, shadow, haze, gain_gamma, blur])
def test_photometric_keeps_range_shape_dtype_and_is_seeded(op):
    x = torch.rand(8, 1, S, S, generator=_gen(6))
    a = op(x, _gen(7), p=1.0)
    b = op(x, _gen(7), p=1.0)
    c = op(x, _gen(8), p=1.0)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, x)
    assert torch.equal(op(x, _gen(7), p=0.0), x)


def test_shadow_darkens_below_the_point_only():
    x = torch.full((4, 1, S, S), 0.5)
    y = shadow(x, _gen(9), p=1.0)
    assert torch.all(y <= x + 1e-6)
    assert torch.allclose(y[:, :, :4], x[:, :, :4], atol=0.02)  # above y0 >= 0.1*S: untouched


def test_depth_gain_is_row_wise():
    x = torch.full((4, 1, S, S), 0.5)
    y = depth_gain(x, _gen(10), p=1.0)
    assert torch.allclose(y, y[..., :1].expand_as(y))  # constant along each row


def test_overlay_removal_lowers_bright_mark_count():
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(90, 20, (200, 240)), 0, 255).astype(np.uint8)
    for cx, cy in ((60, 80), (180, 120)):  # two '+' calipers and a dashed line between them
        img[cy, cx - 5 : cx + 6] = 255
        img[cy - 5 : cy + 6, cx] = 255
    for t in np.linspace(0.1, 0.9, 12):
        x0, y0 = int(60 + t * 120), int(80 + t * 40)
        img[y0, x0 : x0 + 3] = 250
    before = int(overlay_mask(img).sum())
    out = remove_overlays(img)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert before >= 40
    assert int(overlay_mask(out).sum()) <= before // 10
    assert int((out >= 200).sum()) < int((img >= 200).sum()) // 5
    clean = np.clip(rng.normal(90, 10, (100, 100)), 0, 180).astype(np.uint8)
    np.testing.assert_array_equal(remove_overlays(clean), clean)


def test_add_overlays_draws_thin_bright_marks_that_removal_finds():
    x = torch.full((4, 1, 128, 128), 0.35)
    y = add_overlays(x, 1.0, _gen(11))
    assert y.shape == x.shape and float(y.max()) >= 0.85
    assert torch.equal(add_overlays(x, 0.0, _gen(11)), x)
    img = (y[0, 0].numpy() * 255).astype(np.uint8)
    drawn = int((img > 200).sum())
    assert drawn > 10
    assert int(overlay_mask(img).sum()) >= 0.7 * drawn


def test_scanner_views_are_square_unsheared_and_shadow_free():
    """The SSL views of lever 5 (`views="scanner"`): every crop is a rotated square (the two columns
    of each theta's 2x2 part orthogonal and of equal length: no aspect change, no shear), where the
    default views are not; and the photometric chain without shadows is the chain's other ops,
    draw for draw."""
    from streamcad.train.augment import Photometric, blur, depth_gain, gain_gamma, haze, speckle

    x = torch.rand(128, 1, S, S, generator=_gen(5))
    for t_aug, square in ((TwoViewAugment(S, ratio=(1.0, 1.0), max_shear=0.0, photometric=0.0), True),
                          (TwoViewAugment(S, photometric=0.0), False)):
        _, _, t1, t2 = t_aug(x, _gen(6))
        a = torch.cat([t1, t2])[:, :, :2]  # (2B, 2, 2)
        c0, c1 = a[:, :, 0], a[:, :, 1]
        aspect = (c0.norm(dim=1) / c1.norm(dim=1) - 1).abs()
        skew = (c0 * c1).sum(1).abs() / (c0.norm(dim=1) * c1.norm(dim=1))
        assert (float(aspect.max()) < 1e-5 and float(skew.max()) < 1e-5) == square
    y = torch.full((8, 1, S, S), 0.5)
    want = y
    g = _gen(9)
    for op, p in ((speckle, 0.8), (depth_gain, 0.7), (haze, 0.3), (gain_gamma, 0.8), (blur, 0.3)):
        want = op(want, g, p=p)
    got = Photometric(1.0, shadow=False)(y, _gen(9))
    assert torch.equal(got, want.clamp(0, 1))
    assert not torch.equal(Photometric(1.0)(y, _gen(9)), got)
