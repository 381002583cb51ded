"""The one command line: `streamcad SUBCOMMAND ...`.

Each subcommand lives in its own module exposing `HELP`, `add_arguments(parser)` and
`run(args) -> int`. Only the chosen subcommand's module is imported, so `streamcad run`
never imports torch, and `streamcad train ...` imports it only when it starts.
Errors of our own (StreamcadError) are printed as one line with a non-zero exit, no traceback,
and so is a missing optional dependency (torch for `train`, scikit-learn for `evaluate`, ...):
the line names the extra and the pip command that installs it from this checkout
(streamcad.extras).
The console script and `python -m streamcad` enter through streamcad.__main__: a Ctrl-C in the
imports before main() runs exits 130 there; from main() on, _StartupInterrupt holds it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading

from streamcad.errors import StreamcadError
from streamcad.extras import missing_module_message

# name -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("streamcad.commands.run", "run the pipeline: source -> model -> ZeroMQ scores"),
    "listen": ("streamcad.commands.listen", "subscribe to a stream and print messages"),
    "replay": ("streamcad.commands.replay", "re-publish a recorded session, or re-score its frames (--rescore)"),
    "view": ("streamcad.commands.view", "web page of the live streams: picture, overlays, state, score trace"),
    "demo": ("streamcad.commands.demo", "simulated probe sweep over sample images with the shipped model"),
    "info": ("streamcad.commands.info", "versions, available backends and GPUs"),
    "proxy": ("streamcad.commands.proxy", "XSUB/XPUB proxy: many scanners to many UIs"),
    "keys": ("streamcad.commands.keys", "generate CURVE key pairs for access control"),
    "evaluate": ("streamcad.engines.evaluate", "score a model on a folder laid out like BUSI or BUS-BRA"),
    "export": ("streamcad.engines.export", "export a training checkpoint to ONNX with a parity check"),
    "convert": ("streamcad.engines.convert", "build a TensorRT engine from ONNX with an accuracy gate"),
    "bench": ("streamcad.benchmarks.cli", "latency / throughput benchmarks of the real pipeline"),
    "train": ("streamcad.train.cli", "training (the train extra): splits, pretrain, finetune, experiment, ship, ... (train --help)"),
}
# the extra a command needs beyond the runtime; a missing module of it is reported as this extra
NEEDS_EXTRA: dict[str, str] = {"view": "viewer", "evaluate": "eval", "export": "train", "bench": "train", "train": "train",
                               "convert": "tensorrt"}


class _MissingModule(Exception):
    def __init__(self, command: str, message: str):
        super().__init__(message)
        self.command = command


def _missing(command: str | None, exc: ModuleNotFoundError) -> _MissingModule:
    """A missing optional module -> _MissingModule with the one line to print; else re-raise."""
    msg = missing_module_message(exc.name or "", NEEDS_EXTRA.get(command or ""))
    if msg is None:
        raise exc
    return _MissingModule(command or "", msg)


class _StartupInterrupt:
    """Ctrl-C while a command starts (imports of OpenCV / ONNX Runtime / ZeroMQ, config, model
    loading) would surface as a traceback from inside an import, or as the ImportError of a
    half-initialised extension. Until the command can stop cleanly, a first Ctrl-C is noted (and
    acted on then: exit 130); a second one interrupts at once."""

    def __init__(self) -> None:
        self.pending = False
        self._previous = None
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = signal.signal(signal.SIGINT, self._note)

    def _note(self, signum: int, frame: object) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True

    def release(self) -> bool:
        """Put the previous SIGINT handler back; True if Ctrl-C was pressed meanwhile."""
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
        return self.pending


_STARTUP: _StartupInterrupt | None = None


def startup_interrupted() -> bool:
    """For commands that install their own SIGINT handler (HANDLES_SIGINT = True, e.g. `run`):
    was Ctrl-C pressed before they did? They call this right after installing it."""
    return _STARTUP is not None and _STARTUP.pending


def _build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object | None]:
    parser = argparse.ArgumentParser(prog="streamcad", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-vv: debug, with OpenCV's and FFmpeg's own lines)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name, (mod_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            try:
                module = importlib.import_module(mod_name)
            except ModuleNotFoundError as exc:
                raise _missing(name, exc) from exc
            module.add_arguments(p)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    global _STARTUP
    previous, _STARTUP = _STARTUP, _StartupInterrupt()
    try:
        return _main(argv, _STARTUP)
    except KeyboardInterrupt:
        return 130
    finally:
        _STARTUP.release()
        _STARTUP = previous


def _main(argv: list[str] | None, startup: _StartupInterrupt) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser, module = _build_parser(argv)
    except _MissingModule as exc:
        print(f"streamcad {exc.command}: error: {exc}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    if module is None:
        parser.print_help()
        return 2
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level == logging.DEBUG:  # OpenCV's and FFmpeg's own lines too (quiet by default: streamcad/__init__.py)
        from streamcad import _allow_native_logs

        _allow_native_logs()
    if startup.pending or (not getattr(module, "HANDLES_SIGINT", False) and startup.release()):
        return 130  # Ctrl-C while starting: nothing was done yet
    try:
        return int(module.run(args) or 0)
    except StreamcadError as exc:
        print(f"streamcad {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        print(f"streamcad {args.command}: error: {_missing(args.command, exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # `python -m streamcad.cli`: run the one importable copy of this module, so that commands
    # importing streamcad.cli (startup_interrupted) see the same state as main()
    from streamcad.cli import main as _main

    sys.exit(_main())
