"""The classifier checkpoint contract, one typed schema, and the one checkpoint loader.

Importing this module never imports torch: the schema is plain data, and load_checkpoint
imports torch when it is called (the torch backend, engines.export and train/ all load
checkpoints through it; train.common re-exports it next to save_checkpoint).

    train.finetune / train.cv ──save_checkpoint──► classifier.pt (a plain dict of tensors + metadata)
        ──load_checkpoint (torch.load, weights_only)──► dict ──read_classifier(ckpt, where)──► ClassifierCheckpoint
        ──► engines.export (the manifest: temperature, operating_threshold, training_data, metrics)
        ──► streamcad.backends.torch (the runtime's torch backend)

Keys (a checkpoint is a plain dict, DINO / MoCo style; this module checks the metadata, torch
code loads the weights):

    kind            'classifier'                       (an 'ssl' checkpoint has no trained head)
    model_config    {'name': registry name, ...}        streamcad.nets.build_model(**model_config)
    model           the state dict                     (checked to be a mapping here, loaded by torch)
    preprocess      PreprocessSpec.to_dict()
    temperature     calibration T > 0 (1.0 = uncalibrated): the logits are divided by it
    threshold       the validated operating threshold on p(malignant), in [0, 1], or None
    epoch, metrics, train_config, optimizer (None)      optional

The operating threshold is ``threshold`` (what both fine-tuning recipes write). Older
checkpoints carried it only as ``metrics['operating_threshold']``: that is read when
``threshold`` is absent, and a checkpoint where the two disagree is refused. Unknown keys are
refused by name: a misspelt key never silently drops a value.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from streamcad.errors import ArtifactError
from streamcad.preprocess import PreprocessSpec

__all__ = ["ClassifierCheckpoint", "read_classifier", "load_checkpoint", "KEYS", "DATA_KEYS"]

_WEIGHTS = ("model", "optimizer")  # tensors: not part of the typed metadata
# train_config entries that describe the training data (the manifest's training_data)
DATA_KEYS = ("dataset", "datasets", "data", "source", "mode", "split", "split_file", "split_sha256", "split_hash",
             "fold", "folds", "val_fold", "test_fold", "size", "label_fraction", "limit", "init", "pretrained",
             "ssl_checkpoint")


class ClassifierCheckpoint(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The metadata of a classifier checkpoint, validated (see the module docstring)."""

    kind: Literal["classifier"]
    model_config: dict[str, Any]
    preprocess: dict[str, Any]
    temperature: float
    threshold: float | None = None
    epoch: int | None = None
    metrics: dict[str, Any] = {}
    train_config: dict[str, Any] = {}

    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(dict(self.preprocess))

    @property
    def name(self) -> str:
        return str(self.model_config.get("name", ""))

    def training_data(self) -> dict:
        """What the manifest records about the data: train_config's data entries and the epoch."""
        out = {k: self.train_config[k] for k in DATA_KEYS if k in self.train_config}
        out["epoch"] = self.epoch
        return out


KEYS = (*ClassifierCheckpoint.__struct_fields__, *_WEIGHTS)


def _builtin(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy / torch scalars and small arrays in metrics
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"unsupported value of type {type(obj).__name__}")


def read_classifier(ckpt: Mapping, where: str) -> ClassifierCheckpoint:
    """Validate a loaded checkpoint dict -> ClassifierCheckpoint. ArtifactError names `where`,
    the key and what was expected."""
    if not isinstance(ckpt, Mapping):
        raise ArtifactError(f"{where}: checkpoint holds a {type(ckpt).__name__}; expected a plain dict")
    missing = [k for k in ("kind", "model_config", "model", "preprocess") if k not in ckpt]
    if missing:
        raise ArtifactError(f"{where}: checkpoint lacks {missing}; expected a classifier checkpoint "
                            "(streamcad train finetune / train cv)")
    if ckpt["kind"] != "classifier":
        raise ArtifactError(f"{where}: checkpoint kind {ckpt['kind']!r}; expected 'classifier' "
                            "(an SSL checkpoint has no trained head)")
    unknown = sorted(set(ckpt) - set(KEYS))
    if unknown:
        raise ArtifactError(f"{where}: unknown checkpoint key(s) {unknown}; expected only {sorted(KEYS)}")
    if not isinstance(ckpt["model"], Mapping):
        raise ArtifactError(f"{where}: 'model' is a {type(ckpt['model']).__name__}; expected the state dict")
    if "temperature" not in ckpt:
        raise ArtifactError(f"{where}: classifier checkpoint has no 'temperature'; expected the calibration T "
                            "(1.0 if uncalibrated)")
    meta = {k: v for k, v in ckpt.items() if k not in _WEIGHTS}
    try:
        meta = msgspec.to_builtins(meta, enc_hook=_builtin)
    except TypeError as exc:
        raise ArtifactError(f"{where}: checkpoint metadata is not plain data: {exc}") from exc
    metrics = meta.get("metrics") or {}
    legacy = metrics.get("operating_threshold") if isinstance(metrics, dict) else None
    if meta.get("threshold") is None and legacy is not None:
        meta["threshold"] = legacy
    elif legacy is not None and meta.get("threshold") != legacy:
        raise ArtifactError(f"{where}: threshold {meta.get('threshold')!r} and metrics.operating_threshold {legacy!r} "
                            "disagree; expected one operating threshold")
    try:
        info = msgspec.convert(meta, ClassifierCheckpoint)
    except msgspec.ValidationError as exc:
        raise ArtifactError(f"{where}: bad checkpoint metadata: {exc}") from exc
    if not (math.isfinite(info.temperature) and info.temperature > 0):
        raise ArtifactError(f"{where}: temperature={info.temperature!r}; expected a finite value > 0")
    if info.threshold is not None and not (math.isfinite(info.threshold) and 0.0 <= info.threshold <= 1.0):
        raise ArtifactError(f"{where}: threshold={info.threshold!r}; expected a probability in [0, 1] or None")
    if not isinstance(info.model_config.get("name"), str):
        raise ArtifactError(f"{where}: model_config {info.model_config!r} has no 'name'; expected the train.model "
                            "registry name")
    try:
        info.spec()
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{where}: bad preprocess {info.preprocess!r}: {exc}") from exc
    return info


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by train.common.save_checkpoint (any kind: classifier or ssl).
    Raises ArtifactError naming the file if it is missing, unreadable, or not a dict. torch is
    imported here, not when this module is."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"checkpoint {path} does not exist")
    try:
        # weights_only=True: plain dicts of tensors/numbers/strings only, no pickled code.
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, pickle errors, EOFError, ...
        raise ArtifactError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict):
        raise ArtifactError(f"checkpoint {path} holds a {type(ckpt).__name__}; expected a plain dict")
    return ckpt
