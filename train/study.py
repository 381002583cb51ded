"""Studies over several v2 run folders: seed-to-seed spread (and the seed ensemble it gives for
free), and label efficiency (ImageNet init vs scratch at 10/25/50/100% of the labels).

    seed run folders (runs/cv/lite0 = seed 0, lite0-s1, lite0-s2) --pooled out-of-fold p(malignant)
        on the images every folder scored--> per seed: AUC [cluster-bootstrap CI]; spread (max - min,
        SD); paired difference of each seed vs the first; the ensemble (mean p over seeds) vs the first
    label-efficiency folders (le-imagenet-fN, le-scratch-fN; 100% = the seed-0 and le-scratch-f100
        folders) --> per fraction and dataset: AUC of each init and the paired difference
        imagenet - scratch [CI]

Every number is pooled over the folds that all compared folders have finished (stated in the
JSON as `folds`), judged by the same paired cluster bootstrap as `streamcad train cv compare`
(patients for BUS-BRA, duplicate groups for BUSI). Nothing here chooses anything: these read test
folds and only report.

    python -m streamcad.train.study seeds runs/cv/lite0 runs/cv/lite0-s1 runs/cv/lite0-s2 \\
        --json train/results/v2/seeds.json
    python -m streamcad.train.study label-efficiency runs/cv --json train/results/v2/label_efficiency.json
    python -m streamcad.train.study views runs/cv/lite0-zoom --baseline runs/cv/lite0 --json train/results/v2/views-zoom.json
    python -m streamcad.train.study archive runs/cv/lite0 runs/cv/lite0-s1 ... --out train/results/v2/runs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from streamcad.errors import ConfigError
from streamcad.train.cv import DATASETS, _auc_diff_paired, _oof, dataset_of

FRACTIONS = (10, 25, 50, 100)


def _aligned(dirs: list[Path]) -> tuple[dict, np.ndarray, list[int]]:
    """The first folder's out-of-fold table restricted to images every folder scored, and the
    (n_dirs, n_images) p(malignant) matrix in that order."""
    oofs = [_oof(d) for d in dirs]
    missing = [str(d) for d, o in zip(dirs, oofs, strict=True) if o is None]
    if missing:
        raise ConfigError(f"no finished fold (cv/fold*/result.json) under {', '.join(missing)}")
    folds = sorted(set.intersection(*(set(o["folds"]) for o in oofs)))
    if not folds:
        raise ConfigError(f"the folders {[str(d) for d in dirs]} have no finished fold in common")
    base = oofs[0]
    keep = np.isin(base["ids"], np.concatenate([r["predictions"]["ids"] for r in base["runs"] if r["fold"] in folds]))
    for o in oofs[1:]:
        keep &= np.isin(base["ids"], o["ids"])
    table = {k: base[k][keep] for k in ("ids", "groups", "labels")}
    ps = []
    for o in oofs:
        pmap = dict(zip(o["ids"].tolist(), o["p"].tolist(), strict=True))
        ps.append(np.array([pmap[i] for i in table["ids"]]))
    return table, np.stack(ps), folds


def _auc_ci(y, p, groups, n_boot, seed) -> dict:
    from streamcad.train.evaluate import group_bootstrap_auc

    a = group_bootstrap_auc(np.where(y == 1, 2, 1), p, groups, n_boot=n_boot, seed=seed)
    return {"value": a["value"], "ci_low": a["ci_low"], "ci_high": a["ci_high"]}


def _diff(y, a, b, groups, n_boot, seed) -> dict:
    v, lo, hi = _auc_diff_paired(y, a, b, groups, n_boot, seed)
    return {"auc_difference": v, "ci_low": lo, "ci_high": hi,
            "decision": "a better" if lo > 0 else ("b better" if hi < 0 else "no difference (CI contains 0)")}


def _per_dataset(table: dict):
    ds = dataset_of(table["ids"])
    for d in DATASETS:
        keep = (ds == d) & (table["labels"] != 0)
        if keep.any():
            yield d, keep, (table["labels"][keep] == 2).astype(int), table["groups"][keep]


def seed_study(dirs: list[str | Path], n_boot: int = 1000, seed: int = 0) -> dict:
    """Seed spread of the recipe and the seed ensemble, over the folds all seed folders finished."""
    dirs = [Path(d) for d in dirs]
    if len(dirs) < 2:
        raise ConfigError(f"seeds: give at least two run folders (got {len(dirs)})")
    table, ps, folds = _aligned(dirs)
    out: dict = {"runs": [str(d) for d in dirs], "folds": folds}
    for d, keep, y, groups in _per_dataset(table):
        per_seed = [_auc_ci(y, p[keep], groups, n_boot, seed) for p in ps]
        values = np.array([a["value"] for a in per_seed])
        ens = ps[:, keep].mean(axis=0)
        out[d] = {
            "n": int(keep.sum()),
            "per_seed": per_seed,
            "spread": {"max_minus_min": float(values.max() - values.min()), "sd": float(values.std(ddof=1))},
            "paired_vs_first": [_diff(y, p[keep], ps[0][keep], groups, n_boot, seed) for p in ps[1:]],
            "ensemble": _auc_ci(y, ens, groups, n_boot, seed),
            "ensemble_vs_first": _diff(y, ens, ps[0][keep], groups, n_boot, seed),
        }
    return out


def label_efficiency_study(root: str | Path, n_boot: int = 1000, seed: int = 0) -> dict:
    """ImageNet init vs scratch at each label fraction whose two folders exist under root."""
    root = Path(root)
    out: dict = {"root": str(root), "fractions": {}}
    for f in FRACTIONS:
        ours = root / ("lite0" if f == 100 else f"le-imagenet-f{f}")
        scratch = root / f"le-scratch-f{f}"
        if not (list(ours.glob("cv/fold*/result.json")) and list(scratch.glob("cv/fold*/result.json"))):
            continue
        table, ps, folds = _aligned([ours, scratch])
        row: dict = {"imagenet": str(ours), "scratch": str(scratch), "folds": folds}
        for d, keep, y, groups in _per_dataset(table):
            row[d] = {"n": int(keep.sum()),
                      "imagenet": _auc_ci(y, ps[0][keep], groups, n_boot, seed),
                      "scratch": _auc_ci(y, ps[1][keep], groups, n_boot, seed),
                      "imagenet_minus_scratch": _diff(y, ps[0][keep], ps[1][keep], groups, n_boot, seed)}
        out["fractions"][str(f)] = row
    if not out["fractions"]:
        raise ConfigError(f"label-efficiency: no le-imagenet-fN / le-scratch-fN pair with a finished fold under {root}")
    return out


def views_study(run_dir: str | Path, baseline: str | Path, n_boot: int = 1000, seed: int = 0) -> dict:
    """A run scored on two views (the lesion zoom: `probs` = the mean of the views' logits, beside
    `probs_full` and `probs_zoom`) -> pooled AUC of each, and each paired against the baseline
    folder, over the folds both finished. Analysis only: the decision is on `probs`."""
    run_dir, baseline = Path(run_dir), Path(baseline)
    table, ps, folds = _aligned([baseline, run_dir])
    res = [json.loads(p.read_text()) for p in sorted(run_dir.glob("cv/fold*/result.json"))]
    views = sorted(k for k in res[0]["predictions"] if k.startswith("probs_")) if res else []
    if not views:
        raise ConfigError(f"views: {run_dir} stores no per-view probabilities (probs_*); expected a --zoom run")
    per_view = {}
    for v in views:
        pmap = {i: p[2] for r in res for i, p in zip(r["predictions"]["ids"], r["predictions"][v], strict=True)}
        per_view[v.removeprefix("probs_")] = np.array([pmap[i] for i in table["ids"]])
    out: dict = {"run": str(run_dir), "baseline": str(baseline), "folds": folds}
    for d, keep, y, groups in _per_dataset(table):
        row = {"n": int(keep.sum()), "baseline": _auc_ci(y, ps[0][keep], groups, n_boot, seed),
               "mean": _auc_ci(y, ps[1][keep], groups, n_boot, seed),
               "mean_minus_baseline": _diff(y, ps[1][keep], ps[0][keep], groups, n_boot, seed)}
        for v, pv in per_view.items():
            row[v] = _auc_ci(y, pv[keep], groups, n_boot, seed)
            row[f"{v}_minus_baseline"] = _diff(y, pv[keep], ps[0][keep], groups, n_boot, seed)
        out[d] = row
    return out


def render_views(rep: dict) -> str:
    first = rep[next(d for d in DATASETS if d in rep)]
    views = [k for k in first if k != "mean" and f"{k}_minus_baseline" in first]  # 'full', 'zoom'
    lines = [f"Views of {rep['run']} vs {rep['baseline']}; folds {rep['folds']}", "",
             "| dataset | baseline | mean of views (judged) | " + " | ".join(views) + " |", "|---|---|---|" + "---|" * len(views)]
    for d in DATASETS:
        if d in rep:
            r = rep[d]
            cells = [f"{_ci(r[v])}, {_dci(r[f'{v}_minus_baseline'])}" for v in views]
            lines.append(f"| {d} | {_ci(r['baseline'])} | {_ci(r['mean'])}, {_dci(r['mean_minus_baseline'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def archive(run_dirs: list[str | Path], out_root: str | Path, digits: int = 6) -> list[Path]:
    """Copy the result.json of every finished run (cv/fold*, cross/*) of each run folder to
    out_root/NAME/... without the checkpoints, probabilities rounded to `digits` decimals: the
    out-of-fold predictions every table here is computed from, small enough to commit, and read
    by the studies like the run folders themselves."""
    written = []
    for d in map(Path, run_dirs):
        for res in sorted([*d.glob("cv/fold*/result.json"), *d.glob("cross/*/result.json")]):
            r = json.loads(res.read_text())
            for k in [k for k in r["predictions"] if k == "probs" or k.startswith("probs_")]:  # + each view's
                r["predictions"][k] = np.round(np.asarray(r["predictions"][k]), digits).tolist()
            if "calibration" in r:
                r["calibration"]["probs"] = np.round(np.asarray(r["calibration"]["probs"]), digits).tolist()
            dst = Path(out_root) / d.name / res.relative_to(d)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(json.dumps(r, separators=(",", ":")))
            written.append(dst)
    return written


def _rule_threshold(y: np.ndarray, p: np.ndarray, target: float, lcb: float = 0.0) -> tuple[float, bool]:
    """-> (the run's rule's threshold, feasible). Under rule R2 (lcb > 0) a resample with too few
    malignant images to vouch for lcb is infeasible: its threshold is then R2's limit, the lowest
    malignant score (every calibration malignant image above it), and it is counted."""
    from streamcad.errors import ConfigError
    from streamcad.train.evaluate import choose_threshold

    try:
        return choose_threshold(y, p, "sens90", target_sensitivity=target, lower_bound=lcb), True
    except ConfigError:
        if lcb <= 0:
            raise
        return float(p[y == 1].min()), False


def _rates(y: np.ndarray, p: np.ndarray, t: float) -> tuple[float, float]:
    pos = p >= t
    return float(pos[y == 1].mean()), float((~pos[y == 0]).mean())


def threshold_study(run_dirs: list[str | Path], n_boot: int = 1000, seed: int = 0, floor: float = 0.85) -> dict:
    """How the operating threshold of each run carries to its test part, and why. For each
    run_dir/cross/SOURCE (test: the other dataset, a new scanner) and run_dir/cv/foldK (test: fold K of
    both datasets) with stored calibration scores (`cv calibration` for older runs): the run's
    threshold (the rule refitted on its calibration split, checked against the stored one), its
    sensitivity / specificity on the test part, and the same for the threshold the rule picks
    on each of n_boot group-bootstrap resamples of the calibration split: the spread that comes from
    the calibration split's few malignant images alone. Beside it (analysis only, never a choice):
    the threshold the other dataset itself would need for the rule's target, and the calibration
    sensitivity at it (how far the test part's scores are shifted from the calibration split's). The rule is
    each run's own (target_sensitivity, threshold_lcb); under R2 a resample with too few malignant images
    to vouch for the bound takes R2's limit (the lowest malignant score) and is counted (n_boot_infeasible)."""
    from streamcad.train.evaluate import binary_view

    rng = np.random.default_rng(seed)
    rows = []
    for d in map(Path, run_dirs):
        for res_path in sorted([*d.glob("cross/*/result.json"), *d.glob("cv/fold*/result.json")]):
            r = json.loads(res_path.read_text())
            if "calibration" not in r:
                raise ConfigError(f"{res_path} stores no calibration scores; run `streamcad train cv calibration {d}` first")
            target = r["recipe"].get("target_sensitivity", 0.95)
            lcb = r["recipe"].get("threshold_lcb", 0.0)
            cal, te = r["calibration"], r["predictions"]
            _, yc, pc = binary_view(np.asarray(cal["labels"]), np.asarray(cal["probs"]))
            gc = np.asarray(cal["groups"])[np.asarray(cal["labels"]) != 0]
            _, yt, pt = binary_view(np.asarray(te["labels"]), np.asarray(te["probs"]))
            t0, _ = _rule_threshold(yc, pc, target, lcb)
            if abs(t0 - r["threshold"]) > 1e-5:
                raise ConfigError(f"{res_path}: the rule gives {t0:.6f} on the stored calibration scores, the run stored "
                                  f"{r['threshold']:.6f}; the stored scores are not the run's")
            uniq, inv = np.unique(gc, return_inverse=True)
            members = [np.nonzero(inv == k)[0] for k in range(len(uniq))]
            sens_b, spec_b, thr_b, infeasible = [], [], [], 0
            for _ in range(n_boot):
                idx = np.concatenate([members[k] for k in rng.integers(0, len(uniq), len(uniq))])
                if len(np.unique(yc[idx])) < 2:
                    continue
                t, ok = _rule_threshold(yc[idx], pc[idx], target, lcb)
                infeasible += not ok
                se, sp = _rates(yt, pt, t)
                sens_b.append(se), spec_b.append(sp), thr_b.append(t)
            sens0, spec0 = _rates(yt, pt, t0)
            oracle, _ = _rule_threshold(yt, pt, target, lcb)
            q = lambda a: [float(np.percentile(a, 5)), float(np.median(a)), float(np.percentile(a, 95))]  # noqa: E731
            rows.append({
                "run": d.name, "part": f"cross {r['source']}" if res_path.parent.parent.name == "cross" else res_path.parent.name, "n_calibration_malignant": int(yc.sum()),
                "n_calibration_benign": int((yc == 0).sum()), "target": target, "threshold_lcb": lcb, "threshold": t0,
                "sensitivity": sens0, "specificity": spec0,
                "boot_threshold_q05_med_q95": q(thr_b), "boot_sensitivity_q05_med_q95": q(sens_b),
                "boot_specificity_q05_med_q95": q(spec_b), "boot_share_sensitivity_at_least_floor": float(np.mean(np.asarray(sens_b) >= floor)),
                "floor": floor, "n_boot": len(sens_b), "n_boot_infeasible": infeasible,
                "test_threshold_for_target": oracle,
                "calibration_sensitivity_at_that_threshold": _rates(yc, pc, oracle)[0],
            })
    if not rows:
        raise ConfigError(f"no finished run (cross/*/result.json, cv/fold*/result.json) under {[str(d) for d in run_dirs]}")
    return {"rows": rows, "n_boot": n_boot, "seed": seed,
            "note": "analysis of finished runs' test parts: nothing here chooses a threshold, a rule or a recipe"}


def render_thresholds(rep: dict) -> str:
    lines = ["| run | part (cross SOURCE: tested on the other dataset) | calibration malignant / benign | threshold | sensitivity / specificity on the test part | "
             "bootstrap of the calibration split: sensitivity 5% / median / 95% | share >= floor | the test part's own threshold (calibration sensitivity there) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        b = r["boot_sensitivity_q05_med_q95"]
        lines.append(f"| {r['run']} | {r['part']} | {r['n_calibration_malignant']} / {r['n_calibration_benign']} | {r['threshold']:.3f} | "
                     f"{r['sensitivity']:.3f} / {r['specificity']:.3f} | {b[0]:.2f} / {b[1]:.2f} / {b[2]:.2f} | "
                     f"{r['boot_share_sensitivity_at_least_floor']:.2f} | {r['test_threshold_for_target']:.3f} "
                     f"({r['calibration_sensitivity_at_that_threshold']:.2f}) |")
    return "\n".join(lines)


def _ci(a: dict) -> str:
    return f"{a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]"


def _dci(a: dict) -> str:
    return f"{a['auc_difference']:+.3f} [{a['ci_low']:+.3f}, {a['ci_high']:+.3f}]"


def render_seeds(rep: dict) -> str:
    lines = [f"Seeds: {', '.join(rep['runs'])}; folds {rep['folds']}", "",
             "| dataset | AUC per seed | spread (max-min / SD) | seed k - seed 0 (paired) | ensemble | ensemble - seed 0 |",
             "|---|---|---|---|---|---|"]
    for d in DATASETS:
        if d in rep:
            r = rep[d]
            lines.append(f"| {d} | {'; '.join(_ci(a) for a in r['per_seed'])} | {r['spread']['max_minus_min']:.3f} / "
                         f"{r['spread']['sd']:.3f} | {'; '.join(_dci(x) for x in r['paired_vs_first'])} | "
                         f"{_ci(r['ensemble'])} | {_dci(r['ensemble_vs_first'])} |")
    return "\n".join(lines)


def render_label_efficiency(rep: dict) -> str:
    lines = ["| labels | dataset | folds | ImageNet init | scratch | ImageNet - scratch (paired) |", "|---|---|---|---|---|---|"]
    for f, row in rep["fractions"].items():
        for d in DATASETS:
            if d in row:
                r = row[d]
                lines.append(f"| {f}% | {d} | {','.join(map(str, row['folds']))} | {_ci(r['imagenet'])} | {_ci(r['scratch'])} | "
                             f"{_dci(r['imagenet_minus_scratch'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m streamcad.train.study", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seeds", help="seed spread + seed ensemble of run folders (the first is the reference)")
    s.add_argument("runs", nargs="+")
    s.add_argument("--json", required=True)
    e = sub.add_parser("label-efficiency", help="ImageNet init vs scratch per label fraction under a runs root")
    e.add_argument("root")
    e.add_argument("--json", required=True)
    v = sub.add_parser("views", help="each view of a two-view (--zoom) run folder vs a baseline folder (analysis)")
    v.add_argument("run")
    v.add_argument("--baseline", required=True)
    v.add_argument("--json", required=True)
    t = sub.add_parser("thresholds", help="how each run's threshold carries to its test part (analysis)")
    t.add_argument("runs", nargs="+")
    t.add_argument("--json", required=True)
    a = sub.add_parser("archive", help="copy run folders' result.json (no checkpoints) under OUT to commit them")
    a.add_argument("runs", nargs="+")
    a.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "archive":
        written = archive(args.runs, args.out)
        print(f"{len(written)} result files under {args.out}")
        return 0 if written else 2
    try:
        if args.cmd == "views":
            rep = views_study(args.run, args.baseline)
        elif args.cmd == "thresholds":
            rep = threshold_study(args.runs)
        else:
            rep = seed_study(args.runs) if args.cmd == "seeds" else label_efficiency_study(args.root)
    except ConfigError as exc:
        print(f"study: {exc}")
        return 2
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rep, indent=1))
    print({"seeds": render_seeds, "views": render_views, "thresholds": render_thresholds}.get(args.cmd, render_label_efficiency)(rep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
