"""The command line's entry point: the `streamcad` console script and `python -m streamcad`.

    spawn -> interpreter start-up -> `import streamcad` (light: no numpy, no OpenCV)
          -> this module: Ctrl-C now ends the process quietly with 130
          -> main(): import streamcad.cli and the command (numpy, OpenCV, msgspec, ...)
          -> streamcad.cli.main() takes Ctrl-C over (held until the command can stop)

Before this module, Python's own handler is in place and a Ctrl-C in Python's imports (numpy,
cv2, msgspec: the first ~0.2 s) printed a KeyboardInterrupt traceback from inside them. Here
a Ctrl-C before the CLI's own handling has nothing to undo: nothing was read, written or
bound yet, so the process ends at once (os._exit, no traceback, no line). Importing this
module is what installs that handler, so only the command line imports it; a program that
imports `streamcad` as a library keeps its own Ctrl-C.
"""

# `_signal`, not `signal`: the interpreter loaded this builtin at start-up, so this line runs no
# import machinery, and nothing runs before the handler is in place (`import signal` runs
# Python code for ~0.1 ms: a Ctrl-C that landed there was still a traceback, 1 run of ~150).
import _signal
import os


def _interrupted(signum, frame):  # the imports before the CLI runs: nothing to clean up
    os._exit(130)


# Only where Python's default handler is in place (not where SIGINT is ignored: `nohup`, a
# background job of a non-interactive shell).
if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    _signal.signal(_signal.SIGINT, _interrupted)

import signal  # noqa: E402
import sys  # noqa: E402


def main() -> int:
    try:
        from streamcad.cli import main as cli_main

        if signal.getsignal(signal.SIGINT) is _interrupted:
            # KeyboardInterrupt again, caught below until streamcad.cli.main takes over (and
            # what it restores when its command ends: a `listen` stops through its finally)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        return cli_main()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
