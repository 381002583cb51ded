"""train.losses: exact values on hand-computed cases, agreement with slow loop references on
random inputs, geometry of the dense correspondences (known shifts, flips, grid_sample itself),
and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from streamcad.errors import ConfigError  # noqa: E402
from streamcad.train.losses import (  # noqa: E402
    DenseCorrespondenceLoss,
    InfoNCELoss,
    cell_centers,
    correspondence,
)

IDENTITY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def theta(b: int = 1, sx=1.0, sy=1.0, tx=0.0, ty=0.0) -> torch.Tensor:
    t = torch.tensor([[sx, 0.0, tx], [0.0, sy, ty]])
    return t.expand(b, 2, 3).clone()


# ----------------------------------------------------------------------------- slow references


def nt_xent_reference(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    """SimCLR eq. 1 written as loops over the 2B anchors."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n, B = len(z), len(z1)
    total = 0.0
    for i in range(n):
        pos = (i + B) % n
        denom = sum(math.exp(z[i] @ z[k] / t) for k in range(n) if k != i)
        total += -math.log(math.exp(z[i] @ z[pos] / t) / denom)
    return total / n


def dense_reference(f1, f2, th1, th2, t) -> float:
    """Cell by cell: map the query cell centre to input coords, then into the key view by
    solving the 2x2 system; positive = key cell containing it; CE over all key cells."""
    f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
    total, count = 0.0, 0
    for fq, fk, tq, tk in ((f1, f2, th1, th2), (f2, f1, th2, th1)):
        B, C, hq, wq = fq.shape
        hk, wk = fk.shape[2:]
        keys = fk.transpose(0, 2, 3, 1).reshape(-1, C)
        keys = keys / np.linalg.norm(keys, axis=1, keepdims=True)
        for b in range(B):
            for i in range(hq):
                for j in range(wq):
                    x, y = (2 * j + 1) / wq - 1, (2 * i + 1) / hq - 1
                    p = tq[b, :, :2] @ np.array([x, y]) + tq[b, :, 2]
                    u = np.linalg.solve(tk[b, :, :2], p - tk[b, :, 2])
                    if abs(u[0]) > 1 or abs(u[1]) > 1:
                        continue
                    col = min(wk - 1, max(0, math.floor((u[0] + 1) / 2 * wk)))
                    row = min(hk - 1, max(0, math.floor((u[1] + 1) / 2 * hk)))
                    q = fq[b, :, i, j] / np.linalg.norm(fq[b, :, i, j])
                    logits = keys @ q / t
                    target = b * hk * wk + row * wk + col
                    m = logits.max()
                    total += -(logits[target] - m - math.log(np.exp(logits - m).sum()))
                    count += 1
    return total / count


# ----------------------------------------------------------------------------- InfoNCE


def test_infonce_hand_computed_orthogonal_pairs():
    # anchors e1, e2, e1, e2: each has sim 1 with its positive and 0 with the two negatives:
    # loss = -log(e^(1/t) / (e^(1/t) + 2)) = log(1 + 2 e^(-1/t)); t = 0.5 -> log(1 + 2 e^-2)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = InfoNCELoss(temperature=0.5)(z, z.clone())
    assert loss.item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-6)


def test_infonce_hand_computed_three_vectors():
    # B = 2, z1 = [e1, e2], z2 = [(e1 + e2)/sqrt2, e2] (after normalisation), t = 1:
    # anchor z1[0]=e1: pos cos = 1/sqrt2; negs: e2 (0), e2 (0)
    # anchor z1[1]=e2: pos cos = 1; negs: e1 (0), (e1+e2)/sqrt2 (1/sqrt2)
    # anchor z2[0]: pos cos = 1/sqrt2; negs: e2 (1/sqrt2), e2 (1/sqrt2)
    # anchor z2[1]=e2: pos cos = 1; negs: e1 (0), (e1+e2)/sqrt2 (1/sqrt2)
    r = 1 / math.sqrt(2)
    terms = [
        -r + math.log(math.exp(r) + 2),
        -1 + math.log(math.exp(1) + 1 + math.exp(r)),
        -r + math.log(math.exp(r) + 2 * math.exp(r)),
        -1 + math.log(math.exp(1) + 1 + math.exp(r)),
    ]
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 1.0], [0.0, 3.0]])  # norms do not matter (cosine similarity)
    assert InfoNCELoss(temperature=1.0)(z1, z2).item() == pytest.approx(sum(terms) / 4, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_infonce_matches_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    z1, z2 = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    got = InfoNCELoss(temperature=0.3)(z1, z2).item()
    assert got == pytest.approx(nt_xent_reference(z1.numpy(), z2.numpy(), 0.3), rel=1e-5)


def test_infonce_gradients_and_argument_checks():
    z1 = torch.randn(4, 8, requires_grad=True)
    z2 = torch.randn(4, 8, requires_grad=True)
    InfoNCELoss()(z1, z2).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match=r"\(B, D\)"):
        InfoNCELoss()(torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(ConfigError, match="B >= 2"):
        InfoNCELoss()(torch.randn(1, 8), torch.randn(1, 8))
    with pytest.raises(ConfigError, match="temperature"):
        InfoNCELoss(temperature=0.0)


# ----------------------------------------------------------------------------- correspondences


def test_cell_centres_are_the_align_corners_false_pixel_centres():
    grid = F.affine_grid(IDENTITY[None], [1, 1, 3, 4], align_corners=False)  # (1, 3, 4, 2) (x, y)
    torch.testing.assert_close(cell_centers(3, 4), grid.reshape(-1, 2))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_known_shift_pairs_cell_ij_with_ij_plus_k(k):
    """Two views = the same image shifted by k cells: the correspondence map pairs cell (i, j+k)
    of view 1 with cell (i, j) of view 2, and only those cells are valid; the pooled image content
    of paired cells is identical."""
    h = w = 6
    S = 16 * w
    img = torch.rand(1, 1, h, w).repeat_interleave(16, 2).repeat_interleave(16, 3)  # cell-constant pattern
    th1, th2 = theta(), theta(tx=2 * k / w)  # view 2 samples input x + k cells
    views = [F.grid_sample(img, F.affine_grid(t, [1, 1, S, S], align_corners=False), align_corners=False) for t in (th1, th2)]
    cells = [F.avg_pool2d(v, 16)[0, 0] for v in views]  # (h, w) per view
    idx, valid = correspondence(th1, th2, (h, w), (h, w))
    idx, valid = idx[0].reshape(h, w), valid[0].reshape(h, w)
    for i in range(h):
        for j in range(w):
            if j >= k:
                assert valid[i, j] and idx[i, j] == i * w + (j - k)
                torch.testing.assert_close(cells[0][i, j], cells[1][i, j - k])
            else:
                assert not valid[i, j]  # column j < k of view 1 is not in view 2


def test_horizontal_flip_pairs_mirrored_cells():
    idx, valid = correspondence(theta(), theta(sx=-1.0), (4, 5), (4, 5))
    assert valid.all()
    expected = [r * 5 + (4 - c) for r in range(4) for c in range(5)]
    assert idx[0].tolist() == expected


def test_correspondence_agrees_with_grid_sample_on_random_crops():
    """Independent of the formula: sample a coordinate image with grid_sample; the paired view-2
    cell must cover the input point of the view-1 cell centre (within half a view-2 cell)."""
    g = torch.Generator().manual_seed(0)
    B, S, h = 6, 64, 8
    scale = 0.4 + 0.6 * torch.rand(B, 2, generator=g)
    shift = (1 - scale) * (2 * torch.rand(B, 2, generator=g) - 1)
    flip = torch.where(torch.rand(B, generator=g) < 0.5, -1.0, 1.0)
    th1 = torch.zeros(B, 2, 3)
    th1[:, 0, 0], th1[:, 1, 1], th1[:, :, 2] = scale[:, 0] * flip, scale[:, 1], shift
    th2 = theta(B, sx=0.7, sy=0.6, tx=0.1, ty=-0.2)
    coords = F.affine_grid(IDENTITY[None], [1, 1, S, S], align_corners=False).permute(0, 3, 1, 2).expand(B, 2, S, S)
    v1 = F.avg_pool2d(F.grid_sample(coords, F.affine_grid(th1, [B, 2, S, S], align_corners=False), align_corners=False), S // h)
    v2 = F.avg_pool2d(F.grid_sample(coords, F.affine_grid(th2, [B, 2, S, S], align_corners=False), align_corners=False), S // h)
    p1 = v1.flatten(2).transpose(1, 2)  # (B, 64, 2) input coords of view-1 cell centres
    p2 = v2.flatten(2).transpose(1, 2)  # (B, 64, 2) of view-2 cell centres
    idx, valid = correspondence(th1, th2, (h, h), (h, h))
    assert valid.any(dim=1).all()
    half_cell = torch.tensor([0.7, 0.6]) / h  # view-2 cell half size in input units
    for b in range(B):
        for c in torch.nonzero(valid[b]).flatten():
            d = (p2[b, idx[b, c]] - p1[b, c]).abs()
            assert torch.all(d <= half_cell + 1e-4)


# ----------------------------------------------------------------------------- dense loss


def test_dense_loss_hand_computed():
    # B = 2, 1x1 maps, identity views: query f1[b], keys f2[0], f2[1], positive f2[b].
    # f1 = f2 = [e1, e2], t = 1: each term = -log(e / (e + 1)) = log(1 + 1/e), both directions.
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(2, 2, 1, 1)
    loss = DenseCorrespondenceLoss(temperature=1.0)(f, f.clone(), theta(2), theta(2))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_dense_loss_matches_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    B, C = 3, 6
    f1 = torch.randn(B, C, 4, 5, generator=g)
    f2 = torch.randn(B, C, 3, 4, generator=g)  # different grids per view are allowed
    th1 = torch.cat([theta(1, 0.8, 0.9, 0.1, 0.0), theta(1, -0.6, 0.6, -0.2, 0.3), theta(1, 1.0, 1.0, 0.0, 0.0)])
    th2 = torch.cat([theta(1, 0.5, 0.7, -0.1, 0.2), theta(1, 0.9, 0.8, 0.0, -0.1), theta(1, 0.7, 0.7, 0.25, 0.25)])
    th1[1, 0, 1] = 0.1  # a little shear
    got = DenseCorrespondenceLoss(temperature=0.2)(f1, f2, th1, th2).item()
    ref = dense_reference(f1.numpy(), f2.numpy(), th1.numpy(), th2.numpy(), 0.2)
    assert got == pytest.approx(ref, rel=1e-5)


def test_dense_loss_ignores_cells_outside_the_overlap_and_gradients_flow():
    f1 = torch.randn(2, 4, 3, 3, requires_grad=True)
    f2 = torch.randn(2, 4, 3, 3, requires_grad=True)
    # disjoint views: view 1 = left third of the input, view 2 = right third
    loss = DenseCorrespondenceLoss()(f1, f2, theta(2, 1 / 3, 1.0, -2 / 3, 0.0), theta(2, 1 / 3, 1.0, 2 / 3, 0.0))
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph
    loss = DenseCorrespondenceLoss()(f1, f2, theta(2), theta(2, tx=0.5))
    loss.backward()
    assert f1.grad.abs().sum() > 0 and f2.grad.abs().sum() > 0


def test_dense_loss_argument_checks():
    f = torch.randn(2, 4, 3, 3)
    with pytest.raises(ConfigError, match=r"\(B, C, h1, w1\)"):
        DenseCorrespondenceLoss()(f, torch.randn(2, 5, 3, 3), theta(2), theta(2))
    with pytest.raises(ConfigError, match=r"\(2, 2, 3\)"):
        DenseCorrespondenceLoss()(f, f, theta(1), theta(2))


def test_decoupled_loss_leaves_the_positive_out_of_the_denominator():
    """DCL (Yeh et al. 2022) against a loop over the 2B anchors; InfoNCE exceeds it, per anchor, by
    exactly log(1 + exp(s_pos - logsumexp(negatives)))."""
    g = torch.Generator().manual_seed(7)
    z1, z2 = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    t = 0.2
    q = torch.cat([F.normalize(z1, dim=1), F.normalize(z2, dim=1)])
    B, dcl, gap = 6, [], []
    for a in range(2 * B):
        pos = (a + B) % (2 * B)
        s = (q @ q[a]) / t
        neg = torch.logsumexp(torch.stack([s[k] for k in range(2 * B) if k not in (a, pos)]), 0)
        dcl.append(neg - s[pos])
        gap.append(torch.log1p(torch.exp(s[pos] - neg)))
    got = InfoNCELoss(t, decoupled=True)(z1, z2)
    assert float(got) == pytest.approx(float(torch.stack(dcl).mean()), abs=1e-5)
    assert float(InfoNCELoss(t)(z1, z2) - got) == pytest.approx(float(torch.stack(gap).mean()), abs=1e-5)
    # two identical views of orthogonal images: a perfect positive, and the loss is below zero (InfoNCE never is)
    eye = torch.eye(4, 16)
    assert float(InfoNCELoss(t, decoupled=True)(eye, eye)) < 0 < float(InfoNCELoss(t)(eye, eye))
