"""What a clinician is shown on content that is not breast: every frame of every non-breast
recording in ../shared/data/video through the real pipeline, and the state each gets.

    recording (file:PATH at its own frame rate, as a capture card delivers it) --Pipeline (the runtime's own ROI, quality
      flags, preprocessing, model, out-of-domain gate, smoothing) --ZeroMQ PUB on 127.0.0.1-->
      Subscriber thread: every Score's state
      --> per recording and pooled: the share of frames shown `suspicious`, `clear`,
          `no_lesion` and `flagged` (the last = no score: quality flag or out_of_domain)
    for each of: the model as shipped; the same graph with another gate (--gate NAME=MANIFEST,
    e.g. an earlier manifest from git); the same graph with no gate (what the classifier alone
    would tell)

    OMP_NUM_THREADS=1 python -m streamcad.benchmarks.nonbreast_states engines/models/default.onnx \\
        --gate rendered-only=OLD.json --out benchmarks/results/nonbreast-states-default.json

Paced (`--pace native`, the default): the smoother's time constant is in seconds of the frames'
own arrival times, so the state a clinician sees depends on the frame rate. With `--pace none`
(every frame as fast as the model scores it; the runs before 2026-12-04 04:00 UTC) the average
spans as many frames as the model scores in that time: a model twice as slow averages over half
as many, and the two are not compared on the same footing.

The recordings are the content gate's test set (no frame of them fits anything). The share
`suspicious` is the number that matters at the bedside: a lung, an eye or a phantom that reads
"suspicious" is the failure the gate exists to prevent.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from streamcad.benchmarks.machine import machine_info
from streamcad.errors import ConfigError
from streamcad.messages import SCORE_STATES

__all__ = ["run_recording", "summarise", "with_gate", "run", "main"]

log = logging.getLogger(__name__)


def run_recording(model_path: str | Path, video: str | Path, timeout_s: float = 600.0, pace: str = "native") -> list[str]:
    """Every frame of one video file through the real pipeline -> the published state of each
    (pace 'native': at the file's frame rate; a frame the pipeline is too slow for is dropped, as live)."""
    from streamcad.benchmarks.operating_point import _free_port, run_subscribed
    from streamcad.config import config_from_dict
    from streamcad.messages import Score
    from streamcad.pipeline import Pipeline

    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    cfg = config_from_dict({
        "source": {"uri": f"file:{video}", "pace": pace},
        "model": {"path": str(model_path), "threads": 1},
        "publish": {"endpoint": endpoint, "stream": "nonbreast", "hwm_seconds": 60.0},
        "dashboard": False,
    })
    states: list[str] = []
    with Pipeline(cfg) as pipe:
        report = run_subscribed(pipe, endpoint, lambda m: states.append(m.state) if isinstance(m, Score) else None,
                                timeout_s)
    if len(states) != report.frames_out:
        raise ConfigError(f"{Path(video).name}: received {len(states)} scores of {report.frames_out} published; "
                          "expected every one (a subscriber that lagged)")
    return states


def summarise(states: list[str]) -> dict:
    """States of one recording -> {'frames': N, state: share of frames, ...} for every SCORE_STATES."""
    unknown = set(states) - set(SCORE_STATES)
    if unknown:
        raise ConfigError(f"states {sorted(unknown)}; expected only {', '.join(SCORE_STATES)}")
    n = len(states)
    return {"frames": n, **{s: (sum(x == s for x in states) / n if n else 0.0) for s in SCORE_STATES}}


def with_gate(model: Path, manifest: dict | None, folder: Path) -> Path:
    """A copy of `model` in `folder` whose manifest carries `manifest`'s gate (None: no gate);
    the graph is the same file, byte for byte."""
    from streamcad.manifest import read_manifest, write_manifest

    m = read_manifest(model)
    if manifest is not None and manifest.get("sha256") != m.sha256:
        raise ConfigError(f"the gate's manifest is for graph {str(manifest.get('sha256'))[:12]}, "
                          f"not {model.name} ({m.sha256[:12]})")
    dst = folder / model.name
    shutil.copyfile(model, dst)
    write_manifest(dst, **{**m.to_fields(), "ood": {} if manifest is None else manifest["ood"]})
    return dst


def run(model: Path, out: Path, gates: dict[str, Path], root: str | None = None, pace: str = "native") -> dict:
    from streamcad.train.data.datasets import data_root

    t0 = time.perf_counter()
    vdir = data_root(root) / "video"
    clips = json.loads((vdir / "sectors.json").read_text())
    variants: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {"shipped": model}
        for name, path in gates.items():
            (Path(tmp) / name).mkdir()
            models[name] = with_gate(model, json.loads(Path(path).read_text()), Path(tmp) / name)
        (Path(tmp) / "no-gate").mkdir()
        models["no-gate"] = with_gate(model, None, Path(tmp) / "no-gate")
        for name, path in models.items():
            per = {}
            for c in clips:
                per[c["file"]] = {**summarise(run_recording(path, vdir / c["file"], pace=pace)), "organ": c.get("organ"),
                                  "probe": c.get("probe")}
                log.info("%s %s: %s", name, c["file"], per[c["file"]])
            n = np.array([r["frames"] for r in per.values()])
            variants[name] = {
                "recordings": per,
                "pooled": {s: float(np.average([r[s] for r in per.values()], weights=n)) for s in SCORE_STATES},
                "recordings_any_suspicious": int(sum(r["suspicious"] > 0 for r in per.values())),
            }
    from streamcad.manifest import read_manifest

    res = {"schema": 1, "model": model.name, "model_sha256": read_manifest(model).sha256,
           "gates": {k: str(v) for k, v in gates.items()}, "pace": pace, "variants": variants,
           "frames": int(sum(r["frames"] for r in next(iter(variants.values()))["recordings"].values())),
           "wall_s": time.perf_counter() - t0, "machine": machine_info(),
           "command": f"python -m streamcad.benchmarks.nonbreast_states {model} "
                      + "".join(f"--gate {k}={v} " for k, v in gates.items()) + f"--pace {pace} --out {out}"}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    return res


def _gate_arg(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path or name in ("shipped", "no-gate"):
        raise argparse.ArgumentTypeError(f"--gate {text!r}; expected NAME=MANIFEST.json (NAME not 'shipped' or 'no-gate')")
    return name, Path(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", type=Path, help="MODEL.onnx with its manifest")
    p.add_argument("--gate", type=_gate_arg, action="append", default=[],
                   help="NAME=MANIFEST.json: the same graph with that manifest's gate, measured beside it")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/nonbreast-states.json"))
    p.add_argument("--root", default=None, help="data root (default ../shared/data)")
    p.add_argument("--pace", choices=("native", "none"), default="native",
                   help="native: each recording at its own frame rate (the smoothing's time base, as live); none: "
                        "every frame as fast as scored (module docstring)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = run(args.model, args.out, dict(args.gate), args.root, args.pace)
    for name, v in res["variants"].items():
        print(f"{name:14s} " + "  ".join(f"{s} {100 * v['pooled'][s]:5.1f}%" for s in SCORE_STATES)
              + f"  recordings with a suspicious frame {v['recordings_any_suspicious']} of {len(v['recordings'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
