"""Every training default, in one place: the typed, versioned configs of both recipes.

    recipe v1 (docs/TRAINING.md, protocol v1): SSL pretraining then fine-tuning, one dataset at a time
      SSLConfig       stage 1 (train.ssl.pretrain)            `streamcad train pretrain` flags
      FinetuneConfig  stage 2 (train.finetune.finetune)       `streamcad train finetune` flags
      ExperimentConfig  both stages + folds, flat (what train/results/*.json store under 'experiment');
                        PRESETS 'cpu' (= the stage defaults), 'gpu', 'ship'  `train experiment`, `train ship --recipe v1`
    recipe v2 (docs/TRAINING.md, Protocol v2): one ImageNet-initialised model on both datasets
      RecipeConfig    train.cv.run                            `streamcad train cv run`, `train ship` (v2)

Each default is written once, here, with its reason; the CLI's argparse defaults, the presets,
train.experiment, train.ship, train.release and train.cv read them from these classes (a field
shared by several classes refers to the one that owns it, e.g. ExperimentConfig.epochs_ft is
FinetuneConfig.epochs). `tests/test_train_config.py` holds every training flag's default equal to
its field.

On disk a config is a plain dict with two extra keys, `version` (CONFIG_VERSION) and `recipe`
('v1' | 'v2'): `config_to_dict(cfg)` / `config_from_dict(d)`. `from_dict` names unknown keys,
wrong types and bad values in one line (ConfigError); a dict without `version` (a run written
before configs were versioned, e.g. a committed result's recipe) reads as the current version.

This module needs only the standard library: `streamcad train --help` builds its parsers from it
in an install without torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from streamcad.errors import ConfigError

__all__ = [
    "CONFIG_VERSION",
    "RECIPES",
    "SSLConfig",
    "FinetuneConfig",
    "ExperimentConfig",
    "RecipeConfig",
    "PRESETS",
    "QUICK",
    "preset",
    "same_recipe",
    "config_to_dict",
    "config_from_dict",
]

# Bump when a field is renamed or removed, or a default changes what a run trains; every run's
# output records it (result JSONs, checkpoints, the ship report).
CONFIG_VERSION = 1
RECIPES = ("v1", "v2")

OVERLAY_MODES = ("none", "remove", "add")  # caliper-shortcut ablation (train.finetune.apply_overlay)
THRESHOLD_METHODS = ("youden", "sens90")  # train.evaluate.choose_threshold
VARIANTS = ("ours", "scratch", "resnet18", "simclr", "no_multiscale", "no_xattn", "label_eff", "overlay")
DEFAULT_VARIANTS = VARIANTS[:6]  # the table's main rows; label_eff and overlay expand to several runs each
LABEL_FRACTIONS = (0.1, 0.25, 0.5)  # label-efficiency curve of v1 (100% = ours / scratch)
SHIP_TEST_FOLD = 0  # the shipped models hold out fold 0 of both datasets (both recipes)

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = REPO / "engines" / "models" / "default.onnx"
SHIP_REPORT = REPO / "train" / "results" / "shipped_default.json"
# The shipped default is a composite of two committed models (train.release.ship_composite):
SSL_CANDIDATE = REPO / "train" / "results" / "v2" / "ssl-candidate" / "lite0-ssl.onnx"  # its logits and lesion map
GATE_MODEL = REPO / "train" / "results" / "v2" / "gate-model" / "lite0.onnx"  # its embedding and gate (v2, no SSL)
SSL_CV_REPORT = REPO / "train" / "results" / "v2" / "report-ssl-r2.json"  # the classifier's recipe's protocol report
RESULTS_DIR = REPO / "train" / "results"  # v1 experiment result JSONs + plots (committed)
CV_DIR = REPO / "runs" / "cv" / "lite0-r2"  # the shipped recipe's train.cv run folders (v2, rule R2; not committed)
CV_REPORT = REPO / "train" / "results" / "v2" / "report-r2.json"  # the shipped recipe's pooled protocol report (committed)
EXPERIMENT_WORK = Path("runs") / "experiment"  # v1 checkpoints, SSL cache, logs (not committed)
SHIP_WORK = Path("runs") / "ship"


def _check_type(what: str, key: str, want: str, v):
    """-> v as the field's type (a list for a tuple field becomes a tuple); ConfigError naming the key."""
    if want.startswith("tuple["):
        if isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            return tuple(v)
    elif want in ("int", "float", "bool", "str"):
        ok = {"int": int, "float": (int, float), "bool": bool, "str": str}[want]
        if isinstance(v, ok) and not (isinstance(v, bool) and want != "bool"):
            return float(v) if want == "float" else v
    else:  # a field type this reader does not know: a bug here, not in the input
        raise TypeError(f"{what} config field {key!r} has type {want!r}, which from_dict cannot check")
    raise ConfigError(f"{what} config key {key!r}={v!r}; expected {want}")


def _from_dict(cls, d: dict, what: str, recipe: str | None = None):
    """Build the frozen config dataclass `cls` from a plain dict (a file's, a checkpoint's):
    unknown keys, wrong types, a foreign `version` or `recipe` and bad values (the class's
    __post_init__) are one-line ConfigErrors that name the key."""
    if not isinstance(d, dict):
        raise ConfigError(f"{what} config is {type(d).__name__}; expected a dict (mapping of key -> value)")
    d = dict(d)
    version = d.pop("version", CONFIG_VERSION)
    if version != CONFIG_VERSION or isinstance(version, bool):
        raise ConfigError(f"{what} config version={version!r}; this code reads version {CONFIG_VERSION}")
    if "recipe" in d and recipe is not None:
        got = d.pop("recipe")
        if got != recipe:
            raise ConfigError(f"{what} config recipe={got!r}; expected {recipe!r}")
    types = {f.name: f.type for f in fields(cls)}
    unknown = sorted(set(d) - set(types))
    if unknown:
        raise ConfigError(f"unknown {what} config key(s) {unknown}; expected some of {sorted(types)}")
    return cls(**{k: _check_type(what, k, types[k], v) for k, v in d.items()})


# ----------------------------------------------------------------------------- recipe v1


@dataclass(frozen=True)
class SSLConfig:
    """Recipe v1, stage 1: one pretraining run (train.ssl). The run-size defaults are the CPU
    preset's (a 2-core machine); PRESETS['gpu'] / ['ship'] scale them."""

    model: str = "tiny"  # registry name (train.model); tiny (0.4M) keeps a CPU fold under a few minutes
    multiscale: bool = True  # False: the -multiscale ablation
    cross_attention: bool = True  # False: the -cross-scale-attention ablation
    size: int = 128  # input S; 128 on 2 cores (docs/TRAINING.md, Configs); the GPU preset and ship use more
    epochs: int = 10  # CPU preset; the committed CPU table overrides it (--epochs-ssl 5)
    batch_size: int = 64  # global batch (split over DDP ranks); 2B-2 = 126 negatives per anchor
    lr: float = 2e-3  # AdamW peak lr (small model, small batch)
    min_lr: float = 1e-5
    warmup_epochs: int = 2  # linear warmup: contrastive losses are unstable at full lr from init
    weight_decay: float = 0.05
    grad_clip: float = 3.0  # max grad norm (0 = off)
    temperature: float = 0.2  # instance NT-Xent; 0.1-0.5 work for small batches (SimCLR fig. B.1)
    dense_temperature: float = 0.2  # DenseCL's value
    dense_weight: float = 0.5  # loss = instance + dense_weight * dense; 0 = plain SimCLR
    min_overlap: float = 0.3  # the two views share >= 30% of area, so the dense term has cells
    proj_hidden: int = 256
    proj_dim: int = 128  # SimCLR's projection size
    knn_k: int = 20
    max_steps_per_epoch: int = 0  # 0 = the whole pool each epoch; > 0 caps it (quick runs, tests)
    seed: int = 0
    device: str = "auto"  # 'auto' | 'cpu' | 'cuda' | 'cuda:N' (no silent fallback)
    amp: bool = False  # mixed precision (CUDA only; an error on CPU, never silently ignored)
    channels_last: bool = False  # channels_last memory format (numerically identical; faster on CUDA and on this CPU)
    decoupled: bool = False  # True: the decoupled contrastive loss (DCL; train.losses.InfoNCELoss) for the instance term
    views: str = "v1"  # "v1": TwoViewAugment's defaults; "scanner": square crops, no shear, no synthetic shadow (lever 4)

    def __post_init__(self):
        if self.views not in ("v1", "scanner"):
            raise ConfigError(f"views={self.views!r}; expected 'v1' (TwoViewAugment's defaults) or 'scanner' "
                              "(square crops, no shear, no synthetic shadow)")
        if self.size % 32 or self.size < 32:
            raise ConfigError(f"size={self.size}; expected a multiple of 32 (the model's stride)")
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError(f"epochs={self.epochs}, batch_size={self.batch_size}; expected >= 1 and >= 2")
        if self.lr <= 0 or self.min_lr < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("lr must be > 0 and min_lr, weight_decay, grad_clip >= 0")
        if self.temperature <= 0 or self.dense_temperature <= 0:
            raise ConfigError(f"temperature={self.temperature}, dense_temperature={self.dense_temperature}; expected > 0")
        if self.dense_weight < 0:
            raise ConfigError(f"dense_weight={self.dense_weight}; expected >= 0 (0 = plain SimCLR)")
        if self.model == "resnet18" and not (self.multiscale and self.cross_attention):
            raise ConfigError("multiscale/cross_attention ablations apply to StreamcadNet models, not 'resnet18'")
        if self.knn_k < 1 or self.max_steps_per_epoch < 0 or self.warmup_epochs < 0:
            raise ConfigError("knn_k >= 1, max_steps_per_epoch >= 0, warmup_epochs >= 0 expected")

    @classmethod
    def from_dict(cls, d: dict) -> SSLConfig:
        return _from_dict(cls, d, "ssl")

    def to_dict(self) -> dict:
        return asdict(self)

    def model_overrides(self) -> dict:
        ov = {}
        if not self.multiscale:
            ov["multiscale"] = False
        if not self.cross_attention:
            ov["cross_attention"] = False
        return ov


@dataclass(frozen=True)
class FinetuneConfig:
    """Recipe v1, stage 2: one fine-tuning run (train.finetune). Fields it shares with
    SSLConfig take SSLConfig's defaults (the backbone it fine-tunes was pretrained with them)."""

    model: str = SSLConfig.model  # registry name (train.model): tiny/small/base/resnet18
    size: int = SSLConfig.size  # input S (a multiple of 32)
    init: str = "scratch"  # 'scratch' or the path of an SSL checkpoint ({'kind': 'ssl'})
    multiscale: bool = SSLConfig.multiscale  # False: the -multiscale ablation (StreamcadNet only)
    cross_attention: bool = SSLConfig.cross_attention  # False: the -cross-scale-attention ablation (StreamcadNet only)
    label_fraction: float = 1.0  # share of the fold's training labels used (label-efficiency curve)
    epochs: int = 20  # CPU preset (docs/TRAINING.md, Configs); an upper bound: early stopping ends most runs sooner
    batch_size: int = 32
    lr: float = 1e-3  # head learning rate (AdamW)
    backbone_lr_scale: float = 0.3  # backbone lr = lr * scale when init is SSL (keep features); 1.0 from scratch
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    class_weighting: bool = True  # inverse-frequency weighted cross entropy (BUSI: 437/210/133)
    patience: int = 6  # early stopping on validation AUC (epochs without improvement); every CPU-table row used 6
    val_fraction: float = 0.2  # share of the training part (by group) held out for validation
    threshold_method: str = THRESHOLD_METHODS[0]  # 'youden' | 'sens90' (train.evaluate.choose_threshold)
    device: str = SSLConfig.device
    amp: bool = SSLConfig.amp  # mixed precision (CUDA only; an error on CPU, never silently ignored)
    channels_last: bool = SSLConfig.channels_last  # CUDA memory format
    seed: int = SSLConfig.seed
    augment: bool = True  # train.augment.FinetuneAugment on training batches
    overlay: str = OVERLAY_MODES[0]  # caliper-shortcut ablation: 'none' | 'remove' (inpaint marks) | 'add' (random marks)
    n_boot: int = 1000  # bootstrap resamples for the test-fold CIs

    def __post_init__(self):
        if self.model == "resnet18" and not (self.multiscale and self.cross_attention):
            raise ConfigError("multiscale/cross_attention ablations apply to StreamcadNet models, not 'resnet18'")
        if not 0 < self.label_fraction <= 1:
            raise ConfigError(f"label_fraction={self.label_fraction}; expected 0 < f <= 1")
        if self.epochs < 1 or self.batch_size < 2 or self.patience < 1:
            raise ConfigError(f"epochs={self.epochs}, batch_size={self.batch_size}, patience={self.patience}; expected >= 1, >= 2, >= 1")
        if not 0 < self.val_fraction < 0.5:
            raise ConfigError(f"val_fraction={self.val_fraction}; expected 0 < f < 0.5")
        if self.overlay not in OVERLAY_MODES:
            raise ConfigError(f"overlay={self.overlay!r}; expected one of {list(OVERLAY_MODES)}")
        if self.threshold_method not in THRESHOLD_METHODS:
            raise ConfigError(f"threshold_method={self.threshold_method!r}; expected one of {list(THRESHOLD_METHODS)}")
        if self.size % 32:
            raise ConfigError(f"size={self.size}; expected a multiple of 32 (the model's stride)")
        if self.lr <= 0 or self.backbone_lr_scale <= 0 or self.weight_decay < 0:
            raise ConfigError("lr and backbone_lr_scale must be > 0 and weight_decay >= 0")

    @classmethod
    def from_dict(cls, d: dict) -> FinetuneConfig:
        return _from_dict(cls, d, "finetune")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def from_ssl(self) -> bool:
        return self.init != "scratch"


@dataclass(frozen=True)
class ExperimentConfig:
    """Recipe v1 end to end: both stages' run-size settings and the folds, flat (the shape the
    committed train/results/*.json store under 'experiment'). The defaults are the stages'
    (= PRESETS['cpu']); build the others with preset(name, **overrides)."""

    model: str = SSLConfig.model
    size: int = SSLConfig.size
    folds: tuple[int, ...] = (0, 1, 2, 3, 4)  # the committed 5-fold splits (train/splits/)
    epochs_ssl: int = SSLConfig.epochs
    epochs_ft: int = FinetuneConfig.epochs
    batch_ssl: int = SSLConfig.batch_size
    batch_ft: int = FinetuneConfig.batch_size
    lr_ft: float = FinetuneConfig.lr
    patience: int = FinetuneConfig.patience
    ssl_steps_per_epoch: int = SSLConfig.max_steps_per_epoch  # 0 = whole pool; > 0 caps an SSL epoch (quick runs)
    dense_weight: float = SSLConfig.dense_weight
    device: str = SSLConfig.device
    amp: bool = SSLConfig.amp
    channels_last: bool = SSLConfig.channels_last
    augment: bool = FinetuneConfig.augment
    seed: int = SSLConfig.seed
    n_boot: int = FinetuneConfig.n_boot
    preset: str = "cpu"  # the PRESETS entry these values started from (recorded; not re-applied)

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ConfigError(f"preset={self.preset!r}; expected one of {sorted(PRESETS)}")
        if not self.folds or any(not 0 <= k < 5 for k in self.folds):
            raise ConfigError(f"folds={list(self.folds)}; expected some of 0..4")
        if self.ssl_steps_per_epoch < 0:
            raise ConfigError(f"ssl_steps_per_epoch={self.ssl_steps_per_epoch}; expected >= 0 (0 = the whole pool)")

    @classmethod
    def from_dict(cls, d: dict) -> ExperimentConfig:
        return _from_dict(cls, d, "experiment", recipe="v1")

    def to_dict(self) -> dict:
        return {"version": CONFIG_VERSION, "recipe": "v1", **asdict(self), "folds": list(self.folds)}

    def ssl_config(self, **overrides) -> SSLConfig:
        """The stage-1 config of this experiment (overrides: a table row's architecture / dense weight)."""
        return SSLConfig(**{"model": self.model, "size": self.size, "epochs": self.epochs_ssl, "batch_size": self.batch_ssl,
                            "dense_weight": self.dense_weight, "max_steps_per_epoch": self.ssl_steps_per_epoch,
                            "seed": self.seed, "device": self.device, "amp": self.amp,
                            "channels_last": self.channels_last, **overrides})

    def finetune_config(self, **overrides) -> FinetuneConfig:
        """The stage-2 config of this experiment (overrides: the row's init, architecture, labels, overlay)."""
        return FinetuneConfig(**{"model": self.model, "size": self.size, "epochs": self.epochs_ft,
                                 "batch_size": self.batch_ft, "lr": self.lr_ft, "patience": self.patience,
                                 "device": self.device, "amp": self.amp, "channels_last": self.channels_last,
                                 "seed": self.seed, "augment": self.augment, "n_boot": self.n_boot, **overrides})


# The named starting points of ExperimentConfig: what each changes from the stage defaults.
PRESETS: dict[str, dict] = {
    # 2-core laptop / CI machine: the stage defaults (tiny at 128 px, 10 SSL / 20 fine-tune epochs, patience 6)
    "cpu": {},
    # one GPU: the small model at 224 px, longer schedules, autocast, channels_last (the committed
    # GPU table ran this preset with --size 160 --epochs-ft 40)
    "gpu": {"model": "small", "size": 224, "epochs_ssl": 100, "epochs_ft": 60, "batch_ssl": 256, "batch_ft": 64,
            "patience": 12, "device": "cuda", "amp": True, "channels_last": True},
    # `streamcad train ship --recipe v1`: both datasets at the runtime's 160 px; the epochs are upper
    # bounds that --ssl-budget / --ft-budget shrink; patience 8 trained train/results/v1_shipped_default.json
    "ship": {"size": 160, "epochs_ssl": 30, "epochs_ft": 40, "patience": 8},
}
# `streamcad train experiment --quick`: a smoke run of the whole pipeline, not a result
QUICK = {"epochs_ssl": 2, "epochs_ft": 3, "n_boot": 200, "ssl_steps_per_epoch": 10}


def preset(name: str, **overrides) -> ExperimentConfig:
    """PRESETS[name] with `overrides` on top; unknown preset names and keys are ConfigErrors."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    known = {f.name for f in fields(ExperimentConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown experiment config key(s) {unknown}; expected some of {sorted(known)}")
    return ExperimentConfig(**{**PRESETS[name], "preset": name, **overrides})


# ----------------------------------------------------------------------------- recipe v2


@dataclass(frozen=True)
class RecipeConfig:
    """The v2 fine-tuning recipe (train.cv). Fixed before the runs (docs/TRAINING.md, Protocol v2):
    run folders and committed results store these fields as they are, so a field is never renamed
    and a default never changes (a new field's default must reproduce the old behaviour)."""

    model: str = "lite0"
    size: int = 160  # the runtime's input; ORT 1 thread: 4.2 ms p50 for lite0 at 160 on this CPU
    epochs: int = 10  # fixed schedule: no early stopping, nothing chosen on held-out data
    batch_size: int = 32
    lr: float = 1e-3  # new parts (attention fusion, lesion head, classifier)
    backbone_lr: float = 2e-4  # the ImageNet backbone: smaller steps keep its features
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    ema_decay: float = 0.995  # per step; ~140-step half-life over ~550 steps
    mask_weight: float = 0.5  # lesion-map loss weight (BCE + soft Dice on the S/8 grid)
    calib_fraction: float = 0.15  # by group: temperature + threshold only
    target_sensitivity: float = 0.95  # operating point on the calibration split: margin for new scanners
    # > 0 (rule R2): the threshold's calibration sensitivity must also have this one-sided 95% lower bound. The shipped
    # model uses 0.9; 0.0 (the point rule) stays the default because every run before R2 was thresholded with it
    threshold_lcb: float = 0.0
    frozen_blocks: int = 3  # stem + first 3 MBConv blocks frozen (ImageNet edges; CPU time)
    train_stem: bool = False  # True (needs frozen_blocks=0): nothing frozen. False: the stem stays frozen, even at 0
    cross_attention: bool = True  # False: the ImageNet reference row (GAP of stage 4, no cross-scale fusion)
    label_fraction: float = 1.0  # label-efficiency rows: this share of the training part's groups (per class)
    init: str = "imagenet"  # "scratch": random init, no block frozen, the stem too unless train_stem (the label-efficiency reference)
    seed: int = 0
    threads: int = 1  # one thread per process; run folds as parallel processes
    zoom: float = 0.0  # share of each batch trained on the lesion zoom (streamcad/zoom.py); > 0 also scores full + zoom
    mixstyle: float = 0.0  # > 0: MixStyle (train/mixstyle.py) after the stride-4/8/16 stages, with this probability per batch
    max_crop_area: float = 1.0  # ScannerAugment's crop area is U(0.7, this) of the image; > 1 also zooms out (black around)
    trivial_augment: bool = False  # ScannerAugment + one TrivialAugment-style grey-level op per image (train.augment)
    n_boot: int = 1000
    # an SSL checkpoint (`streamcad train cv pretrain`: lite0 pretrained on ultrasound from ImageNet) whose stem, blocks and
    # cross-scale fusion start the fine-tune; "" = ImageNet alone. Refused when its image pool holds a test image or group
    ssl_init: str = ""

    def __post_init__(self):
        if self.size % 32 or self.epochs < 1 or self.batch_size < 2:
            raise ConfigError(f"size={self.size} (multiple of 32), epochs={self.epochs} (>= 1), batch_size={self.batch_size} (>= 2)")
        if not 0 < self.calib_fraction < 0.5 or not 0.5 <= self.target_sensitivity < 1:
            raise ConfigError(f"calib_fraction={self.calib_fraction} (0..0.5), target_sensitivity={self.target_sensitivity} (0.5..1)")
        if not 0 <= self.threshold_lcb < 1:
            raise ConfigError(f"threshold_lcb={self.threshold_lcb} (0..1: the lower bound the calibration sensitivity must vouch for; 0 = off)")
        if not 0 <= self.ema_decay < 1 or self.mask_weight < 0:
            raise ConfigError(f"ema_decay={self.ema_decay} (0..1), mask_weight={self.mask_weight} (>= 0)")
        if not 0 < self.label_fraction <= 1 or self.init not in ("imagenet", "scratch"):
            raise ConfigError(f"label_fraction={self.label_fraction} (0..1], init={self.init!r} ('imagenet' or 'scratch')")
        if self.train_stem and self.frozen_blocks:
            raise ConfigError(f"train_stem with frozen_blocks={self.frozen_blocks}: the stem trains only when no block is frozen (0)")
        if not 0 <= self.zoom < 1:
            raise ConfigError(f"zoom={self.zoom} (0..1: the share of each batch trained on the lesion zoom)")
        if not 0 <= self.mixstyle <= 1:
            raise ConfigError(f"mixstyle={self.mixstyle} (0..1: the probability per batch of mixing feature statistics)")
        if not 1.0 <= self.max_crop_area <= 4.0:
            raise ConfigError(f"max_crop_area={self.max_crop_area} (1..4: the largest crop, as a multiple of the image area)")
        if self.mixstyle and self.model != "lite0":
            raise ConfigError(f"mixstyle needs model='lite0' (its stage blocks are where it mixes), not {self.model!r}")
        if self.init == "scratch" and self.frozen_blocks:
            raise ConfigError(f"init='scratch' with frozen_blocks={self.frozen_blocks}: random blocks must train (frozen_blocks=0)")
        if self.ssl_init and (self.init != "imagenet" or self.model != "lite0"):
            raise ConfigError(f"ssl_init with init={self.init!r}, model={self.model!r}: an SSL start is lite0 pretrained from ImageNet "
                              "(init='imagenet', model='lite0')")

    @property
    def ema_decay_effective(self) -> float:
        """The per-step EMA decay. Fewer labels mean proportionally fewer steps at a fixed epoch count;
        decay ** (1 / label_fraction) keeps the weight the EMA gives the initial weights at the end of
        the schedule what it is with all labels (0.995 ** 550 ~ 0.06), instead of an average that is
        still mostly the initialisation after 60 steps. Exactly `ema_decay` at label_fraction = 1."""
        return self.ema_decay ** (1.0 / self.label_fraction)

    @classmethod
    def from_dict(cls, d: dict) -> RecipeConfig:
        return _from_dict(cls, d, "recipe", recipe="v2")

    def to_dict(self) -> dict:
        """The versioned form (config files, the ship report). Run folders keep storing asdict(cfg)
        under 'recipe' (what same_recipe compares), with CONFIG_VERSION beside it."""
        return {"version": CONFIG_VERSION, "recipe": "v2", **asdict(self)}


def same_recipe(saved: dict | None, cfg: RecipeConfig) -> bool:
    """A saved recipe dict equals cfg; keys added to RecipeConfig later count as their default."""
    if not isinstance(saved, dict) or set(saved) - set(asdict(cfg)):
        return False
    defaults = asdict(RecipeConfig())
    return {**defaults, **saved} == asdict(cfg)


# ----------------------------------------------------------------------------- files

_BY_RECIPE = {"v1": ExperimentConfig, "v2": RecipeConfig}


def config_to_dict(cfg: ExperimentConfig | RecipeConfig) -> dict:
    """-> {'version': CONFIG_VERSION, 'recipe': 'v1' | 'v2', **fields} (JSON / TOML ready)."""
    if not isinstance(cfg, (ExperimentConfig, RecipeConfig)):
        raise ConfigError(f"config_to_dict: {type(cfg).__name__}; expected ExperimentConfig (v1) or RecipeConfig (v2)")
    return cfg.to_dict()


def config_from_dict(d: dict) -> ExperimentConfig | RecipeConfig:
    """A versioned training config dict (config_to_dict's output, a JSON / TOML file) -> the typed config."""
    if not isinstance(d, dict) or "recipe" not in d:
        raise ConfigError(f"training config has no 'recipe' key; expected 'recipe' = one of {list(RECIPES)}")
    if d["recipe"] not in _BY_RECIPE:
        raise ConfigError(f"training config recipe={d['recipe']!r}; expected one of {list(RECIPES)}")
    if "version" not in d:
        raise ConfigError(f"training config has no 'version' key; expected 'version' = {CONFIG_VERSION}")
    return _BY_RECIPE[d["recipe"]].from_dict(d)
