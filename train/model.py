"""The classifier, as training sees it: the networks themselves live in streamcad.nets.

The architecture (StreamcadNet, ResNet18, Lite0Net, the registry and build_model, forward_gate)
is defined once, in the runtime (streamcad/nets.py), because the runtime's torch backend runs a
training checkpoint and the runtime never imports train/ (docs/ARCHITECTURE.md, "Layers"). This
module re-exports those names for the training code and adds what only training and the
benchmarks use: model_complexity (parameters and FLOPs).

    from streamcad.train.model import build_model, model_complexity
    model = build_model("tiny")                      # == streamcad.nets.build_model("tiny")
    model_complexity(model, 160)                      # {'params': ..., 'gflops': ...}
"""

from __future__ import annotations

import torch
from torch import nn

from streamcad.nets import (
    CLASSES,
    IMAGENET_GRAY,
    LITE0_FEATURES,
    ClassifierHead,
    CrossScaleAttention,
    Lite0Net,
    ModelConfig,
    MultiScaleBlock,
    ResNet18,
    StreamcadNet,
    build_model,
    cam_saliency,
    list_models,
    register_model,
)

__all__ = [
    "CLASSES",
    "IMAGENET_GRAY",
    "LITE0_FEATURES",
    "ModelConfig",
    "MultiScaleBlock",
    "CrossScaleAttention",
    "ClassifierHead",
    "StreamcadNet",
    "ResNet18",
    "Lite0Net",
    "cam_saliency",
    "register_model",
    "build_model",
    "list_models",
    "model_complexity",
]


def model_complexity(model: nn.Module, size: int) -> dict:
    """Parameters and forward GFLOPs (FLOPs = 2 x multiply-adds, counted by
    torch.utils.flop_counter.FlopCounterMode: convs, matmuls) for one (1, 1, size, size) input."""
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 1, size, size, device=device))
    model.train(was_training)
    return {"params": int(params), "gflops": counter.get_total_flops() / 1e9}
