"""`streamcad train SUBCOMMAND`: splits, pack, pretrain, finetune, experiment, table.

torch is imported only inside run(), so `streamcad --help` and the runtime never load it.
DDP: `torchrun --nproc_per_node=N -m streamcad.cli train pretrain ...` (train.ssl.pretrain sets
up the process group from torchrun's environment; only rank 0 writes files).

    streamcad train splits [--write]                     verify (or rewrite) train/splits/*.csv
    streamcad train pack --out data.npz --size 128       one file for a GPU machine without ../shared
    streamcad train pretrain --dataset busbra ...        SSL on the pool that EXCLUDES busbra
    streamcad train finetune --dataset busbra --fold 0 --init runs/ssl/ssl.pt
    streamcad train experiment --dataset busbra --folds 0 --quick
    streamcad train table                                results JSON -> docs/TRAINING.md table
    streamcad train gate engines/models/default.onnx     fit the out-of-domain gate into its manifest
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from streamcad.errors import ConfigError
from streamcad.train.config import (
    CV_DIR,
    CV_REPORT,
    DEFAULT_VARIANTS,
    EXPERIMENT_WORK,
    GATE_MODEL,
    OVERLAY_MODES,
    PRESETS,
    QUICK,
    RESULTS_DIR,
    SHIP_REPORT,
    SHIP_WORK,
    SHIPPED_MODEL,
    SSL_CANDIDATE,
    SSL_CV_REPORT,
    THRESHOLD_METHODS,
    VARIANTS,
    ExperimentConfig,
    FinetuneConfig,
    RecipeConfig,
    SSLConfig,
    preset,
)

HELP = "training: splits, pack, pretrain, finetune, experiment, table, gate"
log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=SSLConfig.device, help="auto | cpu | cuda | cuda:N (no silent fallback)")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (CUDA)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    p.add_argument("--seed", type=int, default=SSLConfig.seed)
    p.add_argument("--root", default=None, help="data root holding BUSI/, BUS-BRA/, video/ (default ../shared/data)")
    p.add_argument("--data-npz", default=None, help="packed data file (streamcad train pack) instead of --root")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="train_command", metavar="TRAIN_COMMAND")
    sub.required = True

    p = sub.add_parser("splits", help="verify the committed 5-fold splits against the data (or --write them)")
    p.add_argument("--root", default=None)
    p.add_argument("--write", action="store_true", help="recompute and overwrite train/splits/*.csv")

    p = sub.add_parser("pack", help="pack both datasets + the video pool at size S into one .npz")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=SSLConfig.size, help="the --size the training commands will be given")
    p.add_argument("--root", default=None)

    p = sub.add_parser("pretrain", help="SSL pretraining on the unlabeled pool (torchrun for DDP)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--dataset", choices=["busi", "busbra"], help="the dataset results will be reported on: EXCLUDED from the pool")
    g.add_argument("--pool-npy", help="a .npy file of uint8 (M, S, S) images to pretrain on")
    p.add_argument("--model", default=SSLConfig.model)
    p.add_argument("--no-multiscale", action="store_true")
    p.add_argument("--no-xattn", action="store_true")
    p.add_argument("--size", type=int, default=SSLConfig.size)
    p.add_argument("--epochs", type=int, default=SSLConfig.epochs)
    p.add_argument("--batch-size", type=int, default=SSLConfig.batch_size, help="global batch (split over DDP ranks)")
    p.add_argument("--lr", type=float, default=SSLConfig.lr)
    p.add_argument("--dense-weight", type=float, default=SSLConfig.dense_weight, help="0 = plain SimCLR")
    p.add_argument("--max-steps", type=int, default=SSLConfig.max_steps_per_epoch, help="cap steps per epoch (0 = whole pool)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--out", required=True)
    _common(p)

    p = sub.add_parser("finetune", help="fine-tune and score one fold")
    p.add_argument("--dataset", choices=["busi", "busbra"], required=True)
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--init", default=FinetuneConfig.init, help="'scratch' or an SSL checkpoint")
    p.add_argument("--model", default=FinetuneConfig.model)
    p.add_argument("--no-multiscale", action="store_true")
    p.add_argument("--no-xattn", action="store_true")
    p.add_argument("--size", type=int, default=FinetuneConfig.size)
    p.add_argument("--epochs", type=int, default=FinetuneConfig.epochs)
    p.add_argument("--batch-size", type=int, default=FinetuneConfig.batch_size)
    p.add_argument("--lr", type=float, default=FinetuneConfig.lr)
    p.add_argument("--patience", type=int, default=FinetuneConfig.patience)
    p.add_argument("--label-fraction", type=float, default=FinetuneConfig.label_fraction)
    p.add_argument("--overlay", choices=list(OVERLAY_MODES), default=FinetuneConfig.overlay)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--n-boot", type=int, default=FinetuneConfig.n_boot)
    p.add_argument("--threshold-method", choices=list(THRESHOLD_METHODS), default=FinetuneConfig.threshold_method,
                   help="operating point on the validation split: max Youden's J, or the highest threshold with sensitivity >= 0.9")
    p.add_argument("--out", required=True)
    _common(p)

    p = sub.add_parser("experiment", help="the paper's table: variants x folds -> train/results/*.json")
    p.add_argument("--dataset", choices=["busi", "busbra", "both"], required=True)
    p.add_argument("--folds", default=",".join(map(str, ExperimentConfig.folds)), help="comma-separated fold indices")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma-separated: {','.join(VARIANTS)}")
    p.add_argument("--preset", choices=[n for n in PRESETS if n != "ship"], default=None,
                   help="train.config.PRESETS: the flags below that are not given take the preset's value; "
                        "default: gpu when --device cuda, else cpu")
    p.add_argument("--model", default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--epochs-ssl", type=int, default=None)
    p.add_argument("--epochs-ft", type=int, default=None)
    p.add_argument("--batch-ssl", type=int, default=None)
    p.add_argument("--batch-ft", type=int, default=None)
    p.add_argument("--n-boot", type=int, default=None)
    p.add_argument("--ssl-steps", type=int, default=None,
                   help="cap steps per SSL epoch (random subset of the pool each epoch; default: the whole pool)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK['epochs_ssl']} SSL epochs of <= {QUICK['ssl_steps_per_epoch']} steps, "
                        f"{QUICK['epochs_ft']} fine-tune epochs, {QUICK['n_boot']} resamples")
    p.add_argument("--out", default=str(RESULTS_DIR), help="result JSONs + plots")
    p.add_argument("--work", default=str(EXPERIMENT_WORK), help="checkpoints, SSL cache, logs (not committed)")
    _common(p)

    p = sub.add_parser("cv", help="the v2 recipe (train/cv.py): run a fold / cross-dataset run, report, tta, compare")
    from streamcad.train.cv import add_arguments as _cv_arguments
    from streamcad.train.cv import add_recipe_arguments as _recipe_arguments

    _cv_arguments(p)

    p = sub.add_parser("ship", help="train + export the shipped default model (BUSI + BUS-BRA, fold 0 held out)")
    p.add_argument("--recipe", choices=["v2", "v1"], default="v2",
                   help="v2 (default): lite0 from train.cv, fold-0 run reused from --cv-dir; v1: tiny SSL recipe")
    p.add_argument("--cv-dir", default=str(CV_DIR), help="v2: folder of the train.cv runs")
    p.add_argument("--frozen-blocks", type=int, default=RecipeConfig.frozen_blocks,
                   help="v2: the recipe's frozen backbone blocks (as the fold-0 run of --cv-dir was trained)")
    _recipe_arguments(p)  # v2: the recipe the fold-0 run of --cv-dir was trained (or re-thresholded) with
    p.add_argument("--refresh", action="store_true",
                   help="v2: only put the finished --cv-report and benchmarks/results/ood_gate-default.json into the "
                        "shipped model's report, manifest metrics and card (no training, no export)")
    p.add_argument("--cv-report", default=None,
                   help=f"v2: pooled protocol report (streamcad train cv report) for the manifest and card (default "
                        f"{CV_REPORT.relative_to(REPO)}; with --compose {SSL_CV_REPORT.relative_to(REPO)}; with --refresh "
                        "the one the report names)")
    p.add_argument("--compose", action="store_true",
                   help="v2: ship --classifier's logits and lesion map with --gate-model's embedding and gate as one graph "
                        "(engines/compose.py; both already shipped with their reports, nothing trained or exported)")
    p.add_argument("--classifier", default=str(SSL_CANDIDATE.relative_to(REPO)), help="v2 --compose: the classifier's graph")
    p.add_argument("--gate-model", default=str(GATE_MODEL.relative_to(REPO)), help="v2 --compose: the gate model's graph")
    p.add_argument("--out", default=str(SHIPPED_MODEL))
    p.add_argument("--work", default=str(SHIP_WORK), help="v1: checkpoints and logs (not committed)")
    p.add_argument("--report", default=str(SHIP_REPORT))
    ship1 = preset("ship")  # v1: train.config.PRESETS['ship']
    p.add_argument("--model", default=ship1.model, help="v1: tiny keeps the CPU runtime real-time")
    p.add_argument("--size", type=int, default=ship1.size, help="v1")
    p.add_argument("--epochs-ssl", type=int, default=ship1.epochs_ssl, help="v1: upper bound (see --ssl-budget)")
    p.add_argument("--epochs-ft", type=int, default=ship1.epochs_ft, help="v1: upper bound (see --ft-budget)")
    p.add_argument("--batch-ssl", type=int, default=ship1.batch_ssl, help="v1")
    p.add_argument("--batch-ft", type=int, default=ship1.batch_ft, help="v1")
    p.add_argument("--ssl-budget", type=float, default=None, help="seconds: fit the SSL schedule into this")
    p.add_argument("--ft-budget", type=float, default=None, help="seconds: fit the fine-tune schedule into this")
    p.add_argument("--n-boot", type=int, default=ship1.n_boot)
    _common(p)

    p = sub.add_parser("gate", help="fit + calibrate the out-of-domain gate of an exported model into its manifest")
    from streamcad.train.ood import add_arguments as _gate_arguments

    _gate_arguments(p)
    p.add_argument("--remove", action="store_true", help="remove the gate from the manifest instead")
    p.add_argument("--root", default=None, help="data root holding BUSI/, BUS-BRA/ (default ../shared/data)")
    p.add_argument("--data-npz", default=None, help="packed data file (streamcad train pack) instead of --root")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")

    p = sub.add_parser("table", help="render the results JSONs into docs/TRAINING.md (between markers)")
    p.add_argument("--results", default=str(RESULTS_DIR))
    p.add_argument("--doc", default=str(REPO / "docs" / "TRAINING.md"))
    p.add_argument("--print", action="store_true", help="print the table instead of editing the doc")


def _torch_setup(args) -> None:
    import torch

    if args.threads:
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads}; expected >= 1")
        torch.set_num_threads(args.threads)


def _arrays(args, dataset: str, size: int):
    from streamcad.train.data import load_arrays, load_npz

    if args.data_npz:
        packed, _ = load_npz(args.data_npz)
        arrays = packed[dataset]
        if arrays.images.shape[1] != size:
            raise ConfigError(f"{args.data_npz} was packed at size {arrays.images.shape[1]}; --size is {size}")
        return arrays
    return load_arrays(dataset, size, args.root)


def config_from_args(args) -> SSLConfig | FinetuneConfig | ExperimentConfig:
    """The typed config (train.config) that parsed `streamcad train pretrain | finetune | experiment |
    ship --recipe v1` arguments run with; the flags' defaults are its fields' (the experiment's unset
    flags: its preset's)."""
    cmd = args.train_command
    if cmd == "pretrain":
        return SSLConfig(
            model=args.model, multiscale=not args.no_multiscale, cross_attention=not args.no_xattn, size=args.size,
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, dense_weight=args.dense_weight,
            max_steps_per_epoch=args.max_steps, seed=args.seed, device=args.device, amp=args.amp,
            channels_last=args.channels_last,
        )
    if cmd == "finetune":
        return FinetuneConfig(
            model=args.model, size=args.size, init=args.init, multiscale=not args.no_multiscale,
            cross_attention=not args.no_xattn, label_fraction=args.label_fraction, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, patience=args.patience, device=args.device, amp=args.amp,
            channels_last=args.channels_last, seed=args.seed, augment=not args.no_augment, overlay=args.overlay,
            n_boot=args.n_boot, threshold_method=args.threshold_method,
        )
    if cmd == "ship" and args.recipe == "v1":
        return preset("ship", model=args.model, size=args.size, epochs_ssl=args.epochs_ssl, epochs_ft=args.epochs_ft,
                      batch_ssl=args.batch_ssl, batch_ft=args.batch_ft, device=args.device, amp=args.amp,
                      channels_last=args.channels_last, n_boot=args.n_boot, seed=args.seed)
    if cmd != "experiment":
        raise ConfigError(f"`streamcad train {cmd}` has no v1 training config")
    try:
        folds = tuple(int(f) for f in args.folds.split(",") if f.strip())
    except ValueError as exc:
        raise ConfigError(f"--folds {args.folds!r}; expected comma-separated integers like 0,1,2") from exc
    name = args.preset or ("gpu" if args.device.startswith("cuda") else "cpu")
    over = {"folds": folds, "device": args.device, "seed": args.seed}
    if name == "cpu":
        over.update(amp=args.amp, channels_last=args.channels_last)
    for key in ("model", "size", "epochs_ssl", "epochs_ft", "batch_ssl", "batch_ft", "n_boot"):
        v = getattr(args, key)
        if v is not None:
            over[key] = v
    if args.quick:
        over = {**QUICK, **over}  # flags given win over the smoke run's values
    if args.ssl_steps is not None:
        if args.ssl_steps < 0:
            raise ConfigError(f"--ssl-steps {args.ssl_steps}; expected >= 0 (0 = the whole pool)")
        over["ssl_steps_per_epoch"] = args.ssl_steps
    return preset(name, **over)


def _run_splits(args) -> int:
    from streamcad.train.data.splits import (
        DATASETS,
        compute_split,
        format_split,
        split_path,
        write_split,
    )

    bad = []
    for ds in DATASETS:
        if args.write:
            log.info("wrote %s", write_split(ds, args.root))
            continue
        fresh = format_split(compute_split(ds, args.root))
        committed = split_path(ds).read_text()
        if fresh != committed:
            bad.append(ds)
        print(f"{ds}: {'OK, committed split reproduces' if fresh == committed else 'DIFFERS from the recomputed split'}")
    if bad:
        raise ConfigError(f"committed split(s) {bad} differ from the data; rerun with --write and review the diff")
    return 0


def _run_pretrain(args) -> int:
    import numpy as np

    from streamcad.train.ssl import pretrain

    cfg = config_from_args(args)
    if args.pool_npy:
        try:
            pool = np.load(args.pool_npy, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--pool-npy {args.pool_npy} unreadable: {exc}") from exc
    elif args.data_npz:
        from streamcad.train.data import load_npz, pool_from_packed

        packed, video = load_npz(args.data_npz)
        pool = pool_from_packed(packed, video, exclude=args.dataset)
    else:
        from streamcad.train.data import unlabeled_pool

        pool = unlabeled_pool(exclude=args.dataset, size=args.size, root=args.root)
    rank = int(os.environ.get("RANK", "0"))  # read before: pretrain() tears the process group down
    path = pretrain(cfg, pool, args.out, resume=args.resume)
    if rank == 0:
        print(f"SSL checkpoint: {path}")
    return 0


def _run_finetune(args) -> int:
    from streamcad.train.finetune import finetune

    cfg = config_from_args(args)
    r = finetune(cfg, _arrays(args, args.dataset, args.size), args.fold, args.out)
    m = r["metrics"]
    print(json.dumps({"fold": r["fold"], "auc": m["auc"], "temperature": r["temperature"], "threshold": r["threshold"],
                      "best_epoch": r["best_epoch"], "wall_s": round(r["wall_s"], 1), "checkpoint": r["checkpoint"]}))
    return 0


def _run_experiment(args) -> int:
    from streamcad.train.experiment import run_experiment

    cfg = config_from_args(args)
    datasets = ["busi", "busbra"] if args.dataset == "both" else [args.dataset]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    paths = run_experiment(datasets, variants, cfg, args.out, args.work, args.data_npz, args.root)
    for p in paths:
        print(p)
    return 0


def _run_gate(args) -> int:
    """Fit the out-of-domain gate on ONNX Runtime (no torch) and rewrite the model's manifest."""
    from streamcad.manifest import read_manifest, verify_artifact, write_manifest
    from streamcad.train.ood import calibrate

    if args.remove:
        m = read_manifest(args.model)
        verify_artifact(args.model, m)
        d = m.to_fields()
        d["ood"] = {}
        write_manifest(args.model, **d)
        print(f"removed the out-of-domain gate from {Path(args.model).with_suffix('.json')}")
        return 0
    ood = calibrate(args.model, root=args.root, data_npz=args.data_npz, test_fold=args.test_fold,
                    target_rate=args.target_rate, n_axes=args.axes, seed=0,
                    write=not args.dry_run, threads=args.threads, capture_augment=args.capture_augment,
                    raw_images=args.raw_images, threshold_rule=args.threshold_rule)
    r = ood["rates"]
    print(f"gate D={ood['dim']} threshold {ood['threshold']:.4g} ({ood['chosen']}); "
          f"breast training frames flagged: out of fit {100 * r['out_of_fit_flagged']:.1f}%, in fit {100 * r['fit_flagged']:.1f}%"
          + (" (dry run: manifest unchanged)" if args.dry_run else f"; written to {Path(args.model).with_suffix('.json')}"))
    return 0


def run(args) -> int:
    """Dispatch `streamcad train TRAIN_COMMAND`; torch is imported here, not at module level."""
    cmd = args.train_command
    if cmd == "splits":
        return _run_splits(args)
    if cmd == "pack":
        from streamcad.train.data import save_npz

        print(save_npz(args.out, args.size, args.root))
        return 0
    if cmd == "table":
        from streamcad.train.experiment import render_tables, update_doc_table

        if args.print:
            print(render_tables(args.results))
        else:
            print(update_doc_table(args.doc, args.results))
        return 0
    if cmd == "gate":
        return _run_gate(args)
    if cmd == "cv":
        from streamcad.train.cv import run_command

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        return run_command(args)
    _torch_setup(args)
    if cmd == "pretrain":
        return _run_pretrain(args)
    if cmd == "finetune":
        return _run_finetune(args)
    if cmd == "experiment":
        return _run_experiment(args)
    if cmd == "ship" and args.recipe == "v2" and args.refresh:
        from streamcad.train.release import refresh_v2

        print(refresh_v2(args.out, args.cv_report, args.report))
        return 0
    if cmd == "ship" and args.recipe == "v2" and args.compose:
        from streamcad.train.release import ship_composite

        report = ship_composite(args.classifier, args.gate_model, args.out, args.report, args.cv_report or SSL_CV_REPORT)
        print(f"{args.out}: {report['composed']['classifier']['sha256'][:12]} + {report['composed']['gate_model']['sha256'][:12]}")
        return 0
    if cmd == "ship" and args.recipe == "v2":
        from streamcad.train.cv import recipe_overrides
        from streamcad.train.release import ship_v2

        cfg = RecipeConfig(seed=args.seed, frozen_blocks=args.frozen_blocks, **recipe_overrides(args))
        report = ship_v2(args.out, args.cv_dir, args.cv_report or CV_REPORT, args.report, root=args.root, n_boot=args.n_boot, cfg=cfg)
        for ds, m in report["metrics"].items():
            print(f"{ds} fold 0: AUC {m['auc']['value']:.3f} [{m['auc']['ci_low']:.3f}, {m['auc']['ci_high']:.3f}]")
        return 0
    if cmd == "ship":
        from streamcad.train.ship import ship

        report = ship(args.out, args.work, config_from_args(args), data_npz=args.data_npz, root=args.root, ssl_budget_s=args.ssl_budget,
                      ft_budget_s=args.ft_budget, report_path=args.report)
        for ds, m in report["metrics"].items():
            print(f"{ds}: AUC {m['auc']['value']:.3f} [{m['auc']['ci_low']:.3f}, {m['auc']['ci_high']:.3f}]")
        return 0
    raise ConfigError(f"unknown train command {cmd!r}")  # argparse choices make this unreachable


if __name__ == "__main__":  # python -m streamcad.train.cli ... (same as streamcad train ...)
    from streamcad.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
