"""ScannerAugment's two optional parts (docs/TRAINING.md, "Addendum: scale and TrivialAugment"):
zooming out (crop area > 1) and the TrivialAugment-style grey-level ops, checked against PIL's
ImageOps / ImageEnhance where PIL defines the op."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")
from PIL import ImageEnhance, ImageOps  # noqa: E402

from streamcad.errors import ConfigError  # noqa: E402
from streamcad.train.augment import TRIVIAL_OPS, ScannerAugment, trivial_op, trivial_photometric  # noqa: E402


def _grey(seed: int, n: int = 4, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(20, 200, (n, 1, 1, 1))  # a different grey level per image
    return np.clip(base + rng.normal(0, 25, (n, 1, size, size)), 0, 255).astype(np.uint8)


def _ops(x: torch.Tensor, name: str, u: float) -> torch.Tensor:
    n = x.shape[0]
    return trivial_op(x, torch.full((n,), TRIVIAL_OPS.index(name)), torch.full((n,), u))


def _pil(a: np.ndarray, fn) -> np.ndarray:
    return np.stack([np.asarray(fn(Image.fromarray(img[0])))[None] for img in a])


@pytest.mark.parametrize("name, u, fn", [
    ("equalize", 0.5, ImageOps.equalize),
    ("posterize", 0.2, lambda im: ImageOps.posterize(im, 3)),  # 2 + floor(7 * 0.2) = 3 bits
    ("posterize", 0.99, lambda im: ImageOps.posterize(im, 8)),
    ("solarize", 0.5, lambda im: ImageOps.solarize(im, 128)),
    ("brightness", 0.25, lambda im: ImageEnhance.Brightness(im).enhance(0.01 + 1.98 * 0.25)),
    ("sharpness", 0.9, lambda im: ImageEnhance.Sharpness(im).enhance(0.01 + 1.98 * 0.9)),
])
def test_trivial_ops_match_pil(name, u, fn):
    a = _grey(1)
    got = _ops(torch.from_numpy(a).float() / 255, name, u).numpy() * 255
    want = _pil(a, fn).astype(np.float64)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # PIL leaves sharpness' border pixels as they are
    diff = np.abs(got - want)[inner] if name == "sharpness" else np.abs(got - want)
    tol = 2.0 if name == "sharpness" else 1.0  # PIL rounds its smoothed image to uint8 before blending
    assert diff.max() <= tol + 1e-4, f"{name}: max |ours - PIL| = {diff.max():.2f} grey levels"


def test_equalize_flattens_the_histogram_and_keeps_a_flat_image():
    a = _grey(2, n=2)
    a[1] = 77  # one grey level only: PIL leaves it unchanged
    y = _ops(torch.from_numpy(a).float() / 255, "equalize", 0.0).numpy()
    assert np.allclose(y[1] * 255, 77, atol=1e-3)
    counts = np.histogram(y[0], bins=4, range=(0, 1))[0] / y[0].size
    assert counts.min() > 0.15, counts  # a narrow input histogram spread over the whole range


def test_identity_and_autocontrast():
    x = torch.from_numpy(_grey(3)).float() / 255
    assert torch.equal(_ops(x, "identity", 0.7), x)
    y = _ops(x, "autocontrast", 0.0)
    assert torch.allclose(y.amin((1, 2, 3)), torch.zeros(4)) and torch.allclose(y.amax((1, 2, 3)), torch.ones(4))


def test_trivial_photometric_draws_every_op_and_is_seeded():
    x = torch.from_numpy(_grey(4, n=256, size=32)).float() / 255
    y1 = trivial_photometric(x, torch.Generator().manual_seed(5))
    y2 = trivial_photometric(x, torch.Generator().manual_seed(5))
    assert torch.equal(y1, y2) and 0 <= float(y1.min()) and float(y1.max()) <= 1
    changed = (y1 - x).abs().flatten(1).amax(1) > 1e-6
    assert 0.7 < float(changed.float().mean()) < 0.95  # identity is 1 of 8 ops; solarize at u > max(x) changes nothing too


def test_zoom_out_shrinks_the_whole_image_inside_black_and_keeps_the_lesion():
    S = 96
    x = torch.full((8, 1, S, S), 0.5)
    m = torch.zeros(8, 1, S, S)
    m[:, :, 4:24, 70:90] = 1  # near a corner, where a zoom-in crop would cut it
    aug = ScannerAugment(S, scale=(2.0, 2.0), max_rot_deg=0.0, flip_p=0.0, strength=0.0, overlay_p=0.0)
    y, mm = aug(x, m, torch.Generator().manual_seed(0))
    lit = (y > 0.25).flatten(1).float().mean(1)  # the image's share of the view
    assert torch.allclose(lit, torch.full((8,), 0.5), atol=0.03)  # area 2: the image fills half the view
    assert torch.allclose(mm.flatten(1).sum(1), m.flatten(1).sum(1) / 2, rtol=0.1)  # the whole lesion, half the pixels
    # ... and not the flip-only whole view the lesion check falls back to when a crop cuts the lesion
    assert float((y < 0.25).float().mean()) > 0.4


def test_default_scale_never_zooms_out_and_bad_scales_are_refused():
    x = torch.full((32, 1, 64, 64), 0.5)
    y, _ = ScannerAugment(64, strength=0.0, overlay_p=0.0, max_rot_deg=0.0)(x, torch.zeros_like(x), torch.Generator().manual_seed(0))
    assert float(y.min()) > 0.45  # no black (bilinear edge sampling aside): every crop lies inside the image
    with pytest.raises(ConfigError, match="crop scale"):
        ScannerAugment(64, scale=(1.2, 0.7))
