"""Sector (ROI) detection on the real recordings of ../shared/data/video and on cases composed
from them: per-clip IoU against the hand-read boxes of sectors.json, and the detector's cost.

    sectors.json clips --RoiTracker.update per frame, as the pipeline runs it--> box per frame
        --IoU vs sector_box (or boxes_by_frame)--> first scored frame, min, median per clip
    composed from each clip (generated here, never stored):
        colour   a colour-Doppler box with pulsing flow painted into the real sector, a colour
                 bar beside it (the truth is still the whole sector)
        duplex   the real screen shrunk into the top of a taller screen over a spectral-Doppler
                 panel that scrolls (or sweeps with an erase bar); the truth is the B-mode sector
        black    10 black frames before the clip: no box (confidence 0) on them, then the sector

    .venv/bin/python -m streamcad.benchmarks.roi_eval [--data DIR] [--out benchmarks/results/roi_eval.json]

The composers are also used by tests/test_roi_composed.py. Only numpy and OpenCV.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
BLACK_FRAMES = 10


# ---------------------------------------------------------------- reading


def read_clip(path: Path, limit: int | None = None) -> list[np.ndarray]:
    """All (or the first `limit`) frames of a video as BGR uint8 (H, W, 3)."""
    cap = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    try:
        while limit is None or len(frames) < limit:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(bgr)
    finally:
        cap.release()
    if not frames:
        raise RuntimeError(f"could not read any frame from {path}")
    return frames


def gray(frames: list[np.ndarray]) -> list[np.ndarray]:
    """BGR -> gray the way streamcad.sources does it (cv2.COLOR_BGR2GRAY)."""
    return [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) if f.ndim == 3 else f for f in frames]


def truth_at(entry: dict, i: int) -> tuple[int, int, int, int]:
    """The true (x, y, w, h) of frame i: its boxes_by_frame segment, else sector_box."""
    for seg in entry.get("boxes_by_frame", []):
        if seg["frames"][0] <= i <= seg["frames"][1]:
            return tuple(seg["box"])
    return tuple(entry["sector_box"])


# ---------------------------------------------------------------- composed cases


def paint_colour_box(
    frames: list[np.ndarray], box: tuple[int, int, int, int], seed: int = 0
) -> list[np.ndarray]:
    """A colour-Doppler box inside the real sector: BGR frames -> BGR frames (copies).

    The box spans the middle half of the sector's width and its top half (colour boxes usually
    start at the skin line), with a static 1-px outline; inside it, three vessels with pulsing
    red/blue flow (parabolic velocity profile, aliasing noise) replace the B-mode pixels. A
    static colour bar (red - black - blue) is drawn as UI beside the sector.
    """
    rng = np.random.default_rng(seed)
    x, y, w, h = box
    H, W = frames[0].shape[:2]
    bx0, bx1 = x + w // 4, x + 3 * w // 4
    by0, by1 = y + max(2, h // 40), y + h // 2
    yy, xx = np.mgrid[by0:by1, bx0:bx1].astype(np.float32)
    vessels = []
    for k in range(3):
        cx = bx0 + (bx1 - bx0) * rng.uniform(0.2, 0.8)
        cy = by0 + (by1 - by0) * (0.2 + 0.3 * k)
        ax, ay = (bx1 - bx0) * rng.uniform(0.25, 0.45), (by1 - by0) * rng.uniform(0.06, 0.12)
        r = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2
        vessels.append((r, 1 if k % 2 == 0 else -1))
    bar_h = max(20, h // 3)
    bar_x = x - 30 if x >= 40 else min(W - 14, x + w + 16)
    bar_y = max(0, y)
    ramp = np.linspace(1.0, -1.0, bar_h)[:, None]
    bar = np.zeros((bar_h, 12, 3), np.uint8)
    bar[..., 2] = (255 * np.clip(ramp, 0, 1)).astype(np.uint8)  # red on top (towards the probe)
    bar[..., 0] = (255 * np.clip(-ramp, 0, 1)).astype(np.uint8)  # blue below
    out = []
    for t, f in enumerate(frames):
        f = f.copy()
        roi = f[by0:by1, bx0:bx1]
        pulse = 0.55 + 0.45 * np.sin(2 * np.pi * t / 25.0) ** 2  # ~one beat a second at 25 fps
        flow = np.zeros(roi.shape, np.float32)
        for r, sign in vessels:
            inside = r < 1.0
            v = pulse * (1.0 - r) * inside  # parabolic profile, 0..1
            chan = 2 if sign > 0 else 0
            flow[..., chan] = (
                np.maximum(flow[..., chan], 120 + 135 * v) * inside + flow[..., chan] * ~inside
            )
            flow[..., 1] = np.maximum(
                flow[..., 1], 200 * np.clip(v - 0.8, 0, 1) * 5 * inside
            )  # aliasing: yellow/cyan core
        noise = rng.random(roi.shape[:2]) < 0.04  # colour flash / noise pixels
        flow[noise, 2 if t % 2 else 0] = rng.uniform(80, 200, int(noise.sum()))
        coloured = flow.max(axis=2) > 0
        roi[coloured] = np.clip(flow[coloured], 0, 255).astype(np.uint8)
        cv2.rectangle(f, (bx0, by0), (bx1 - 1, by1 - 1), (200, 200, 200), 1)
        if 0 <= bar_x and bar_x + 12 <= W and bar_y + bar_h <= H:
            f[bar_y : bar_y + bar_h, bar_x : bar_x + 12] = bar
        out.append(f)
    return out


def _spectrum_strip(height: int, length: int, seed: int) -> np.ndarray:
    """A long spectral-Doppler strip (height, length) uint8: one column per time step, velocity
    up from a baseline at 2/3 of the height, a pulsatile envelope filled with grainy spectrum."""
    rng = np.random.default_rng(seed)
    base = int(height * 2 / 3)
    t = np.arange(length, dtype=np.float32)
    phase = (t % 120.0) / 120.0  # one cardiac cycle per 120 columns
    env = (
        0.15
        + 0.75 * np.exp(-(((phase - 0.12) / 0.07) ** 2))
        + 0.1 * np.exp(-(((phase - 0.45) / 0.1) ** 2))
    )
    top = base - env * (base - 6)  # (length,) row of the envelope per column
    rows = np.arange(height, dtype=np.float32)[:, None]
    inside = (rows >= top[None, :]) & (rows <= base)
    grain = rng.rayleigh(1.0, (height, length)).astype(np.float32)
    strip = np.where(inside, np.clip(50 + 90 * grain, 0, 255), rng.uniform(0, 6, (height, length)))
    strip[base - 1 : base + 1] = 180  # the baseline
    return strip.astype(np.uint8)


def compose_duplex(
    frames: list[np.ndarray], box: tuple[int, int, int, int], mode: str = "scroll", seed: int = 0
) -> tuple[list[np.ndarray], tuple[int, int, int, int]]:
    """A duplex screen: the real screen (gray frames) shrunk into the top 60% of a screen of the
    same size, a spectral-Doppler panel over the full width below it. mode 'scroll': the panel
    content moves left 4 px a frame; 'sweep': an erase bar runs right 4 px a frame over a still
    trace. -> (gray frames, the B-mode sector's box in the new screen)."""
    if mode not in ("scroll", "sweep"):
        raise ValueError(f"mode {mode!r}: expected 'scroll' or 'sweep'")
    H, W = frames[0].shape[:2]
    top_h = int(0.6 * H)
    s = top_h / H
    tw = int(round(W * s))
    ox = (W - tw) // 2
    panel_y, panel_h = top_h + max(4, H // 40), H - top_h - max(4, H // 40) - max(4, H // 60)
    px0, px1 = max(2, W // 40), W - max(2, W // 40) - 40  # room for the velocity scale at the right
    pw = px1 - px0
    step = 4
    strip = _spectrum_strip(panel_h, pw + step * (len(frames) + 2) + pw, seed)
    x, y, w, h = box
    tbox = (ox + int(np.floor(x * s)), int(np.floor(y * s)), int(round(w * s)), int(round(h * s)))
    out = []
    for t, f in enumerate(frames):
        canvas = np.zeros((H, W), np.uint8)
        canvas[:top_h, ox : ox + tw] = cv2.resize(f, (tw, top_h), interpolation=cv2.INTER_AREA)
        if mode == "scroll":
            panel = strip[:, t * step : t * step + pw]
        else:
            pos = (t * step) % pw
            cur = strip[:, pw + t * step - pos : pw + t * step - pos + pw]  # this sweep
            prev = strip[:, t * step - pos : t * step - pos + pw]  # the sweep before
            panel = prev.copy()
            panel[:, :pos] = cur[:, :pos]
            panel[:, pos : pos + 6] = 0  # the erase bar
        canvas[panel_y : panel_y + panel_h, px0:px1] = panel
        canvas[panel_y - 2, px0:px1] = 140  # panel frame line
        for k in range(0, panel_h, max(8, panel_h // 6)):  # velocity scale ticks + labels
            canvas[panel_y + k, px1 + 2 : px1 + 8] = 200
            cv2.putText(
                canvas,
                f"{k // 4}",
                (px1 + 10, panel_y + k + 4),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.3,
                200,
                1,
            )
        out.append(canvas)
    return out, tbox


def compose_dual(
    frames: list[np.ndarray], box: tuple[int, int, int, int]
) -> tuple[list[np.ndarray], tuple[int, int, int, int]]:
    """A dual view: the real screen (gray frames) shrunk to half size twice, side by side in a
    screen of the same size; the left half frozen on the first frame, the right half live.
    -> (gray frames, the live sector's box). The live image is the one to score."""
    H, W = frames[0].shape[:2]
    hw, hh = W // 2, H // 2
    oy = (H - hh) // 2
    x, y, w, h = box
    sx, sy = hw / W, hh / H
    tbox = (
        hw + int(np.floor(x * sx)),
        oy + int(np.floor(y * sy)),
        int(round(w * sx)),
        int(round(h * sy)),
    )
    left = cv2.resize(frames[0], (hw, hh), interpolation=cv2.INTER_AREA)
    out = []
    for f in frames:
        canvas = np.zeros((H, W), np.uint8)
        canvas[oy : oy + hh, :hw] = left
        canvas[oy : oy + hh, hw : 2 * hw] = cv2.resize(f, (hw, hh), interpolation=cv2.INTER_AREA)
        out.append(canvas)
    return out, tbox


def black_opening(
    frames: list[np.ndarray], n: int = BLACK_FRAMES, seed: int = 0
) -> list[np.ndarray]:
    """n black frames (grey 0-2 noise, as a decoder delivers black) before the clip."""
    rng = np.random.default_rng(seed)
    shape = frames[0].shape
    return [rng.integers(0, 3, shape, dtype=np.uint8) for _ in range(n)] + list(frames)


# ---------------------------------------------------------------- measurement


def track(frames: list[np.ndarray], truths: list[tuple[int, int, int, int] | None]) -> dict:
    """RoiTracker over the gray frames as the pipeline runs it. truths[i] None = no sector
    should be found on frame i (a black frame). -> IoU summary and per-call cost."""
    from streamcad.quality import is_blank
    from streamcad.roi import RoiTracker, iou

    tracker = RoiTracker()
    ious, settled, ms, missed, false_box, blank = [], [], [], 0, 0, 0
    first = None
    for i, (f, t) in enumerate(zip(frames, truths, strict=True)):
        t0 = time.perf_counter()
        r = tracker.update(f)
        ms.append((time.perf_counter() - t0) * 1e3)
        if t is None:
            false_box += r.confidence > 0
            blank += is_blank(f)  # what the pipeline flags a frame without a sector
            continue
        if r.confidence == 0:
            missed += 1
            continue
        v = iou(r.as_tuple(), t)
        if first is None:
            first = {"frame": i, "iou": round(v, 4), "box": list(r.as_tuple())}
        ious.append(v)
        if i - first["frame"] >= 2:  # the tracker's first temporal cues (3 frames) are in
            settled.append(v)
    a = np.array(ious) if ious else np.zeros(1)
    b = np.array(settled) if settled else np.zeros(1)
    return {
        "frames": len(frames),
        "first_scored": first,
        "iou_min": round(float(a.min()), 4),
        "iou_median": round(float(np.median(a)), 4),
        "iou_min_from_frame_3": round(float(b.min()), 4),  # from the first temporal cues on
        "frames_below_0.9": int((a < 0.9).sum()),
        "frames_without_box": missed,
        "boxes_on_black_frames": int(false_box),
        "black_frames_blank": int(blank),
        "update_ms": {f"p{q}": round(float(np.percentile(ms, q)), 3) for q in (50, 99)}
        | {"max": round(float(max(ms)), 3)},
    }


def detect_cost(frames: list[np.ndarray], reps: int = 10) -> dict:
    """detect_roi on 1 frame and on 8 frames: ms per call (median and p90 over reps, after a warm-up)."""
    from streamcad.roi import detect_roi

    out = {}
    for n in (1, 8):
        sub = frames[:n]
        detect_roi(sub)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            detect_roi(sub)
            ts.append((time.perf_counter() - t0) * 1e3)
        out[f"{n}_frames"] = {
            "p50": round(float(np.percentile(ts, 50)), 2),
            "p90": round(float(np.percentile(ts, 90)), 2),
        }
    return out


def duplex_not_applicable(frames: list[np.ndarray]) -> str | None:
    """Why compose_duplex is no fair test on these gray frames (None: it is)."""
    from streamcad.roi import RoiTracker

    f = frames[0]
    border = np.concatenate([f[0], f[-1], f[:, 0], f[:, -1]])
    if float(np.median(border)) > 10:
        return (
            "frame border not black (a camera-filmed screen, or an image filling the frame): "
            "shrunk into a black screen, the whole old frame becomes one bright region"
        )
    if len(frames) <= RoiTracker().warmup_frames:
        return f"{len(frames)} frames: fewer than the warm-up window (no temporal cue ever)"
    return None


def evaluate(data: Path) -> dict:
    entries = json.loads((data / "sectors.json").read_text())
    clips = {}
    for e in entries:
        bgr = read_clip(data / e["file"])
        g = gray(bgr)
        truths = [truth_at(e, i) for i in range(len(g))]
        box = tuple(e["sector_box"])
        row = {"size": f"{e['width']}x{e['height']}", "probe": e["probe"], "real": track(g, truths)}
        row["colour"] = track(gray(paint_colour_box(bgr, box)), truths)
        # The duplex composition shrinks the whole screen into a black one: it is a fair test
        # only where the screen's own background is black (not a camera-filmed grey screen), and
        # the trace test needs the warm-up window (a clip shorter than it never gets there).
        why = duplex_not_applicable(g)
        for mode in ("scroll", "sweep"):
            dup, tbox = compose_duplex(g, box, mode)
            row[f"duplex_{mode}"] = track(dup, [tbox] * len(dup)) | {"not_applicable": why}
        row["black"] = track(black_opening(g), [None] * BLACK_FRAMES + truths)
        dual, dbox = compose_dual(g, box)
        row["dual"] = track(dual, [dbox] * len(dual)) | {"not_applicable": why}
        row["detect_ms"] = detect_cost(g)
        clips[e["file"]] = row
        logging.info(
            "%s: first %s, min %.3f", e["file"], row["real"]["first_scored"], row["real"]["iou_min"]
        )
    return clips


def table(result: dict) -> str:
    """The docs/ROI.md tables (markdown) from a result of main()."""

    def cell(r: dict) -> str:
        if r.get("not_applicable"):
            return "n/a"
        f = r["first_scored"]
        first = "none" if f is None else f"{f['iou']:.3f}"
        return f"{first} / {r['iou_min']:.3f} / {r['iou_median']:.3f}"

    cases = ["real", "colour", "duplex_scroll", "duplex_sweep", "black"]
    lines = [
        "| clip | probe | frames | real | + colour box | duplex, scroll | duplex, sweep | black opening "
        "| dual view (min from frame 3) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["clips"].items():
        d = row["dual"]
        dual = "n/a" if d.get("not_applicable") else f"{d['iou_min_from_frame_3']:.3f}"
        cells = " | ".join(cell(row[c]) for c in cases) + f" | {dual}"
        lines.append(f"| {name} | {row['probe']} | {row['real']['frames']} | {cells} |")
    lines += [
        "",
        "| clip | size | detect_roi, 1 frame: ms p50 / p90 | 8 frames | RoiTracker.update: p50 / p99 / max |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["clips"].items():
        d, u = row["detect_ms"], row["real"]["update_ms"]
        lines.append(
            f"| {name} | {row['size']} | {d['1_frames']['p50']} / {d['1_frames']['p90']} | "
            f"{d['8_frames']['p50']} / {d['8_frames']['p90']} | {u['p50']} / {u['p99']} / {u['max']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "video")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "roi_eval.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (args.data / "sectors.json").is_file():
        print(f"roi_eval: {args.data / 'sectors.json'} not found; pass --data DIR", file=sys.stderr)
        return 2
    cv2.setNumThreads(1)
    t0 = time.time()
    clips = evaluate(args.data)
    from streamcad.benchmarks.machine import machine_info

    result = {
        "command": "python -m streamcad.benchmarks.roi_eval "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine_info": machine_info(),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "opencv": cv2.__version__,
            "opencv_threads": 1,
        },
        "wall_s": round(time.time() - t0, 1),
        "load_avg_1_5_15": [round(v, 2) for v in os.getloadavg()],  # shared machine: timings vary
        "clips": clips,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
