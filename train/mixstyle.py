"""MixStyle: mix the feature statistics of two images during training (Zhou, Yang, Qiao, Xiang,
"Domain Generalization with MixStyle", ICLR 2021).

A CNN's early feature maps carry an image's "style" in their per-channel mean and standard
deviation (for ultrasound: gain, dynamic range, speckle texture, the scanner's processing) and its
content in the normalised map. With probability p per batch and insertion point, each image's
statistics are replaced by a convex mix of its own and another image's of the batch:

    mu, sigma      = mean / std over (H, W) of x (B, C, H, W), per image and channel (no gradient)
    lambda         ~ Beta(alpha, alpha) per image
    x'             = (x - mu) / sigma * (lambda sigma + (1 - lambda) sigma[perm]) + (lambda mu + (1 - lambda) mu[perm])

so the layers above see styles between those of the training images (between scanners, when a
batch mixes datasets) with the content unchanged. Training only: `attach` registers forward hooks
that act only while the model is in training mode, so evaluation, export and the runtime run the
unchanged network (nothing of it is in the checkpoint or the ONNX graph).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from streamcad.errors import ConfigError

__all__ = ["MixStyle", "attach", "mix_statistics"]


def mix_statistics(x: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x (B, C, H, W), lam (B,), perm (B,) -> x with each image's per-channel mean and std replaced
    by lam * its own + (1 - lam) * those of image perm[i]."""
    if x.dim() != 4 or lam.shape != (x.shape[0],) or perm.shape != (x.shape[0],):
        raise ConfigError(f"mix_statistics: x {tuple(x.shape)} (B, C, H, W), lam {tuple(lam.shape)} and perm "
                          f"{tuple(perm.shape)} (B,) expected")
    mu = x.mean(dim=(2, 3), keepdim=True).detach()
    sig = (x.var(dim=(2, 3), keepdim=True) + eps).sqrt().detach()
    lam = lam.to(x.dtype).view(-1, 1, 1, 1)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return (x - mu) / sig * sig_mix + mu_mix


class MixStyle:
    """The draws of one run: per call, with probability p, a Beta(alpha, alpha) weight per image
    and a random partner (a permutation of the batch) from a numpy Generator the caller reseeds
    (per epoch, so a resumed run draws what an uninterrupted one would)."""

    def __init__(self, p: float = 0.5, alpha: float = 0.1):
        if not 0 < p <= 1 or alpha <= 0:
            raise ConfigError(f"MixStyle p={p} (0..1] and alpha={alpha} (> 0) expected")
        self.p, self.alpha = p, alpha
        self.rng = np.random.default_rng(0)

    def reseed(self, seed: list[int] | int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        if B < 2 or self.rng.random() >= self.p:
            return x
        lam = torch.from_numpy(self.rng.beta(self.alpha, self.alpha, B))
        perm = torch.from_numpy(self.rng.permutation(B))
        return mix_statistics(x, lam, perm)


def attach(model: nn.Module, modules: list[nn.Module], mix: MixStyle) -> list:
    """Mix the outputs of `modules` (e.g. the backbone blocks that end the stride-4/8/16 stages)
    while `model` is training; -> the hook handles (`h.remove()` detaches). The model's own
    training flag decides, not the module's: frozen blocks stay in eval mode during training."""

    def hook(_module, _inputs, output):
        return mix(output) if model.training else output

    return [m.register_forward_hook(hook) for m in modules]
