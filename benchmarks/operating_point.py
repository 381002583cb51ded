"""Does the `suspicious` state follow the model's validated operating threshold? Labelled sweep
frames through the real pipeline.

    images with labels (repo sample | held-out test fold of BUS-BRA / BUSI, from train/splits)
      --SweepSource (paced at 30 fps; true label per frame)--> Pipeline (the runtime's
        own ROI, quality, preprocessing, model, smoothing) --ZeroMQ PUB on 127.0.0.1-->
      Subscriber thread: every Score (label, probs, malignancy, state, flags) + the last Status
      --analyse--> agreement of the state with smoothed / per-frame p(malignant) >= threshold,
        frame-level sensitivity / specificity of `suspicious` and of per-frame p >= threshold
      --> benchmarks/results/operating-point-NAME.json

    python -m streamcad.benchmarks.operating_point --images sample --out benchmarks/results/operating-point-sample.json
    python -m streamcad.benchmarks.operating_point --images busbra-test --dwell-s 2 --transition-s 0.5 \
        --out benchmarks/results/operating-point-busbra-test.json

The threshold is whatever the loaded model's manifest says (or a config override, reported as
such); the held-out images are the manifest's `training_data.test_fold` of the committed splits.
A frame's label is the class of the image mostly shown (sweep.SweepRenderer.label), so the
transition frames between two images count too. Sensitivity = malignant-labelled frames shown
`suspicious` / all malignant-labelled frames (flagged and no_lesion frames included: a UI shows
them as not suspicious); specificity = benign-labelled frames not `suspicious` / all benign ones.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import logging
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

__all__ = ["run_sweep", "run_subscribed", "analyse", "replay_states", "image_folder", "main"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SPLITS = REPO / "train" / "splits"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_folder(name: str, manifest, workdir: Path) -> tuple[Path, str]:
    """'sample' | 'busbra-test' | 'busi-test' -> (a folder SweepSource reads, a description)."""
    from streamcad.engines.gate import data_root
    from streamcad.errors import ConfigError
    from streamcad.sources.sweep import SAMPLE_DIR

    if name == "sample":
        return SAMPLE_DIR, "the repo's 24 BUS-BRA sample images (training-fold patients of the shipped model)"
    if name not in ("busbra-test", "busi-test"):
        raise ConfigError(f"--images {name!r}; expected 'sample', 'busbra-test' or 'busi-test'")
    fold = (manifest.training_data or {}).get("test_fold") if manifest is not None else None
    if not isinstance(fold, int):
        raise ConfigError(f"--images {name}: the model's manifest names no training_data.test_fold; expected an int")
    ds = "busbra" if name == "busbra-test" else "busi"
    root = data_root() / ("BUS-BRA" if ds == "busbra" else "BUSI")
    rows = []
    with open(SPLITS / f"{ds}_5fold.csv", newline="") as f:
        for r in csv.DictReader(f):
            if int(r["fold"]) == fold and not r["reason"]:
                p = root / "Images" / f"{r['image_id']}.png" if ds == "busbra" else root / r["label"] / f"{r['image_id']}.png"
                rows.append((str(p), r["label"]))
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "labels.csv", "w", newline="") as f:  # absolute paths: sweep reads root / file
        w = csv.writer(f)
        w.writerow(["file", "label"])
        w.writerows(rows)
    return folder, f"{ds} fold {fold} of train/splits/{ds}_5fold.csv (held out of the model's training), {len(rows)} images"


def run_subscribed(pipe, endpoint: str, handle, timeout_s: float = 3600.0):
    """Run `pipe` to its end with a Subscriber thread on `endpoint` giving every message to
    `handle`, the run started only once the SUB has joined (no score published to nobody), the
    thread drained 2 s past the last message. -> the pipeline's run report."""
    from streamcad.client import Subscriber

    done = threading.Event()

    def receive(sub) -> None:
        idle_since = time.monotonic()
        while not done.is_set() or time.monotonic() - idle_since < 2.0:
            m = sub.recv(timeout=0.2)
            if m is None:
                continue
            idle_since = time.monotonic()
            handle(m)

    with Subscriber(endpoint, heartbeat_s=1.0, rcvhwm=1_000_000) as sub:
        t = threading.Thread(target=receive, args=(sub,), daemon=True)
        t.start()
        deadline = time.monotonic() + 10.0
        while pipe.publisher.subscriptions == 0 and time.monotonic() < deadline:
            pipe.publisher.service(timeout=0.1)
        report = pipe.run()
        done.set()
        t.join(timeout=timeout_s)
    return report


def run_sweep(model_path: str | Path, folder: str | Path, *, seed: int = 0, fps: float = 30.0, dwell_s: float = 4.0,
              transition_s: float = 1.0, pace: str = "native", smoothing: dict | None = None,
              timeout_s: float = 3600.0) -> dict:
    """One pass over `folder`'s images through the real pipeline -> {'scores': [...], 'status': {...}}."""
    from streamcad.config import config_from_dict
    from streamcad.messages import Score, Status
    from streamcad.pipeline import Pipeline
    from streamcad.sources.sweep import SweepSource

    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    cfg = config_from_dict({
        "source": {"uri": f"sweep:{folder}", "pace": pace, "fps": fps},
        "model": {"path": str(model_path), "threads": 1},
        "smoothing": dict(smoothing or {}),
        # a subscriber thread in this process may lag the publisher: never drop a score here
        "publish": {"endpoint": endpoint, "stream": "oppoint", "hwm_seconds": 60.0},
        "dashboard": False,
    })
    src = SweepSource(folder, seed=seed, fps=fps, dwell_s=dwell_s, transition_s=transition_s, pace=pace, loop=False)
    scores: list[dict] = []
    last_status: list = []

    def handle(m) -> None:
        if isinstance(m, Score):
            p = m.probs
            scores.append({
                "frame_index": m.frame_index, "label": m.label, "state": m.state, "flags": list(m.flags),
                "malignancy": m.malignancy,
                "probs": None if p is None else [p.normal, p.benign, p.malignant],
            })
        elif isinstance(m, Status):
            last_status[:] = [m]

    with Pipeline(cfg, source=src) as pipe:
        period = src.renderer.period
        segment = (src.renderer.segment_frames, src.renderer._dwell_frames)
        report = run_subscribed(pipe, endpoint, handle, timeout_s)
        point = pipe.smoother.point
    st = last_status[0] if last_status else None
    return {
        "scores": scores,
        "frames_expected": period,
        "frames_out": report.frames_out,
        "dropped_publish": report.dropped_publish,
        "overwritten": report.overwritten,
        "fps": report.fps,
        "segment_frames": segment[0], "dwell_frames": segment[1],
        "status": None if st is None else {k: getattr(st, k) for k in
                                           ("operating_threshold", "on_threshold", "off_threshold", "threshold_source", "model")},
        "point": {"on": point.on, "off": point.off, "operating_threshold": point.operating_threshold, "source": point.source},
    }


def replay_states(scores: list[dict], on: float, off: float) -> list[str | None]:
    """What the documented state machine gives for each frame, from the published smoothed
    scores alone: `suspicious` is entered at malignancy >= on and left below off; a no_lesion
    frame or a lost signal ends the track. None where the state is not a lesion decision."""
    out: list[str | None] = []
    sus = False
    for s in scores:
        if s["state"] == "no_lesion" or "no_signal" in s["flags"]:
            sus = False
            out.append(None)
            continue
        if s["state"] == "flagged" or s["malignancy"] is None:
            out.append(None)  # no update: the track and its state are kept
            continue
        m = s["malignancy"]
        sus = m >= off if sus else m >= on
        out.append("suspicious" if sus else "clear")
    return out


def _rate(k: int, n: int) -> float | None:
    return None if n == 0 else k / n


def _per_image(scores: list[dict], thr: float, segment_frames: int, dwell_frames: int) -> dict:
    """One decision per image shown: the state on the last frame of its dwell (what a user sees
    after holding the probe still for dwell_s), next to the mean per-frame p(malignant) over the
    dwell >= threshold. `wobble`: std of the smoothed score over the dwell's second half (the
    settled part), median over images: how far the EMA moves while the view does not change."""
    by_seg: dict[int, list[dict]] = {}
    for s in scores:
        seg, local = divmod(s["frame_index"], segment_frames)
        if local < dwell_frames:
            by_seg.setdefault(seg, []).append(s)
    k = {"malignant": [0, 0, 0], "benign": [0, 0, 0]}  # [images, state suspicious, mean p >= thr]
    wobble = []
    for frames in by_seg.values():
        frames.sort(key=lambda s: s["frame_index"])
        label = frames[-1]["label"]
        pm = [s["probs"][2] for s in frames if s["probs"] is not None]
        settled = [s["malignancy"] for s in frames[len(frames) // 2:]
                   if s["state"] in ("clear", "suspicious") and s["malignancy"] is not None]
        if len(settled) >= 2:
            wobble.append(float(np.std(settled)))
        if label in k:
            k[label][0] += 1
            k[label][1] += frames[-1]["state"] == "suspicious"
            k[label][2] += bool(pm) and float(np.mean(pm)) >= thr
    m, b = k["malignant"], k["benign"]
    return {
        "images_malignant": m[0], "images_benign": b[0],
        "state_at_end_of_dwell_sensitivity": _rate(m[1], m[0]),
        "state_at_end_of_dwell_specificity": _rate(b[0] - b[1], b[0]),
        "mean_frame_p_ge_threshold_sensitivity": _rate(m[2], m[0]),
        "mean_frame_p_ge_threshold_specificity": _rate(b[0] - b[2], b[0]),
        "smoothed_score_wobble_median_std": float(np.median(wobble)) if wobble else None,
        "smoothed_score_wobble_p90_std": float(np.percentile(wobble, 90)) if wobble else None,
    }


def analyse(scores: list[dict], on: float, off: float, threshold: float | None,
            segment_frames: int | None = None, dwell_frames: int | None = None, fps: float = 30.0) -> dict:
    """The numbers of the report (see the module docstring for the definitions)."""
    thr = on if threshold is None else threshold
    states = np.array([s["state"] for s in scores])
    labels = np.array([s["label"] or "" for s in scores])
    mal = np.array([np.nan if s["malignancy"] is None else s["malignancy"] for s in scores])
    pm = np.array([np.nan if s["probs"] is None else s["probs"][2] for s in scores])
    sus = states == "suspicious"
    lesion = np.isin(states, ("clear", "suspicious"))
    scored = ~np.isnan(pm)
    ref = replay_states(scores, on, off)
    decided = np.array([r is not None for r in ref])
    out: dict = {
        "frames": len(scores),
        "frames_by_label": {c: int((labels == c).sum()) for c in sorted(set(labels.tolist()))},
        "states_by_label": {c: {st: int(((labels == c) & (states == st)).sum()) for st in
                                ("suspicious", "clear", "no_lesion", "flagged")} for c in sorted(set(labels.tolist()))},
        "state_matches_state_machine": _rate(int(sum(r == s for r, s in zip(ref, states.tolist(), strict=True) if r is not None)),
                                             int(decided.sum())),
        # on lesion frames: is `suspicious` the same as smoothed p >= threshold? (differs only in the band)
        "state_vs_smoothed_ge_threshold": _rate(int((sus[lesion] == (mal[lesion] >= thr)).sum()), int(lesion.sum())),
        "lesion_frames_in_band": int((lesion & (mal >= off) & (mal < thr)).sum()),
        # on every scored frame (probs present): is `suspicious` the same as this frame's p >= threshold?
        "state_vs_frame_ge_threshold": _rate(int((sus[scored] == (pm[scored] >= thr)).sum()), int(scored.sum())),
    }
    # the same smoothed scores without the hysteresis band (off = on): what the band costs
    sus_noband = np.array([r == "suspicious" for r in replay_states(scores, on, on)], bool)
    for name, mask in (("all_frames", np.ones(len(scores), bool)), ("scored_frames", scored)):
        m, b = mask & (labels == "malignant"), mask & (labels == "benign")
        out[name] = {
            "suspicious_sensitivity": _rate(int((sus & m).sum()), int(m.sum())),
            "suspicious_specificity": _rate(int((~sus & b).sum()), int(b.sum())),
            "suspicious_without_band_sensitivity": _rate(int((sus_noband & m).sum()), int(m.sum())),
            "suspicious_without_band_specificity": _rate(int((~sus_noband & b).sum()), int(b.sum())),
            "frame_p_ge_threshold_sensitivity": _rate(int((pm[m] >= thr).sum()), int(m.sum())),
            # a flagged frame has no p: it counts as not positive, as for the state (NaN >= thr is False)
            "frame_p_ge_threshold_specificity": _rate(int((~(pm[b] >= thr)).sum()), int(b.sum())),
            "n_malignant": int(m.sum()), "n_benign": int(b.sum()),
        }
    # flicker: clear <-> suspicious changes per minute of lesion frames, with the band and, from
    # the same smoothed scores, without it (off = on)
    def changes(st: list) -> int:
        seq = [x for x in st if x is not None]
        return sum(a != b for a, b in zip(seq, seq[1:], strict=False))

    lesion_min = int(decided.sum()) / fps / 60.0 if fps else 0.0
    if lesion_min > 0:
        out["state_changes_per_lesion_min"] = changes(ref) / lesion_min
        out["state_changes_per_lesion_min_without_band"] = changes(replay_states(scores, on, on)) / lesion_min
    if segment_frames:
        out["per_image"] = _per_image(scores, thr, segment_frames, dwell_frames or segment_frames)
    flag_names = sorted({f for s in scores for f in s["flags"]})
    out["flags_by_label"] = {c: {f: int(sum(1 for s in scores if (s["label"] or "") == c and f in s["flags"]))
                                 for f in flag_names} for c in sorted(set(labels.tolist()))}
    n_norm = labels == "normal"
    if n_norm.any():
        out["normal_frames_suspicious"] = _rate(int((sus & n_norm).sum()), int(n_norm.sum()))
        out["normal_frames_no_lesion"] = _rate(int((n_norm & (states == "no_lesion")).sum()), int(n_norm.sum()))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default="sample", help="sample | busbra-test | busi-test")
    p.add_argument("--model", default=str(REPO / "engines" / "models" / "default.onnx"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--dwell-s", type=float, default=4.0, help="seconds on each image (the sweep's default 4)")
    p.add_argument("--transition-s", type=float, default=1.0)
    p.add_argument("--pace", default="native", choices=("native", "none"),
                   help="native: real time at --fps, so the EMA's time constant spans the frames it would live "
                        "(default); none: as fast as scored (the EMA then spans more frames)")
    p.add_argument("--out", required=True, help="JSON report")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from streamcad.benchmarks.machine import machine_info
    from streamcad.errors import StreamcadError
    from streamcad.manifest import git_commit, read_manifest

    try:
        manifest = read_manifest(args.model)
        commit = git_commit(REPO, dirty=True)  # at the start: the code imported below ('-dirty': edits ran too)
        with tempfile.TemporaryDirectory() as tmp:
            folder, what = image_folder(args.images, manifest, Path(tmp))
            t0 = time.monotonic()
            run = run_sweep(args.model, folder, seed=args.seed, fps=args.fps, dwell_s=args.dwell_s,
                            transition_s=args.transition_s, pace=args.pace)
            wall = time.monotonic() - t0
    except StreamcadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pt = run["point"]
    result = {
        "what": "state vs the validated operating threshold on labelled sweep frames through the real pipeline",
        "command": "python -m streamcad.benchmarks.operating_point " + " ".join(argv if argv is not None else sys.argv[1:]),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "git_commit": commit,
        "model": {"file": Path(args.model).name, "sha256": manifest.sha256, "operating_threshold": manifest.operating_threshold},
        "images": what,
        "sweep": {"seed": args.seed, "fps": args.fps, "dwell_s": args.dwell_s, "transition_s": args.transition_s,
                  "pace": args.pace},
        "operating_point": pt,
        "status_fields": run["status"],
        "frames_expected": run["frames_expected"], "frames_out": run["frames_out"],
        "frames_received": len(run["scores"]), "dropped_publish": run["dropped_publish"],
        "overwritten": run["overwritten"],
        "wall_s": wall, "fps": run["fps"],
        "metrics": analyse(run["scores"], pt["on"], pt["off"], pt["operating_threshold"],
                           run["segment_frames"], run["dwell_frames"], args.fps),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", args.out)
    print(json.dumps(result["metrics"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
