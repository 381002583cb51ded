"""Self-supervised losses: an instance term (NT-Xent) and a dense correspondence term.

    z1, z2 (B, D)          -> InfoNCELoss             -> scalar   (SimCLR, Chen et al. 2020)
    f1 (B, C, h, w), theta1,
    f2 (B, C, h2, w2), theta2 -> DenseCorrespondenceLoss -> scalar (DenseCL, Wang et al. 2021;
                                                                 positives from geometry as in
                                                                 PixPro, Xie et al. 2021)

theta (B, 2, 3) is what torch.nn.functional.affine_grid(theta, size, align_corners=False) uses
to sample a view from the input: it maps normalized view coordinates (x, y) in [-1, 1] to
normalized input coordinates (train/augment.py TwoViewAugment returns it for each view).
All losses are computed in float32 whatever the autocast dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from streamcad.errors import ConfigError

__all__ = ["InfoNCELoss", "DenseCorrespondenceLoss", "cell_centers", "correspondence"]


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


class InfoNCELoss(nn.Module):
    """NT-Xent / InfoNCE over two views (SimCLR, Chen et al. 2020, eq. 1).

    z1, z2: (B, D) projections of view 1 and view 2 of the same B images. Each of the 2B
    embeddings has one positive (the other view of its image) and 2B - 2 negatives (all other
    embeddings in the batch); loss = mean over the 2B anchors of
    -log( exp(s_pos / t) / sum_{k != anchor} exp(s_k / t) ), s = cosine similarity.

    gather_distributed: under DDP, negatives are taken from all ranks (all_gather with gradient),
    as in SimCLR's large-batch training.

    decoupled: the decoupled contrastive loss (DCL, Yeh et al., ECCV 2022): the positive is left out
    of the denominator, -s_pos / t + log sum_{k != anchor, k != positive} exp(s_k / t). It removes
    the negative-positive coupling that makes InfoNCE's gradient vanish for easy positives at small
    batches (their Fig. 2), which is the regime of a 2-core CPU; it can be negative.
    """

    def __init__(self, temperature: float = 0.2, gather_distributed: bool = True, decoupled: bool = False):
        super().__init__()
        _check(temperature > 0, f"temperature={temperature}; expected > 0")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed
        self.decoupled = decoupled

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        _check(
            z1.ndim == 2 and z1.shape == z2.shape and z1.shape[0] >= 2,
            f"InfoNCELoss expects z1, z2 of equal shape (B, D) with B >= 2; got {tuple(z1.shape)}, {tuple(z2.shape)}",
        )
        z1 = F.normalize(z1.float(), dim=1)
        z2 = F.normalize(z2.float(), dim=1)
        B = z1.shape[0]
        offset = 0
        k1, k2 = z1, z2
        if self.gather_distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            if world > 1:
                import torch.distributed.nn.functional as dist_fn

                k1 = torch.cat(dist_fn.all_gather(z1), dim=0)  # (world * B, D)
                k2 = torch.cat(dist_fn.all_gather(z2), dim=0)
                offset = torch.distributed.get_rank() * B
        N = k1.shape[0]
        q = torch.cat([z1, z2], dim=0)  # (2B, D) anchors: local rows
        k = torch.cat([k1, k2], dim=0)  # (2N, D) keys: all rows
        logits = q @ k.t() / self.temperature  # (2B, 2N)
        rows = torch.arange(2 * B, device=q.device)
        local = torch.arange(B, device=q.device) + offset
        self_idx = torch.cat([local, local + N])  # where each anchor sits among the keys
        pos_idx = torch.cat([local + N, local])  # its other view
        self_mask = torch.zeros_like(logits, dtype=torch.bool)
        self_mask[rows, self_idx] = True  # an anchor is never its own negative
        logits = logits.masked_fill(self_mask, float("-inf"))
        if not self.decoupled:
            return F.cross_entropy(logits, pos_idx)
        positive = logits[rows, pos_idx]
        negatives = logits.masked_fill(F.one_hot(pos_idx, logits.shape[1]).bool(), float("-inf"))
        return (torch.logsumexp(negatives, dim=1) - positive).mean()


def cell_centers(h: int, w: int, device=None) -> torch.Tensor:
    """Normalized (x, y) centres of an h x w grid under align_corners=False -> (h*w, 2), row-major."""
    ys = (2 * torch.arange(h, device=device, dtype=torch.float32) + 1) / h - 1
    xs = (2 * torch.arange(w, device=device, dtype=torch.float32) + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)  # (h*w, 2) as (x, y)


def correspondence(
    theta1: torch.Tensor, theta2: torch.Tensor, size1: tuple[int, int], size2: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each cell of view 1's (h1, w1) grid, the cell of view 2's (h2, w2) grid that covers the
    same input point (known geometry, not feature similarity).

    The centre of cell i in view 1 is mapped to input coords p = theta1 [x, y, 1], then into
    view 2's coords u = A2^-1 (p - t2). It lies in view 2 when |u_x|, |u_y| <= 1; its positive is
    the view-2 cell containing u (the nearest cell centre). Returns
    idx (B, h1*w1) long (flat index into view 2's cells, 0 where invalid) and
    valid (B, h1*w1) bool (False outside the overlap: ignored by the loss).
    """
    _check(
        theta1.ndim == 3 and theta1.shape[1:] == (2, 3) and theta2.shape == theta1.shape,
        f"theta1, theta2 must both be (B, 2, 3); got {tuple(theta1.shape)}, {tuple(theta2.shape)}",
    )
    h1, w1 = size1
    h2, w2 = size2
    theta1, theta2 = theta1.float(), theta2.float()
    c = cell_centers(h1, w1, theta1.device)  # (n1, 2)
    p = c @ theta1[:, :, :2].transpose(1, 2) + theta1[:, None, :, 2]  # (B, n1, 2) input coords
    A2inv = torch.linalg.inv(theta2[:, :, :2])  # (B, 2, 2)
    u = (p - theta2[:, None, :, 2]) @ A2inv.transpose(1, 2)  # (B, n1, 2) view-2 coords
    valid = (u.abs() <= 1.0).all(dim=2)
    col = torch.floor((u[..., 0] + 1) / 2 * w2).clamp(0, w2 - 1).long()
    row = torch.floor((u[..., 1] + 1) / 2 * h2).clamp(0, h2 - 1).long()
    idx = torch.where(valid, row * w2 + col, torch.zeros_like(col))
    return idx, valid


class DenseCorrespondenceLoss(nn.Module):
    """Dense InfoNCE between corresponding cells of two views (DenseCL, Wang et al. 2021), with
    correspondences from the known view geometry (as PixPro, Xie et al. 2021) instead of
    feature similarity.

    f1 (B, C, h1, w1), f2 (B, C, h2, w2): dense projections of view 1 and view 2;
    theta1, theta2 (B, 2, 3): the views' affine_grid matrices.
    For every view-1 cell inside the overlap, the query is its feature, the positive the view-2
    cell covering the same input point, and the negatives all other view-2 cells of all images
    in the batch (B*h2*w2 - 1 of them). The loss is symmetrised (view 2 -> view 1 too) and
    averaged over valid cells. Cells outside the overlap are ignored; if no cell of the batch
    overlaps, the loss is 0 (still connected to the graph).
    """

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        _check(temperature > 0, f"temperature={temperature}; expected > 0")
        self.temperature = float(temperature)

    def _one_way(self, fq, fk, theta_q, theta_k):
        B, C, hq, wq = fq.shape
        hk, wk = fk.shape[-2:]
        idx, valid = correspondence(theta_q, theta_k, (hq, wq), (hk, wk))  # (B, nq)
        q = F.normalize(fq.float().flatten(2).transpose(1, 2), dim=2)  # (B, nq, C)
        k = F.normalize(fk.float().flatten(2).transpose(1, 2), dim=2).reshape(B * hk * wk, C)  # (B*nk, C)
        q = q[valid]  # (V, C): valid queries only
        if q.shape[0] == 0:
            return None, 0
        target = (idx + torch.arange(B, device=idx.device)[:, None] * (hk * wk))[valid]  # (V,) flat key index
        logits = q @ k.t() / self.temperature  # (V, B*nk)
        return F.cross_entropy(logits, target, reduction="sum"), q.shape[0]

    def forward(self, f1, f2, theta1, theta2) -> torch.Tensor:
        _check(
            f1.ndim == 4 and f2.ndim == 4 and f1.shape[:2] == f2.shape[:2],
            f"DenseCorrespondenceLoss expects f1 (B, C, h1, w1), f2 (B, C, h2, w2); got {tuple(f1.shape)}, {tuple(f2.shape)}",
        )
        _check(
            theta1.shape == (f1.shape[0], 2, 3) and theta2.shape == (f1.shape[0], 2, 3),
            f"theta1, theta2 must be ({f1.shape[0]}, 2, 3); got {tuple(theta1.shape)}, {tuple(theta2.shape)}",
        )
        l12, n12 = self._one_way(f1, f2, theta1, theta2)
        l21, n21 = self._one_way(f2, f1, theta2, theta1)
        if n12 + n21 == 0:
            return (f1.float().sum() + f2.float().sum()) * 0.0
        total = sum(x for x in (l12, l21) if x is not None)
        return total / (n12 + n21)
