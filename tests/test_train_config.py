"""train/config.py is the one source of the training defaults: every `streamcad train` flag's
default is its config field (and parsing no flags builds exactly the default config), the
versioned dicts round-trip, bad keys and values are one-line errors naming them, and the presets
are the settings the committed results were produced with. No torch needed."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from streamcad.errors import ConfigError
from streamcad.train import cli as train_cli
from streamcad.train.config import (
    CONFIG_VERSION,
    DEFAULT_VARIANTS,
    GATE_MODEL,
    QUICK,
    SSL_CANDIDATE,
    ExperimentConfig,
    FinetuneConfig,
    RecipeConfig,
    SSLConfig,
    config_from_dict,
    config_to_dict,
    preset,
    same_recipe,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "train" / "results"


def _parsers() -> dict[str, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = dict(sub.choices)
    cv_sub = next(a for a in out["cv"]._actions if isinstance(a, argparse._SubParsersAction))
    out["cv run"] = cv_sub.choices["run"]
    return out


def _defaults(p: argparse.ArgumentParser) -> dict:
    return {a.dest: a.default for a in p._actions if a.option_strings and a.dest != "help"}


SHIP = preset("ship")
# flag dest -> the config value its default must be (negated flags: the field's negation)
EXPECTED = {
    "pretrain": {
        "model": SSLConfig.model, "size": SSLConfig.size, "epochs": SSLConfig.epochs, "batch_size": SSLConfig.batch_size,
        "lr": SSLConfig.lr, "dense_weight": SSLConfig.dense_weight, "max_steps": SSLConfig.max_steps_per_epoch,
        "no_multiscale": not SSLConfig.multiscale, "no_xattn": not SSLConfig.cross_attention,
        "device": SSLConfig.device, "seed": SSLConfig.seed, "amp": SSLConfig.amp, "channels_last": SSLConfig.channels_last,
    },
    "finetune": {
        "init": FinetuneConfig.init, "model": FinetuneConfig.model, "size": FinetuneConfig.size,
        "epochs": FinetuneConfig.epochs, "batch_size": FinetuneConfig.batch_size, "lr": FinetuneConfig.lr,
        "patience": FinetuneConfig.patience, "label_fraction": FinetuneConfig.label_fraction,
        "overlay": FinetuneConfig.overlay, "n_boot": FinetuneConfig.n_boot,
        "threshold_method": FinetuneConfig.threshold_method, "no_augment": not FinetuneConfig.augment,
        "no_multiscale": not FinetuneConfig.multiscale, "no_xattn": not FinetuneConfig.cross_attention,
        "device": FinetuneConfig.device, "seed": FinetuneConfig.seed, "amp": FinetuneConfig.amp,
        "channels_last": FinetuneConfig.channels_last,
    },
    "experiment": {  # None: the preset's value (the None-ness itself is checked: a literal would shadow the preset)
        "folds": ",".join(map(str, ExperimentConfig.folds)), "variants": ",".join(DEFAULT_VARIANTS),
        "model": None, "size": None, "epochs_ssl": None, "epochs_ft": None, "batch_ssl": None, "batch_ft": None,
        "n_boot": None, "ssl_steps": None, "preset": None, "quick": False,
        "device": ExperimentConfig.device, "seed": ExperimentConfig.seed, "amp": ExperimentConfig.amp,
        "channels_last": ExperimentConfig.channels_last,
    },
    "ship": {
        "recipe": "v2", "model": SHIP.model, "size": SHIP.size, "epochs_ssl": SHIP.epochs_ssl, "epochs_ft": SHIP.epochs_ft,
        "batch_ssl": SHIP.batch_ssl, "batch_ft": SHIP.batch_ft, "n_boot": SHIP.n_boot, "device": SHIP.device,
        "seed": SHIP.seed, "amp": SHIP.amp, "channels_last": SHIP.channels_last, "ssl_budget": None, "ft_budget": None,
        "refresh": False, "zoom": RecipeConfig.zoom, "frozen_blocks": RecipeConfig.frozen_blocks,
        "train_stem": RecipeConfig.train_stem, "mixstyle": RecipeConfig.mixstyle,
        "max_crop_area": RecipeConfig.max_crop_area, "trivial_augment": RecipeConfig.trivial_augment,
        "mask_weight": RecipeConfig.mask_weight, "ema_decay": RecipeConfig.ema_decay,
        "threshold_lcb": RecipeConfig.threshold_lcb, "ssl_init": RecipeConfig.ssl_init,
    },
    "cv run": {
        "epochs": RecipeConfig.epochs, "seed": RecipeConfig.seed, "label_fraction": RecipeConfig.label_fraction,
        "init": RecipeConfig.init, "no_cross_attention": not RecipeConfig.cross_attention, "zoom": RecipeConfig.zoom,
        "train_stem": RecipeConfig.train_stem, "mixstyle": RecipeConfig.mixstyle,
        "max_crop_area": RecipeConfig.max_crop_area, "trivial_augment": RecipeConfig.trivial_augment,
        "mask_weight": RecipeConfig.mask_weight, "ema_decay": RecipeConfig.ema_decay,
        "threshold_lcb": RecipeConfig.threshold_lcb, "ssl_init": RecipeConfig.ssl_init,
        "frozen_blocks": None,  # None: the init's value (RecipeConfig.frozen_blocks, 0 from scratch)
    },
    "pack": {"size": SSLConfig.size},
}
# flags that are no training setting: paths, data sources, process settings, run selectors
NOT_CONFIG = {"out", "root", "data_npz", "threads", "resume", "dataset", "pool_npy", "fold", "work", "report",
              "cv_dir", "cv_report", "mode", "source",
              "compose", "classifier", "gate_model"}  # ship --compose: two committed graphs (train.config paths, below)


@pytest.mark.parametrize("cmd", sorted(EXPECTED))
def test_every_training_flag_default_is_the_config_field(cmd):
    defaults = _defaults(_parsers()[cmd])
    unchecked = sorted(set(defaults) - set(EXPECTED[cmd]) - NOT_CONFIG)
    assert not unchecked, f"`streamcad train {cmd}` flags {unchecked} are not tied to a train.config field here"
    for dest, want in EXPECTED[cmd].items():
        got = defaults[dest]
        assert got == want and type(got) is type(want), f"`streamcad train {cmd}` --{dest.replace('_', '-')}: {got!r} != {want!r}"


def _parse(*argv: str):
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_no_flags_build_exactly_the_default_configs():
    from streamcad.train.cv import recipe_from_args

    assert train_cli.config_from_args(_parse("pretrain", "--dataset", "busi", "--out", "x")) == SSLConfig()
    assert train_cli.config_from_args(_parse("finetune", "--dataset", "busi", "--fold", "0", "--out", "x")) == FinetuneConfig()
    assert train_cli.config_from_args(_parse("experiment", "--dataset", "busi")) == ExperimentConfig() == preset("cpu")
    gpu = train_cli.config_from_args(_parse("experiment", "--dataset", "busi", "--device", "cuda"))
    assert gpu == preset("gpu")
    assert train_cli.config_from_args(_parse("ship", "--recipe", "v1")) == SHIP
    assert recipe_from_args(_parse("cv", "run", "--mode", "cv", "--fold", "0", "--out", "x")) == RecipeConfig()
    # v2 ship shares --seed / --n-boot with v1: their defaults must be the v2 recipe's too
    ship_args = _parse("ship")
    assert (ship_args.seed, ship_args.n_boot) == (RecipeConfig.seed, RecipeConfig.n_boot)
    # ship --compose: the shipped composite's parents
    assert (REPO / ship_args.classifier, REPO / ship_args.gate_model) == (SSL_CANDIDATE, GATE_MODEL)


def test_quick_and_explicit_flags_override_the_preset():
    cfg = train_cli.config_from_args(_parse("experiment", "--dataset", "busi", "--quick", "--epochs-ft", "7"))
    assert cfg == preset("cpu", **{**QUICK, "epochs_ft": 7})
    assert cfg.epochs_ssl == QUICK["epochs_ssl"] != ExperimentConfig.epochs_ssl
    cfg = train_cli.config_from_args(_parse("experiment", "--dataset", "busi", "--preset", "gpu", "--device", "cuda",
                                            "--size", "160", "--folds", "0,2"))
    assert cfg == dataclasses.replace(preset("gpu"), size=160, folds=(0, 2))


def test_stage_configs_follow_the_experiment_config():
    cfg = preset("gpu", ssl_steps_per_epoch=13)
    s, f = cfg.ssl_config(), cfg.finetune_config(init="runs/ssl.pt")
    assert (s.model, s.size, s.epochs, s.batch_size, s.max_steps_per_epoch, s.device, s.amp) == \
        ("small", 224, 100, 256, 13, "cuda", True)
    assert (f.model, f.size, f.epochs, f.batch_size, f.patience, f.init, f.channels_last) == \
        ("small", 224, 60, 64, 12, "runs/ssl.pt", True)
    assert ExperimentConfig().ssl_config() == SSLConfig() and ExperimentConfig().finetune_config() == FinetuneConfig()


@pytest.mark.parametrize("cfg", [
    ExperimentConfig(), preset("gpu"), preset("ship", folds=(0, 3), lr_ft=3e-4), RecipeConfig(),
    RecipeConfig(label_fraction=0.25, init="scratch", frozen_blocks=0, epochs=12),
], ids=["cpu", "gpu", "ship", "v2", "v2-scratch"])
def test_versioned_dict_round_trips_through_json(cfg):
    d = config_to_dict(cfg)
    assert d["version"] == CONFIG_VERSION and d["recipe"] == ("v1" if isinstance(cfg, ExperimentConfig) else "v2")
    back = config_from_dict(json.loads(json.dumps(d)))
    assert back == cfg and type(back) is type(cfg)


def test_stage_configs_round_trip():
    for cfg in (SSLConfig(), SSLConfig(size=64, dense_weight=0.0), FinetuneConfig(), FinetuneConfig(overlay="add", lr=5e-4)):
        assert type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(("change", "message"), [
    ({"epochs_fine": 3}, r"^unknown experiment config key\(s\) \['epochs_fine'\]; expected some of \["),
    ({"epochs_ft": "20"}, r"^experiment config key 'epochs_ft'='20'; expected int$"),
    ({"amp": 1}, r"^experiment config key 'amp'=1; expected bool$"),
    ({"folds": [0, "1"]}, r"^experiment config key 'folds'=\[0, '1'\]; expected tuple\[int, \.\.\.\]$"),
    ({"folds": [0, 7]}, r"^folds=\[0, 7\]; expected some of 0\.\.4$"),
    ({"preset": "tpu"}, r"^preset='tpu'; expected one of \['cpu', 'gpu', 'ship'\]$"),
    ({"version": 2}, r"^experiment config version=2; this code reads version 1$"),
    ({"recipe": "v3"}, r"^training config recipe='v3'; expected one of \['v1', 'v2'\]$"),
])
def test_bad_key_or_value_is_one_line_naming_it(change, message):
    with pytest.raises(ConfigError, match=message) as e:
        config_from_dict({**config_to_dict(ExperimentConfig()), **change})
    assert "\n" not in str(e.value)


def test_bad_v2_and_envelope_errors():
    with pytest.raises(ConfigError, match=r"^unknown recipe config key\(s\) \['ema'\]"):
        config_from_dict({**config_to_dict(RecipeConfig()), "ema": 0.9})
    with pytest.raises(ConfigError, match=r"^recipe config key 'frozen_blocks'=2\.5; expected int$"):
        config_from_dict({**config_to_dict(RecipeConfig()), "frozen_blocks": 2.5})
    with pytest.raises(ConfigError, match=r"init='scratch' with frozen_blocks=3"):
        config_from_dict({**config_to_dict(RecipeConfig()), "init": "scratch"})
    with pytest.raises(ConfigError, match=r"recipe config recipe='v1'; expected 'v2'"):
        RecipeConfig.from_dict({"recipe": "v1"})
    with pytest.raises(ConfigError, match=r"no 'version' key"):
        config_from_dict({"recipe": "v2"})
    with pytest.raises(ConfigError, match=r"no 'recipe' key"):
        config_from_dict({"version": 1})
    with pytest.raises(ConfigError, match=r"unknown experiment config key\(s\) \['patiense'\]"):
        preset("cpu", patiense=3)
    with pytest.raises(ConfigError, match=r"unknown preset 'laptop'"):
        preset("laptop")


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_presets_are_what_the_committed_results_ran_with():
    """Each committed v1 result JSON's 'experiment' is its preset plus only the flags its docs name."""
    fields = {f.name for f in dataclasses.fields(ExperimentConfig)}
    stored = {p: _json(p)["experiment"] for p in sorted(RESULTS.rglob("*.json")) if "experiment" in _json(p)}
    assert len(stored) >= 30
    for p, e in stored.items():
        cfg = ExperimentConfig.from_dict(e)  # every stored config still reads
        assert set(e) <= fields | {"version", "recipe"}
        base = preset(e["preset"], folds=cfg.folds, device=cfg.device, amp=cfg.amp, channels_last=cfg.channels_last)
        # docs/TRAINING.md: GPU table `--size 160 --epochs-ft 40`; CPU tables `--epochs-ssl 5 --epochs-ft 12 [--ssl-steps 13]`
        flags = {"size": 160, "epochs_ft": 40} if e["preset"] == "gpu" else \
            {"epochs_ssl": 5, "epochs_ft": 12, "ssl_steps_per_epoch": cfg.ssl_steps_per_epoch}
        assert cfg == dataclasses.replace(base, **flags), p
        ft = FinetuneConfig.from_dict(_json(p)["finetune_config"])
        assert (ft.patience, ft.lr, ft.batch_size) == (cfg.patience, cfg.lr_ft, cfg.batch_ft)
        ssl = _json(p)["ssl"]
        if ssl:
            assert SSLConfig.from_dict(ssl["config"]).lr == SSLConfig.lr
    # the v1 shipped model: the ship preset's size, batches and patience (its epochs were budget-fitted)
    v1 = _json(RESULTS / "v1_shipped_default.json")
    ft, ssl = FinetuneConfig.from_dict(v1["finetune_config"]), SSLConfig.from_dict(v1["ssl_config"])
    assert (ft.size, ft.patience, ft.batch_size, ssl.batch_size) == (SHIP.size, SHIP.patience, SHIP.batch_ft, SHIP.batch_ssl)
    assert ft.epochs <= SHIP.epochs_ft and ssl.epochs <= SHIP.epochs_ssl
    # the shipped composite's two v2 models: RecipeConfig() with rule R2's threshold (cv rethreshold
    # --threshold-lcb 0.9), the classifier's backbone started from its fold-0 SSL checkpoint
    ssl = "runs/ssl/lite0-dcl/cv/fold0/ssl.pt"
    assert same_recipe(_json(RESULTS / "shipped_default.json")["recipe"], RecipeConfig(threshold_lcb=0.9, ssl_init=ssl))
    assert same_recipe(_json(RESULTS / "v2" / "gate-model" / "ship-report.json")["recipe"], RecipeConfig(threshold_lcb=0.9))
