"""`streamcad demo`: a simulated probe sweep over the BUS-BRA sample kept in the repo, scored by
the shipped model, published on tcp://127.0.0.1:5555, with the dashboard. Watch the stream from
another terminal with `streamcad listen`."""

from __future__ import annotations

import argparse

from streamcad.commands.run import run_pipeline
from streamcad.config import config_from_dict
from streamcad.errors import ArtifactError
from streamcad.pipeline import DEFAULT_MODEL

HELP = "simulated probe sweep over sample images with the shipped model"
HANDLES_SIGINT = True  # run_pipeline installs the Ctrl-C handler (see streamcad.cli)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=None, help="stop after N frames (default: until Ctrl-C)")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sector", choices=["linear", "curved"], default="linear")
    p.add_argument("--no-dashboard", dest="dashboard", action="store_false")


def run(args: argparse.Namespace) -> int:
    if not DEFAULT_MODEL.is_file():
        raise ArtifactError(
            f"the shipped model {DEFAULT_MODEL} is not in this checkout; "
            "train and export it (see README 'The shipped model'), or use `streamcad run --model`"
        )
    from streamcad.sources import open_source

    source = open_source("sweep:", sector=args.sector, fps=args.fps, seed=args.seed, loop=True)
    config = config_from_dict(
        {
            "source": {"uri": "sweep:", "fps": args.fps, "seed": args.seed, "loop": True},
            "publish": {"endpoint": args.endpoint, "stream": "demo"},
            "frames": args.frames,
            "dashboard": args.dashboard,
        }
    )
    return run_pipeline(config, source=source)
