"""Measure the content gate: which frames does the runtime refuse to score, breast and not?

    MODEL.onnx + manifest with an `ood` gate (streamcad train gate MODEL.onnx)
    breast: the held-out test fold of BUSI and BUS-BRA, every image once in a linear AND once in
        a curved simulated scanner screen (streamcad.sources.sweep), through the runtime's
        RoiTracker, QualityChecker, preprocess, ONNX Runtime and the gate; and every image once
        as it is, the whole image as the sector (train.ood.image_features, as `streamcad
        evaluate` scores it): the form a scanner's own B-mode image has, without the simulator
    non-breast: every recording in ../shared/data/video (organ from sectors.json), every frame,
        same path (colour frames also give the doppler check its colour mask)
    synthetic: a smooth grey video (through an mp4v round trip), the same with noise, a
        gradient, white noise, a text screen
      --> flagged rates (gate alone, quality cues alone, any flag), ROC of the gate score
          (breast test frames vs non-breast frames), JSON + ROC plot (PNG) under benchmarks/results/

The gate is fitted on breast training folds only (no recording and no synthetic frame is seen
by it), so every non-breast number here is out of sample. Run:

    OMP_NUM_THREADS=1 python -m streamcad.benchmarks.ood_gate engines/models/default.onnx \\
        --out benchmarks/results/ood_gate-default.json
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from streamcad.backends import load_backend
from streamcad.benchmarks.machine import machine_info
from streamcad.errors import ConfigError
from streamcad.gate_ood import OodGate
from streamcad.manifest import read_manifest, verify_artifact
from streamcad.train.data.datasets import data_root
from streamcad.train.ood import (
    StreamFeatures,
    breast_frames,
    breast_items,
    embed_stream,
    image_features,
    video_frames,
)

log = logging.getLogger(__name__)


def auc(neg_scores: np.ndarray, pos_scores: np.ndarray) -> float:
    """P(score of a random out-of-domain frame > score of a random breast frame), ties 1/2."""
    s = np.concatenate([neg_scores, pos_scores])
    ranks = np.empty(len(s))
    order = np.argsort(s, kind="mergesort")
    ranks[order] = np.arange(1, len(s) + 1)
    for v in np.unique(s):  # average ranks of ties
        m = s == v
        if m.sum() > 1:
            ranks[m] = ranks[m].mean()
    n_b, n_o = len(neg_scores), len(pos_scores)
    return float((ranks[n_b:].sum() - n_o * (n_o + 1) / 2) / (n_b * n_o))


def roc_plot(res: dict, out: Path) -> Path:
    """ROC of the gate score (non-breast frames flagged vs breast frames flagged), chosen point marked."""
    from streamcad.benchmarks.plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    pts = sorted(res["roc"], key=lambda p: (p["breast_flagged"], p["other_flagged"]))
    ax.plot([p["breast_flagged"] for p in pts], [p["other_flagged"] for p in pts], lw=1.5, label="gate score")
    s = res["summary"]
    ax.plot([s["breast_ood_flagged"]], [s["non_breast_ood_flagged"]], "o", color="C3",
            label=f"manifest threshold ({100 * s['breast_ood_flagged']:.1f}%, {100 * s['non_breast_ood_flagged']:.1f}%)")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("held-out breast frames flagged")
    ax.set_ylabel("non-breast recording frames flagged")
    ax.set_title(f"{res['model']}: ROC AUC {s['roc_auc_gate_score']:.3f}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def roc_points(breast: np.ndarray, other: np.ndarray, n: int = 200) -> list[dict]:
    thr = np.unique(np.quantile(np.concatenate([breast, other]), np.linspace(0, 1, n)))
    return [{"threshold": float(t), "breast_flagged": float(np.mean(breast > t)), "other_flagged": float(np.mean(other > t))}
            for t in thr]


def rates(f: StreamFeatures, gate: OodGate) -> dict:
    ood = gate.out_of_domain(f.embeddings)
    qual = np.array([bool(x) for x in f.flags])
    counts: dict[str, int] = {}
    for fl in f.flags:
        for k in fl:
            counts[k] = counts.get(k, 0) + 1
    return {"frames": len(f), "ood_flagged": float(ood.mean()), "quality_flagged": float(qual.mean()),
            "any_flagged": float((ood | qual).mean()), "quality_flags": counts,
            "score_median": float(np.median(gate.score(f.embeddings)))}


def synthetic_streams(rng: np.random.Generator, n: int = 30) -> dict[str, list[np.ndarray]]:
    """Non-ultrasound test videos (BGR frames), made here: nothing is downloaded or read."""
    H, W = 480, 640
    field = cv2.GaussianBlur(rng.standard_normal((H + 2 * n, W + 3 * n)).astype(np.float32), (0, 0), 25)
    field = 128 + field / field.std() * 30
    grey = [field[2 * i : 2 * i + H, 3 * i : 3 * i + W] for i in range(n)]  # slowly drifting smooth grey
    out = {
        "smooth_grey": grey,
        "smooth_grey_noise10": [g + rng.normal(0, 10, g.shape) for g in grey],
        "gradient": [np.tile(np.linspace(20 + i, 220, W), (H, 1)) + rng.normal(0, 2, (H, W)) for i in range(n)],
        "white_noise": [rng.uniform(0, 255, (H, W)) for _ in range(n)],
    }
    text = []
    for i in range(n):
        img = np.full((H, W), 235, np.uint8)
        for r in range(12):
            cv2.putText(img, f"Report line {r + i} lorem ipsum 12.{r}", (20, 35 + 36 * r), cv2.FONT_HERSHEY_SIMPLEX, 0.7, 30, 1)
        text.append(img.astype(np.float32))
    out["text_screen"] = text
    return {k: [cv2.cvtColor(np.clip(f, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR) for f in v] for k, v in out.items()}


def _through_mp4(frames: list[np.ndarray], tmp: Path, name: str) -> Path:
    """Write BGR frames to an mp4v file (the codec's artefacts are part of what a video source delivers)."""
    path = tmp / f"{name}.mp4"
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (w, h))
    for f in frames:
        vw.write(f)
    vw.release()
    return path


def gated_model(model: Path):
    """-> (the verified manifest of MODEL.onnx, its OodGate); refused in one line without a gate."""
    m = read_manifest(model)
    verify_artifact(model, m)
    if not m.ood:
        raise ConfigError(f"{model.name} has no out-of-domain gate in its manifest; run `streamcad train gate {model}` first")
    return m, OodGate.from_dict(m.ood)


def run(model: Path, out: Path, root: str | None, threads: int, seed: int) -> dict:
    t0 = time.perf_counter()
    m, gate = gated_model(model)
    fitted = m.ood.get("fitted_on", {})
    test_fold = int(fitted.get("test_fold_excluded", 0))
    spec = m.spec()
    vdir = data_root(root) / "video"
    clips = json.loads((vdir / "sectors.json").read_text())
    res: dict = {"schema": 1, "model": model.name, "model_sha256": m.sha256, "gate": {k: m.ood[k] for k in
                 ("method", "dim", "threshold", "chosen", "target_rate", "rates", "fitted_on") if k in m.ood},
                 "test_fold": test_fold, "breast": {}, "breast_images": {}, "non_breast": {}, "synthetic": {}}
    with load_backend("onnxruntime", model, intra_op_threads=threads) as be:
        breast_scores, image_scores = [], []
        for ds in ("busi", "busbra"):
            items = breast_items((ds,), [test_fold], root)
            for sector in ("linear", "curved"):
                f = embed_stream(be, spec, breast_frames(items, sector, seed=seed + 100))
                res["breast"][f"{ds}/{sector}"] = rates(f, gate)
                breast_scores.append(gate.score(f.embeddings))
                log.info("breast %s %s: %s", ds, sector, res["breast"][f"{ds}/{sector}"])
            f = image_features(be, spec, items)
            res["breast_images"][ds] = rates(f, gate)
            image_scores.append(gate.score(f.embeddings))
        other_scores = []
        for c in clips:
            f = embed_stream(be, spec, video_frames(vdir / c["file"]))
            r = rates(f, gate)
            r.update(organ=c.get("organ"), probe=c.get("probe"))
            res["non_breast"][c["file"]] = r
            other_scores.append(gate.score(f.embeddings))
            log.info("clip %s: %s", c["file"], r)
        with tempfile.TemporaryDirectory() as tmp:
            for name, frames in synthetic_streams(np.random.default_rng(seed)).items():
                f = embed_stream(be, spec, video_frames(_through_mp4(frames, Path(tmp), name)))
                res["synthetic"][name] = rates(f, gate)
    b, o = np.concatenate(breast_scores), np.concatenate(other_scores)
    nb = res["non_breast"]
    res["summary"] = {
        "breast_frames": int(len(b)),
        "breast_ood_flagged": float(np.mean(b > gate.threshold)),
        "breast_any_flagged": float(np.average([r["any_flagged"] for r in res["breast"].values()],
                                               weights=[r["frames"] for r in res["breast"].values()])),
        "non_breast_frames": int(len(o)),
        "non_breast_ood_flagged": float(np.mean(o > gate.threshold)),
        "non_breast_any_flagged": float(np.average([r["any_flagged"] for r in nb.values()], weights=[r["frames"] for r in nb.values()])),
        "non_breast_any_flagged_mean_per_clip": float(np.mean([r["any_flagged"] for r in nb.values()])),
        "clips_at_least_90pct_flagged": int(sum(r["any_flagged"] >= 0.9 for r in nb.values())),
        "clips": len(nb),
        "roc_auc_gate_score": auc(b, o),
        "breast_images": int(sum(len(x) for x in image_scores)),
        "breast_images_flagged": float(np.mean(np.concatenate(image_scores) > gate.threshold)),
        "roc_auc_gate_score_images": auc(np.concatenate(image_scores), o),
    }
    res["roc"] = roc_points(b, o)
    res["wall_s"] = time.perf_counter() - t0
    res["machine"] = machine_info()
    res["command"] = f"python -m streamcad.benchmarks.ood_gate {model} --out {out}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    roc_plot(res, out.with_suffix(".png"))
    return res


def render_table(res: dict) -> str:
    """Markdown tables (summary, per recording, per breast set, synthetic) from a results JSON."""
    s, pct = res["summary"], (lambda x: f"{100 * x:.1f}%")  # noqa: E731
    g = res["gate"]
    lines = [
        f"Model `{res['model']}` (sha256 `{res['model_sha256'][:16]}…`), gate D={g['dim']}, threshold {g['threshold']:.3f} "
        f"(target {pct(g.get('target_rate', 0))} per stratum of out-of-fit breast training frames); test fold {res['test_fold']}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| ROC AUC of the gate score (held-out breast frames vs non-breast recording frames) | {s['roc_auc_gate_score']:.3f} |",
        f"| held-out breast frames flagged by the gate / by any flag ({s['breast_frames']} frames) | {pct(s['breast_ood_flagged'])} / {pct(s['breast_any_flagged'])} |",
        *([f"| held-out breast images as they are (the image as the sector) flagged by the gate ({s['breast_images']} images) | {pct(s['breast_images_flagged'])} |",
           f"| ROC AUC of the gate score, those images vs non-breast recording frames | {s['roc_auc_gate_score_images']:.3f} |"]
          if "breast_images_flagged" in s else []),
        f"| non-breast recording frames flagged by the gate / by any flag ({s['non_breast_frames']} frames) | {pct(s['non_breast_ood_flagged'])} / {pct(s['non_breast_any_flagged'])} |",
        f"| recordings with >= 90% of frames flagged | {s['clips_at_least_90pct_flagged']} of {s['clips']} |",
        "",
        "| recording | organ | probe | frames | gate | quality flags | any flag |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, r in res["non_breast"].items():
        q = ", ".join(f"{f} {n}" for f, n in sorted(r["quality_flags"].items())) or "-"
        lines.append(f"| {k} | {r.get('organ')} | {r.get('probe')} | {r['frames']} | {pct(r['ood_flagged'])} | {q} | {pct(r['any_flagged'])} |")
    lines += ["", "| held-out breast images (test fold), screen | frames | gate | any flag |", "|---|---|---|---|"]
    for k, r in res["breast"].items():
        lines.append(f"| {k} | {r['frames']} | {pct(r['ood_flagged'])} | {pct(r['any_flagged'])} |")
    for k, r in res.get("breast_images", {}).items():
        lines.append(f"| {k}/as it is (the image as the sector) | {r['frames']} | {pct(r['ood_flagged'])} | {pct(r['ood_flagged'])} |")
    lines += ["", "| synthetic video (mp4v) | frames | gate | quality flags | any flag |", "|---|---|---|---|---|"]
    for k, r in res["synthetic"].items():
        q = ", ".join(f"{f} {n}" for f, n in sorted(r["quality_flags"].items())) or "-"
        lines.append(f"| {k} | {r['frames']} | {pct(r['ood_flagged'])} | {q} | {pct(r['any_flagged'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", type=Path, nargs="?", help="MODEL.onnx to measure")
    p.add_argument("--table", type=Path, default=None, help="print the markdown tables of a results JSON and exit")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ood_gate.json"))
    p.add_argument("--root", default=None, help="data root (default ../shared/data)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.table:
        print(render_table(json.loads(args.table.read_text())))
        return 0
    if args.model is None:
        p.error("give MODEL.onnx (or --table RESULTS.json)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = run(args.model, args.out, args.root, args.threads, args.seed)
    s = res["summary"]
    print(json.dumps(s, indent=1))
    for k, r in res["non_breast"].items():
        print(f"{k:40s} {r['organ']:8s} gate {100 * r['ood_flagged']:5.1f}%  quality {100 * r['quality_flagged']:5.1f}%  any {100 * r['any_flagged']:5.1f}%")
    for k, r in {**res["breast"], **res["synthetic"]}.items():
        print(f"{k:40s} gate {100 * r['ood_flagged']:5.1f}%  quality {100 * r['quality_flagged']:5.1f}%  any {100 * r['any_flagged']:5.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
