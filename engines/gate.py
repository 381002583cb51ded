"""The accuracy gate: does a candidate engine agree with the FP32 reference on real frames?

    real frames (BUS-BRA / BUSI / packed .npz / repo sample)
        --streamcad.preprocess-->  (N, 1, S, S) float32
        --reference backend (ONNX Runtime FP32)-->  probs_ref  (N, 3)
        --candidate (TensorRT FP16, torch CUDA fp16, ...)-->  probs_cand (N, 3)
        --run_gate-->  GateResult(passed, numbers, failures)

The gate is backend-agnostic: it only sees probability arrays. Rules (each passes at exactly
its threshold and fails just above it):
  1. every candidate probability is finite (no NaN / Inf: FP16 overflow shows up here);
  2. max |p_cand - p_ref| over all frames and classes <= 1e-2;
  3. argmax decision flips <= 1 % of the frames;
  4. with binary labels (1 = malignant): |AUC_cand - AUC_ref| <= 0.005 (malignant-vs-rest AUC).

`load_gate_frames` builds the fixed set of real frames the gate runs on; export.py (parity),
convert.py (TensorRT vs ORT) and benchmarks/gpu_check.py (torch CUDA vs ORT) all use it.
Only numpy, OpenCV and (for AUC) scikit-learn are needed: no torch here.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from streamcad.errors import ArtifactError, ConfigError
from streamcad.manifest import CLASS_NAMES
from streamcad.preprocess import PreprocessSpec, preprocess

__all__ = [
    "CLASS_NAMES",
    "MALIGNANT",
    "GateThresholds",
    "GateResult",
    "GateFrames",
    "softmax",
    "run_gate",
    "load_gate_frames",
    "data_root",
    "default_data_root",
    "sample_images_dir",
    "busi_images",
    "busbra_images",
]

log = logging.getLogger(__name__)

MALIGNANT = CLASS_NAMES.index("malignant")
REPO = Path(__file__).resolve().parents[1]
_EPS = 1e-9  # a value exactly at a threshold passes despite float rounding (0.51 - 0.5 != 0.01)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


# ----------------------------------------------------------------------------- the gate


@dataclass(frozen=True)
class GateThresholds:
    max_prob_diff: float = 1e-2  # FP16 keeps ~3 decimal digits; 1e-2 in probability is far below any decision margin we act on
    max_flip_rate: float = 0.01  # at most 1 % of frames may change their argmax class
    max_auc_delta: float = 0.005  # AUC is the metric we report; a change below 0.005 is within its CI on ~200 frames


@dataclass(frozen=True)
class GateResult:
    passed: bool
    n: int
    nonfinite: int  # candidate probabilities that are NaN or Inf
    max_prob_diff: float
    flips: int
    flip_rate: float
    auc_reference: float | None
    auc_candidate: float | None
    auc_delta: float | None
    failures: tuple[str, ...]
    thresholds: GateThresholds = field(default_factory=GateThresholds)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["failures"] = list(self.failures)
        return d

    def summary(self) -> str:
        auc = "" if self.auc_delta is None else f", AUC delta {self.auc_delta:.4f}"
        verdict = "PASS" if self.passed else "FAIL (" + "; ".join(self.failures) + ")"
        return (
            f"gate {verdict}: n={self.n}, max prob diff {self.max_prob_diff:.2e}, "
            f"flips {self.flips} ({self.flip_rate:.2%}){auc}"
        )


def softmax(logits: np.ndarray, temperature: float = 1.0, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax of logits / temperature in float64, along `axis`: the one
    softmax of the tooling (the gate, export's parity check, evaluate, train's metrics). The
    runtime's per-frame softmax (streamcad.processor) is float32 on one frame, by design."""
    if not temperature > 0:
        raise ConfigError(f"temperature={temperature}; expected > 0")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - np.max(z, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def _as_probs(name: str, probs: np.ndarray) -> np.ndarray:
    arr = np.asarray(probs)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] < 2:
        raise ConfigError(f"{name} probabilities: expected shape (N, C) with N >= 1, C >= 2; got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ConfigError(f"{name} probabilities: expected a float array; got {arr.dtype}")
    return arr.astype(np.float64)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score  # lazy: only the AUC rule needs scikit-learn

    if len(np.unique(labels)) < 2:
        return None  # AUC is undefined with one class; the rule is then skipped (logged)
    return float(roc_auc_score(labels, scores))


def run_gate(
    reference_probs: np.ndarray,
    candidate_probs: np.ndarray,
    labels_binary: np.ndarray | None = None,
    thresholds: GateThresholds | None = None,
    positive_class: int = MALIGNANT,
) -> GateResult:
    """Compare candidate probabilities (N, C) with the FP32 reference (N, C) -> GateResult.

    labels_binary: optional (N,) 0/1 ground truth (1 = malignant) for the AUC rule; the AUC
    score is the probability of `positive_class`. A value exactly at a threshold passes.
    """
    th = thresholds or GateThresholds()
    ref = _as_probs("reference", reference_probs)
    cand = _as_probs("candidate", candidate_probs)
    if ref.shape != cand.shape:
        raise ConfigError(f"reference probabilities {ref.shape} and candidate {cand.shape} differ in shape")
    if not np.all(np.isfinite(ref)):
        raise ConfigError("reference probabilities contain NaN/Inf; the FP32 reference itself is broken")
    n = ref.shape[0]
    failures: list[str] = []

    finite = np.isfinite(cand)
    nonfinite = int(finite.size - np.count_nonzero(finite))
    if nonfinite:
        failures.append(f"{nonfinite} non-finite candidate probabilities (NaN/Inf)")

    diff = np.abs(np.where(finite, cand, np.inf) - ref)
    max_diff = float(diff.max())
    if max_diff > th.max_prob_diff + _EPS:
        failures.append(f"max prob diff {max_diff:.3e} > {th.max_prob_diff:g}")

    # A NaN row has no argmax; count it as a flip.
    cand_dec = np.where(finite.all(axis=1), np.argmax(np.where(finite, cand, -np.inf), axis=1), -1)
    flips = int(np.count_nonzero(cand_dec != np.argmax(ref, axis=1)))
    flip_rate = flips / n
    if flips > math.floor(th.max_flip_rate * n + _EPS):
        failures.append(f"{flips}/{n} decision flips ({flip_rate:.2%}) > {th.max_flip_rate:.2%}")

    auc_ref = auc_cand = auc_delta = None
    if labels_binary is not None:
        labels = np.asarray(labels_binary)
        if labels.shape != (n,) or not np.isin(labels, (0, 1)).all():
            raise ConfigError(f"labels_binary: expected (N,) = ({n},) of 0/1; got shape {labels.shape}")
        auc_ref = _auc(labels, ref[:, positive_class])
        if auc_ref is None:
            log.warning("gate: labels hold a single class; AUC rule skipped")
        elif nonfinite:
            auc_cand, auc_delta = float("nan"), float("inf")
            failures.append("AUC undefined: candidate has non-finite probabilities")
        else:
            auc_cand = _auc(labels, cand[:, positive_class])
            auc_delta = abs(auc_cand - auc_ref)
            if auc_delta > th.max_auc_delta + _EPS:
                failures.append(f"AUC delta {auc_delta:.4f} > {th.max_auc_delta:g}")

    result = GateResult(
        passed=not failures,
        n=n,
        nonfinite=nonfinite,
        max_prob_diff=max_diff,
        flips=flips,
        flip_rate=flip_rate,
        auc_reference=auc_ref,
        auc_candidate=auc_cand,
        auc_delta=auc_delta,
        failures=tuple(failures),
        thresholds=th,
    )
    log.info("%s", result.summary())
    return result


# ----------------------------------------------------------------------------- the fixed real-frame set


@dataclass
class GateFrames:
    """A fixed, ordered set of real frames, preprocessed for one model."""

    batch: np.ndarray  # (N, 1, S, S) float32, streamcad.preprocess output
    labels_binary: np.ndarray | None  # (N,) int64, 1 = malignant, or None when unknown
    names: list[str]
    source: str  # where the frames came from (recorded in manifests and reports)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Resolve the data root: the argument, else $STREAMCAD_DATA, else ../shared/data beside
    the repository. Raises ConfigError naming every place looked at when none exists."""
    tried = []
    cands = [Path(root)] if root is not None else []
    if root is None and os.environ.get("STREAMCAD_DATA"):
        cands.append(Path(os.environ["STREAMCAD_DATA"]))
    if root is None:
        cands.append(REPO.parent / "shared" / "data")
    for c in cands:
        tried.append(str(c))
        if c.is_dir():
            return c
    raise ConfigError(
        f"data root not found (tried {', '.join(tried)}); expected a folder holding BUSI/ and "
        "BUS-BRA/ (pass root=..., or set $STREAMCAD_DATA)"
    )


def default_data_root() -> Path | None:
    """$STREAMCAD_DATA, else ../shared/data beside the repository; None when neither exists."""
    try:
        return data_root()
    except ConfigError:
        return None


# The two public datasets' layouts on disk, one definition for engines and train
# (streamcad evaluate, the gate frames, train.data's loaders):
#   BUSI:    BUSI/{benign,malignant,normal}/NAME.png with NAME_mask.png, NAME_mask_K.png beside it
#   BUS-BRA: BUS-BRA/Images/bus_XXXX-s.png, labels in BUS-BRA/bus_data.csv (ID, Pathology)


def busi_images(class_folder: str | os.PathLike) -> list[Path]:
    """The images of one BUSI class folder, sorted by path; the masks (`*_mask*.png`) are left out."""
    return sorted(p for p in Path(class_folder).glob("*.png") if "_mask" not in p.stem)


def busbra_images(folder: str | os.PathLike) -> list[Path]:
    """The images of a BUS-BRA folder (FOLDER/Images/*.png), sorted by path."""
    return sorted((Path(folder) / "Images").glob("*.png"))


def sample_images_dir() -> Path | None:
    """The attributed sample shipped in the repository (streamcad/data/sample/images), if present."""
    d = REPO / "streamcad" / "data" / "sample" / "images"
    return d if d.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.iterdir()) else None


def _is_mask(p: Path) -> bool:
    return "_mask" in p.stem or p.stem.startswith("mask_")


def _label_csv(folder: Path) -> dict[str, str]:
    """file -> label from a labels.csv (columns file,label) in the folder or its parent."""
    for cand in (folder / "labels.csv", folder.parent / "labels.csv"):
        if cand.is_file():
            with open(cand, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            if rows and {"file", "label"} <= set(rows[0]):
                return {r["file"]: r["label"].strip().lower() for r in rows}
    return {}


def _busbra_labels(root: Path) -> dict[str, str]:
    csv_path = root / "bus_data.csv"
    if not csv_path.is_file():
        return {}
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return {r["ID"] + ".png": r["Pathology"].strip().lower() for r in csv.DictReader(fh)}


def _list_folder(folder: Path) -> list[tuple[Path, str | None]]:
    """Image files under a folder (recursively, masks excluded) with a label where one is known."""
    labels = _label_csv(folder)
    out = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in IMAGE_SUFFIXES or _is_mask(p):
            continue
        label = labels.get(p.name)
        if label is None and p.parent.name.lower() in CLASS_NAMES:
            label = p.parent.name.lower()  # BUSI layout: class sub-folders
        out.append((p, label))
    return out


def _list_data_root(root: Path) -> list[tuple[Path, str | None]]:
    out: list[tuple[Path, str | None]] = []
    if (root / "BUS-BRA" / "Images").is_dir():
        labels = _busbra_labels(root / "BUS-BRA")
        out += [(p, labels.get(p.name)) for p in busbra_images(root / "BUS-BRA")]
    for cls in CLASS_NAMES:
        d = root / "BUSI" / cls
        if d.is_dir():
            out += [(p, cls) for p in busi_images(d) if not _is_mask(p)]  # _is_mask: also mask_*.png
    return out


def _evenly(n_total: int, n: int) -> np.ndarray:
    """n indices spread evenly over range(n_total) (deterministic: the gate set is fixed)."""
    if n >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(np.int64))


def _binary(labels: list[str | None]) -> np.ndarray | None:
    if any(lbl is None for lbl in labels):
        return None
    return np.array([1 if lbl == "malignant" else 0 for lbl in labels], np.int64)


def _npz_arrays(path: Path) -> tuple[list[np.ndarray], list[str | None], list[str]]:
    """Labeled images from a packed .npz (train.data.save_npz): keys '<prefix>images' (N,S,S) uint8
    with '<prefix>labels' (N,) class indices beside them. Unlabeled pools are used only when no
    labeled set exists."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read frames archive {path}: {exc}") from exc
    with npz:
        keys = sorted(npz.files)
        labeled, unlabeled = [], []
        for key in keys:
            if not key.endswith("images"):
                continue
            prefix = key[: -len("images")]
            arr = npz[key]
            if arr.dtype != np.uint8 or arr.ndim != 3:
                continue
            lab_key = prefix + "labels"
            if lab_key in npz.files:
                labeled.append((prefix, arr, npz[lab_key]))
            else:
                unlabeled.append((prefix, arr, None))
        chosen = labeled or unlabeled
        if not chosen:
            raise ArtifactError(
                f"{path} holds no '<name>images' uint8 (N,S,S) arrays (keys: {keys}); "
                "expected an archive written by train.data.save_npz"
            )
    images, labels, names = [], [], []
    for prefix, arr, labs in chosen:
        for i in range(arr.shape[0]):
            images.append(arr[i])
            labels.append(None if labs is None else CLASS_NAMES[int(labs[i])])
            names.append(f"{prefix}{i}")
    return images, labels, names


def load_gate_frames(
    spec: PreprocessSpec,
    n: int = 200,
    images_dir: str | os.PathLike | None = None,
    data_npz: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
) -> GateFrames:
    """The fixed set of up to `n` real frames, preprocessed with `spec` -> GateFrames.

    Source, first that applies: `data_npz` (packed archive), `images_dir` (any folder of images;
    labels from a labels.csv or BUSI-style class folders), `data_root` / $STREAMCAD_DATA /
    ../shared/data (BUS-BRA + BUSI), then the repository sample. Frames are spread evenly over
    the sorted list, so the same inputs always give the same set. Never synthetic: if no real
    images are found this raises ArtifactError saying where it looked.
    """
    if n < 1:
        raise ConfigError(f"number of gate frames n={n}; expected >= 1")
    if data_npz is not None:
        path = Path(data_npz)
        if not path.is_file():
            raise ArtifactError(f"frames archive {path} does not exist")
        images, labels, names = _npz_arrays(path)
        idx = _evenly(len(images), n)
        images = [images[i] for i in idx]
        labels = [labels[i] for i in idx]
        names = [names[i] for i in idx]
        source = f"npz:{path}"
    else:
        if images_dir is not None:
            folder = Path(images_dir)
            if not folder.is_dir():
                raise ArtifactError(f"images folder {folder} does not exist")
            files, source = _list_folder(folder), f"dir:{folder}"
        else:
            root = Path(data_root) if data_root is not None else default_data_root()
            files, source = (_list_data_root(root), f"data:{root}") if root is not None else ([], "")
            if not files:
                sample = sample_images_dir()
                if sample is not None:
                    files, source = _list_folder(sample), f"sample:{sample}"
        if not files:
            raise ArtifactError(
                "no real images found for the parity/gate check: looked in --data-npz, --images, "
                "$STREAMCAD_DATA, ../shared/data (BUS-BRA/, BUSI/) and streamcad/data/sample/images; "
                "pass --data-npz PATH (train.data.save_npz) or an images folder"
            )
        idx = _evenly(len(files), n)
        images, labels, names = [], [], []
        for i in idx:
            p, label = files[i]
            img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            if img is None:
                raise ArtifactError(f"cannot decode image {p}")
            images.append(img)
            labels.append(label)
            names.append(p.name)
    batch = np.empty((len(images), 1, spec.size, spec.size), np.float32)  # (N, 1, S, S)
    for i, img in enumerate(images):
        preprocess(img, spec, out=batch[i])
    log.info("gate frames: %d real images from %s", len(images), source)
    return GateFrames(batch=batch, labels_binary=_binary(labels), names=names, source=source)
