"""Where the time goes: py-spy samples of the real pipeline, threaded and naive, one run each way.

    python -m streamcad.benchmarks.profile [--source replay|sweep] [--frames 3000] [--out FILE.json]

For each mode (threaded `Pipeline.run`, naive `Pipeline.run_sequential`) the same benchmark
configuration as `streamcad bench` (benchmarks.e2e.run_e2e, subscriber in another process) runs
three times under `py-spy record --nonblocking --threads --format raw`:

    --idle  every sample of every thread       -> the thread's lifetime (the denominator)
    (none)  only samples of a running thread   -> CPU share of each thread, by stage
    --gil   only samples of the GIL holder     -> how much of the wall the GIL is held, by stage

Samples are kept only from the pipeline's own threads (`streamcad-prepare|infer|publish`, the
source's reader) or, for the naive loop, from stacks inside `run_sequential`, so setup, model
loading and the subscriber hand-shake are left out. Each sample is booked to one stage by the
innermost streamcad frame it passes through (STAGE_OF). `--nonblocking` does not pause the
process per sample, so the profiled fps is close to the unprofiled one (both are reported).

Needs py-spy (`pip install py-spy`; dev extra); Linux ptrace rights over a child process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from streamcad.errors import StreamcadError

__all__ = ["parse_raw", "stage_of", "profile_mode", "main"]

REPO = Path(__file__).resolve().parents[1]

# innermost matching (function, file fragment) -> stage; order = priority from the leaf outwards
STAGE_OF = (
    ("run", "onnxruntime_inference_collection.py", "infer (onnxruntime)"),
    ("infer", "backends/", "infer (onnxruntime)"),
    ("preprocess", "streamcad/preprocess.py", "preprocess (letterbox)"),
    ("update", "streamcad/roi.py", "roi"),
    ("check", "streamcad/quality.py", "quality"),
    ("postprocess", "streamcad/processor.py", "postprocess (softmax, saliency peak)"),
    ("infer", "streamcad/processor.py", "infer (output copies)"),
    ("postprocess", "streamcad/pipeline.py", "postprocess (softmax, saliency peak)"),
    ("infer", "streamcad/pipeline.py", "infer (output copies)"),
    ("update", "streamcad/smoothing.py", "smooth"),
    ("publish_status", "streamcad/pipeline.py", "publish (status)"),
    ("score", "streamcad/messages.py", "publish (build + validate)"),
    ("status", "streamcad/messages.py", "publish (status)"),
    ("write_score", "streamcad/transport.py", "publish (encode + send)"),
    ("write_status", "streamcad/transport.py", "publish (encode + send)"),
    ("publish_score", "streamcad/transport.py", "publish (encode + send)"),
    ("poll", "streamcad/transport.py", "publish (service)"),
    ("service", "streamcad/transport.py", "publish (service)"),
    ("write_frame", "streamcad/recording.py", "publish (record)"),
    ("write_score", "streamcad/recording.py", "publish (record)"),
    ("finish", "streamcad/pipeline.py", "publish (bookkeeping)"),
    ("_get", "streamcad/pipeline.py", "queue wait"),
    ("_put", "streamcad/pipeline.py", "queue wait"),
    ("_wait_slot_taken", "streamcad/sources/base.py", "grab (waits for the pipeline)"),
    ("to_gray", "streamcad/sources/base.py", "grab (to gray)"),
    ("_grab", "", "grab (source)"),
    ("read", "benchmarks/replay.py", "grab (replay)"),
    ("read", "streamcad/sources/base.py", "grab (newest-frame slot)"),
    ("read", "benchmarks/naive.py", "grab (source)"),
    ("_read", "streamcad/pipeline.py", "grab"),
    ("prepare", "streamcad/processor.py", "prepare (other)"),
    ("prepare", "streamcad/pipeline.py", "prepare (other)"),
)


def _frame_parts(frame: str) -> tuple[str, str]:
    """'func (path/file.py:12)' -> ('func' without class prefix, 'path/file.py')."""
    name, _, loc = frame.rpartition(" (")
    func = name.rsplit(".", 1)[-1]
    return func, loc.rsplit(":", 1)[0]


def stage_of(stack: list[str]) -> str:
    """The stage a sample belongs to: the innermost frame that matches STAGE_OF."""
    for frame in reversed(stack):
        func, path = _frame_parts(frame)
        for f, frag, stage in STAGE_OF:
            if func == f and frag in path:
                return stage
    return "other"


def parse_raw(text: str) -> dict[str, Counter]:
    """py-spy `--format raw --threads` text -> {thread label: Counter(stage -> samples)}.

    Thread label: the thread's name for pipeline threads; 'naive' for samples inside
    run_sequential. Everything else (setup, the main thread waiting in run()) is dropped.
    py-spy cannot always read a thread's name (a loaded machine): a sample without one takes the
    name its thread id carries in the run's other samples."""
    rows, names = [], {}
    for line in text.splitlines():
        stack_s, _, n = line.strip().rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack_s.split(";")
        head = frames[0]  # 'thread (TID): NAME' or 'thread (TID)'
        tid, _, name = head.partition(": ")
        if name:
            names[tid] = name
        rows.append((tid, name, frames[1:], int(n)))
    out: dict[str, Counter] = defaultdict(Counter)
    for tid, name, stack, n in rows:
        name = name or names.get(tid, "")
        if any(_frame_parts(f)[0] == "run_sequential" for f in stack):
            label = "naive"
        elif name.startswith("streamcad-"):
            label = name
        elif name.startswith("reader"):  # the source's reader thread: 'reader0[sweep:]'
            label = "source-reader"
        else:
            continue
        out[label][stage_of(stack)] += n
    return out


def _pyspy() -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).is_file():
        raise StreamcadError("py-spy not found; expected it on PATH or beside the Python executable (pip install py-spy)")
    return exe


def _child(args: argparse.Namespace) -> int:
    """One measured run (the process py-spy records)."""
    from streamcad.benchmarks.cli import _model_path
    from streamcad.benchmarks.e2e import E2EConfig, backend_options, run_e2e
    from streamcad.benchmarks.models import DEFAULT_CACHE, shipped_model

    m = shipped_model(args.size, DEFAULT_CACHE)
    backend, opts = backend_options(args.label)
    cfg = E2EConfig(model_path=_model_path(m, args.label), backend=backend, options=opts, label=args.label,
                    source="sweep:", fps=None, mode=args.mode, frames=args.frames, model_name=m.name,
                    replay=args.source == "replay")
    r = run_e2e(cfg)
    Path(args.result).write_text(json.dumps({"fps": r["fps"], "wall_s": r.get("wall_s")}))
    return 0


def profile_mode(mode: str, source: str, frames: int, label: str, size: int, rate: int) -> dict:
    """Three py-spy runs (idle / cpu / gil) of one mode -> per-thread stage shares."""
    exe = _pyspy()
    from streamcad.benchmarks.e2e import E2EConfig

    out: dict = {"mode": mode, "source": source, "frames": frames, "warmup": E2EConfig("").warmup, "label": label,
                 "rate_hz": rate}
    with tempfile.TemporaryDirectory(prefix="streamcad-prof-") as tmp:
        for kind, flags in (("idle", ["--idle"]), ("cpu", []), ("gil", ["--gil"])):
            raw, res = Path(tmp) / f"{kind}.txt", Path(tmp) / f"{kind}.json"
            cmd = [exe, "record", "--nonblocking", "--threads", "--format", "raw", "-r", str(rate), "-o", str(raw), *flags,
                   "--", sys.executable, "-m", "streamcad.benchmarks.profile", "--child", "--mode", mode, "--source", source,
                   "--frames", str(frames), "--label", label, "--size", str(size), "--result", str(res)]
            p = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True)
            if p.returncode != 0 or not raw.is_file() or not res.is_file():
                raise StreamcadError(f"py-spy {kind} run of {mode} failed (rc={p.returncode}): {p.stderr.strip()[-400:]}")
            out[kind] = {t: dict(c) for t, c in parse_raw(raw.read_text()).items()}
            out[f"fps_{kind}"] = json.loads(res.read_text())["fps"]
            m = re.search(r"Samples: (\d+)", p.stdout + p.stderr)
            out[f"samples_{kind}"] = int(m.group(1)) if m else None
    return out


def _ms(x: float | None) -> str:
    return "     -" if x is None else f"{x:6.2f}"


def per_frame(prof: dict) -> dict:
    """-> {thread: {'wall': ms per frame the thread existed (None: the idle run never named it), 'cpu': {stage: ms/frame}, 'gil': {stage: ms/frame}}}.

    Samples are converted to milliseconds per processed frame (samples / rate / frames), so the
    three runs (idle / cpu / gil), whose fps differ a little, can be put side by side."""
    n = prof["frames"] + prof["warmup"]
    k = 1000.0 / prof["rate_hz"] / n
    table = {}
    threads = dict.fromkeys([*prof["idle"], *prof["cpu"], *prof["gil"]])  # a thread any of the three runs saw
    for thread in threads:
        idle, cpu, gil = prof["idle"].get(thread), prof["cpu"].get(thread, {}), prof["gil"].get(thread, {})
        table[thread] = {
            "wall_ms": None if idle is None else round(sum(idle.values()) * k, 3),  # None: the idle run never named it
            "cpu_ms": {s: round(v * k, 3) for s, v in sorted(cpu.items(), key=lambda kv: -kv[1])},
            "gil_ms": {s: round(v * k, 3) for s, v in sorted(gil.items(), key=lambda kv: -kv[1])},
        }
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m streamcad.benchmarks.profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", choices=("replay", "sweep"), default="replay")
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--label", default="ort-cpu-1t")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--modes", default="threaded,sequential")
    ap.add_argument("--out", default=None, help="JSON file (default: print only)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="threaded", help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)
    from streamcad.benchmarks.cli import _meta

    res = {"meta": _meta("profile", {k: v for k, v in vars(args).items() if k not in ("child", "mode", "result")}),
           "profiles": []}
    for mode in args.modes.split(","):
        prof = profile_mode(mode, args.source, args.frames, args.label, args.size, args.rate)
        prof["per_frame"] = per_frame(prof)
        res["profiles"].append(prof)
        print(f"\n{mode} ({args.source}, {args.label}): {prof['fps_idle']:.0f} / {prof['fps_cpu']:.0f} / {prof['fps_gil']:.0f} fps "
              "under py-spy (idle / cpu / gil runs); ms per frame:")
        for thread, t in prof["per_frame"].items():
            print(f"  {thread:28s} wall {_ms(t['wall_ms'])}  on CPU {sum(t['cpu_ms'].values()):6.2f}  holds GIL {sum(t['gil_ms'].values()):6.2f}")
            for stage, ms in list(t["cpu_ms"].items())[:7]:
                print(f"    {stage:26s}            cpu {ms:6.2f}  gil {t['gil_ms'].get(stage, 0.0):6.2f}")
    res["meta"]["load_at_end"] = list(os.getloadavg())
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
