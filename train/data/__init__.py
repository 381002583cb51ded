"""Training data: loaders, leak-free splits, cached letterboxed arrays, the SSL pool.

Importable without torch (numpy + OpenCV + scikit-learn for the split computation only).
See docs/DATA.md for the split rules and the pretraining protocol.
"""

from streamcad.train.data.arrays import (
    LabeledArrays,
    cache_dir,
    load_arrays,
    load_npz,
    pool_from_packed,
    read_video_frames,
    save_npz,
    unlabeled_pool,
)
from streamcad.train.data.datasets import (
    CLASSES,
    DATASETS,
    Sample,
    data_root,
    load_samples,
    read_gray,
    read_mask,
)
from streamcad.train.data.splits import read_split, split_hash

__all__ = [
    "CLASSES",
    "DATASETS",
    "LabeledArrays",
    "Sample",
    "cache_dir",
    "data_root",
    "load_arrays",
    "load_npz",
    "load_samples",
    "pool_from_packed",
    "read_gray",
    "read_mask",
    "read_split",
    "read_video_frames",
    "save_npz",
    "split_hash",
    "unlabeled_pool",
]
