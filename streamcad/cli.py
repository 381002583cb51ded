"""The one command line: `streamcad SUBCOMMAND ...`.

Each subcommand lives in its own module exposing `HELP`, `add_arguments(parser)` and
`run(args) -> int`. Only the chosen subcommand's module is imported, so `streamcad run`
never imports torch, and `streamcad train ...` imports it only when it starts.
Errors of our own (StreamcadError) are printed as one line with a non-zero exit, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from streamcad.errors import StreamcadError

# name -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("streamcad.commands.run", "run the pipeline: source -> model -> ZeroMQ scores"),
    "listen": ("streamcad.commands.listen", "subscribe to a stream and print messages"),
    "demo": ("streamcad.commands.demo", "simulated probe sweep over sample images with the shipped model"),
    "info": ("streamcad.commands.info", "versions, available backends and GPUs"),
    "proxy": ("streamcad.commands.proxy", "XSUB/XPUB proxy: many scanners to many UIs"),
    "keys": ("streamcad.commands.keys", "generate CURVE key pairs for access control"),
    "evaluate": ("engines.evaluate", "score a model on a folder laid out like BUSI or BUS-BRA"),
    "export": ("engines.export", "export a training checkpoint to ONNX with a parity check"),
    "convert": ("engines.convert", "build a TensorRT engine from ONNX with an accuracy gate"),
    "bench": ("benchmarks.cli", "latency / throughput benchmarks of the real pipeline"),
    "train": ("train.cli", "training: splits, pretrain, finetune, evaluate, experiment"),
}


def _build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object | None]:
    parser = argparse.ArgumentParser(prog="streamcad", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name, (mod_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(mod_name)
            module.add_arguments(p)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, module = _build_parser(argv)
    args = parser.parse_args(argv)
    if module is None:
        parser.print_help()
        return 2
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(module.run(args) or 0)
    except StreamcadError as exc:
        print(f"streamcad {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
