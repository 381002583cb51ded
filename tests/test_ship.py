import numpy as np

from streamcad.train.data import LabeledArrays
from streamcad.train.ship import combine


def _arrays(n, prefix_labels, seed):
    rng = np.random.default_rng(seed)
    return LabeledArrays(
        images=rng.integers(0, 255, (n, 8, 8), dtype=np.uint8),
        masks=np.zeros((n, 8, 8), np.uint8),
        labels=np.array(prefix_labels[:n]),
        groups=np.array([f"g{i // 2}" for i in range(n)]),  # same group names in both datasets
        folds=np.arange(n) % 5,
        ids=np.array([f"img{i}" for i in range(n)]),
    )


def test_combine_keeps_datasets_apart():
    a = _arrays(10, [0, 1, 2] * 4, 0)
    b = _arrays(6, [1, 2] * 3, 1)
    c = combine({"busi": a, "busbra": b})
    assert len(c) == 16
    assert np.array_equal(c.images[:10], a.images) and np.array_equal(c.images[10:], b.images)
    assert np.array_equal(c.folds, np.concatenate([a.folds, b.folds]))
    # equal group names in two datasets are different groups after combining
    assert "busi:g0" in set(c.groups) and "busbra:g0" in set(c.groups)
    assert len(set(c.ids)) == 16
    train, test = c.fold_split(0)
    assert (train.folds != 0).all() and (test.folds == 0).all()
    assert set(test.ids) == {f"busi:img{i}" for i in (0, 5)} | {"busbra:img0", "busbra:img5"}
