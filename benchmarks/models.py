"""The models the benchmarks run: random-init checkpoints of each size, exported to ONNX, cached.

    build_model(name) (torch.manual_seed(0): latency does not depend on the weights)
      --plain-dict checkpoint (kind 'classifier', model_config, model, preprocess, temperature 1)
      --> CACHE/NAME-S-ckpt.pt + NAME-S-ckpt.json   (manifest: the torch backend loads it)
      --engines.export.export_checkpoint (checker + ORT-vs-torch parity on real sample frames)
      --> CACHE/NAME-S.onnx + NAME-S.json            (the same weights for ONNX Runtime)

The shipped model (engines/models/default.onnx) is used as is when it exists; it has no
checkpoint beside it, so torch rows use the random-init model of the same name instead.
torch is imported only when a model has to be built.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from streamcad.errors import ArtifactError

__all__ = ["BenchModel", "ensure_model", "shipped_model", "DEFAULT_CACHE", "SAMPLE_IMAGES"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO / "runs" / "bench-models"
SAMPLE_IMAGES = REPO / "streamcad" / "data" / "sample" / "images"
SHIPPED = REPO / "engines" / "models" / "default.onnx"


@dataclass(frozen=True)
class BenchModel:
    name: str  # 'tiny' | 'small' | 'base' | 'resnet18' | 'default'
    size: int  # input S
    onnx: Path
    checkpoint: Path | None  # None for the shipped ONNX (no checkpoint ships with it)
    random_init: bool

    def to_dict(self) -> dict:
        return {"name": self.name, "size": self.size, "onnx": str(self.onnx),
                "checkpoint": str(self.checkpoint) if self.checkpoint else None, "random_init": self.random_init}


def ensure_model(name: str, size: int = 160, cache: str | Path = DEFAULT_CACHE) -> BenchModel:
    """Checkpoint + ONNX (+ manifests) for model `name` at input `size`, built once into `cache`."""
    cache = Path(cache)
    stem = f"{name}-{size}"
    onnx_path, ckpt_path = cache / f"{stem}.onnx", cache / f"{stem}-ckpt.pt"
    have = all(p.is_file() for p in (onnx_path, onnx_path.with_suffix(".json"), ckpt_path, ckpt_path.with_suffix(".json")))
    if not have:
        _build(name, size, onnx_path, ckpt_path)
    return BenchModel(name=name, size=size, onnx=onnx_path, checkpoint=ckpt_path, random_init=True)


def shipped_model(size: int = 160, cache: str | Path = DEFAULT_CACHE) -> BenchModel:
    """engines/models/default.onnx when it exists, else the random-init 'tiny' at `size`."""
    if SHIPPED.is_file():
        from streamcad.manifest import read_manifest

        m = read_manifest(SHIPPED)
        return BenchModel(name="default", size=m.input_size, onnx=SHIPPED, checkpoint=None, random_init=False)
    return ensure_model("tiny", size, cache)


def _build(name: str, size: int, onnx_path: Path, ckpt_path: Path) -> None:
    import torch

    from streamcad.engines.export import export_checkpoint
    from streamcad.manifest import write_manifest
    from streamcad.preprocess import PreprocessSpec
    from streamcad.train.model import build_model

    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(name).eval()
    spec = PreprocessSpec(size=size)
    ckpt = {
        "kind": "classifier",
        "model_config": dict(model.model_config),
        "model": model.state_dict(),
        "preprocess": spec.to_dict(),
        "epoch": 0,
        "optimizer": None,
        "metrics": {},
        "train_config": {"note": "random init for benchmarks: latency does not depend on the weights"},
        "temperature": 1.0,
    }
    tmp = ckpt_path.with_suffix(".pt.tmp")
    torch.save(ckpt, tmp)
    tmp.replace(ckpt_path)
    write_manifest(
        ckpt_path,
        input={"name": "input", "shape": ["N", 1, size, size], "dtype": "float32"},
        preprocess=spec,
        precision="fp32",
        notes={"random_init": True},
    )
    try:
        export_checkpoint(ckpt_path, onnx_path, images_dir=SAMPLE_IMAGES if SAMPLE_IMAGES.is_dir() else None, n_frames=16)
    except ArtifactError:
        log.exception("export of the benchmark model %s failed", name)
        raise
    log.info("benchmark model %s S=%d -> %s", name, size, onnx_path)
