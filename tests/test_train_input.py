"""train.common's model input (to_unit, normalise, model_input) against the runtime's
streamcad.preprocess, the contract, on the repo's real sample images: the same letterboxed
pixels, the same formula, at most 2 ulp (of 1 / std) apart (the runtime fuses (x / 255 - mean) / std into
one multiply-add; training divides twice, exactly as it did before these helpers)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from streamcad.errors import ConfigError
from streamcad.preprocess import PreprocessSpec, letterbox, preprocess

torch = pytest.importorskip("torch")

from streamcad.nets import IMAGENET_GRAY  # noqa: E402
from streamcad.train.common import model_input, normalise, to_unit  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "streamcad" / "data" / "sample" / "images"
SPECS = (PreprocessSpec(size=160, mean=IMAGENET_GRAY[0], std=IMAGENET_GRAY[1]), PreprocessSpec(size=160))


def _ulps(a: np.ndarray, b: np.ndarray, spec: PreprocessSpec) -> float:
    """Largest |a - b| in float32 units of the last place of 1 / std, the scale of the terms
    (relative to the result itself it is unbounded where x / 255 - mean cancels to ~0)."""
    return float(np.max(np.abs(a.astype(np.float64) - b)) / np.spacing(np.float32(1.0 / spec.std)))


@pytest.mark.parametrize("spec", SPECS, ids=("imagenet_gray", "identity"))
def test_model_input_is_the_runtime_preprocess_within_2_ulp_on_real_images(spec):
    paths = sorted(SAMPLE.glob("*.png"))[:6]
    assert len(paths) == 6
    imgs = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]
    boxed = np.stack([letterbox(im, spec.size) for im in imgs])  # (B, S, S) uint8, what train.data stores
    x = model_input(torch.from_numpy(boxed), spec).numpy()  # (B, 1, S, S)
    runtime = np.stack([preprocess(im, spec) for im in imgs])  # (B, 1, S, S)
    assert x.shape == runtime.shape == (6, 1, spec.size, spec.size) and x.dtype == np.float32
    assert _ulps(x, runtime, spec) <= 2
    # bit-identical to what cv / finetune / ssl computed inline before the helper
    inline = ((torch.from_numpy(boxed).unsqueeze(1).float() / 255.0 - spec.mean) / spec.std).numpy()
    assert np.array_equal(x, inline)
    # the two halves (augmentation runs between them) give the same bits as the whole
    assert np.array_equal(normalise(to_unit(torch.from_numpy(boxed)), spec).numpy(), x)


def test_every_pixel_value_is_within_2_ulp_of_the_runtime():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)  # all of them, as a 16 x 16 image
    for spec in SPECS:
        spec = PreprocessSpec(size=16, mean=spec.mean, std=spec.std)
        ours = model_input(torch.from_numpy(values[None]), spec).numpy()[0]
        assert _ulps(ours, preprocess(values, spec), spec) <= 2


def test_to_unit_refuses_what_is_not_uint8_images():
    with pytest.raises(ConfigError, match=r"torch.float32 of shape \(2, 8, 8\); expected uint8 \(B, S, S\)"):
        to_unit(torch.zeros(2, 8, 8))
    with pytest.raises(ConfigError, match=r"shape \(2, 1, 8, 8\); expected uint8"):
        to_unit(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
