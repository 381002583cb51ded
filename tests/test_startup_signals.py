"""Ctrl-C at any moment of start-up: exit 130, no traceback, at most one line on stderr.

A real `streamcad run --source sweep:` child, started as the console script pip writes from
pyproject's [project.scripts] line (made here with pip's own ScriptMaker, so the test follows
that line) and as `python -m streamcad`, gets SIGINT at a series of delays after spawn (0 to
0.6 s) and at the moments the child maps numpy, OpenCV, msgspec and ONNX Runtime (seen in
/proc/PID/maps: the signal then lands inside those imports, which printed a KeyboardInterrupt
traceback from inside `import streamcad` before streamcad.__main__ existed).

The one window left is before the entry point: interpreter start-up (site, an editable install's
.pth finder) and the wrapper's own `import streamcad`. A signal there may still give Python's
own traceback; such an outcome is recognised by its frames (only the standard library, the
wrapper, streamcad/__init__.py) and counted, never a pass for a traceback from later code. A
signal there can also be dropped by CPython ("Exception ignored in" a weakref callback of the
frozen import machinery; seen once in CI): start-up then goes on, and the test, like a user,
presses Ctrl-C a second time, which must end the run as usual.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path

import pytest

from streamcad.manifest import write_manifest
from tests.helpers_onnx import make_contract_onnx

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
DELAYS = [0.0, 0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6]
MARKERS = ["_multiarray_umath", "cv2", "msgspec", "onnxruntime"]  # shared objects, in load order
# import hooks that site-packages' .pth files install at start-up (an editable install's finder,
# setuptools' distutils shim): their frames come before any entry point
_PTH_HOOKS = ("__editable__", "_distutils_hack")
_STDLIB = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")}


def _default_sigint() -> None:
    """preexec_fn of every child: Ctrl-C at its default, whatever the test runner inherited (a
    shell's background job, `nohup ... &`, starts with SIGINT ignored, and so would its children)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)

pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")


@pytest.fixture(scope="module")
def console_script(tmp_path_factory) -> Path:
    """The `streamcad` script exactly as `pip install` writes it for pyproject's entry point
    (in a subprocess: pip's internals import the standard library's distutils, which would
    break a later `import setuptools` in this process, tests/test_packaging.py's)."""
    entry = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["streamcad"]
    bin_dir = tmp_path_factory.mktemp("bin")
    code = ("import sys\n"
            "from pip._internal.operations.install.wheel import PipScriptMaker\n"
            "maker = PipScriptMaker(None, sys.argv[1])\n"
            "maker.clobber, maker.variants, maker.set_mode, maker.executable = True, {''}, True, sys.executable\n"
            "print(*maker.make('streamcad = ' + sys.argv[2]))")
    r = subprocess.run([sys.executable, "-c", code, str(bin_dir), entry], capture_output=True, text=True, timeout=60)
    if r.returncode != 0 and "ModuleNotFoundError" in r.stderr:  # pip's layout changed: it needs the writer
        pytest.skip(f"pip's PipScriptMaker is not importable: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip())


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    p = make_contract_onnx(tmp_path_factory.mktemp("model") / "m.onnx", size=32, saliency_hw=(4, 4))
    write_manifest(p, operating_threshold=0.5)
    return p


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def _frames(err: str) -> list[str]:
    return re.findall(r'^\s*File "([^"]+)"', err, flags=re.M)


def _before_entry(err: str, script: Path) -> bool:
    """A traceback whose frames are all from before the entry point: interpreter start-up
    (<frozen ...>, site, the standard library, the .pth import hooks) or the wrapper
    importing the streamcad package itself."""
    allowed = (str(script), str(REPO / "streamcad" / "__init__.py"), "<string>")
    for f in _frames(err):
        real = os.path.realpath(f) if not f.startswith("<") else f
        if f.startswith("<frozen") or f in allowed or any(h in f for h in _PTH_HOOKS):
            continue
        if any(real.startswith(d + os.sep) for d in _STDLIB) and "site-packages" not in real:
            continue
        return False
    return True


def _interrupt(argv: list[str], model: Path, cwd: Path, *, delay: float = 0.0, marker: str | None = None):
    p = subprocess.Popen([*argv, "run", "--no-dashboard", "--model", str(model), "--source", "sweep:",
                          "--endpoint", "tcp://127.0.0.1:*"],
                         cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=_default_sigint)
    try:
        t0 = time.monotonic()
        if marker is not None:  # an event: the library is mapped, its import is under way
            while marker not in _maps(p.pid) and p.poll() is None and time.monotonic() - t0 < 60:
                pass
            assert p.poll() is None, p.communicate()
        else:  # a delay after spawn (busy-wait: a sleep's own wake-up would blur the short ones)
            while time.monotonic() - t0 < delay:
                pass
        p.send_signal(signal.SIGINT)
        try:
            _, err = p.communicate(timeout=20)
        except subprocess.TimeoutExpired as e:
            early = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            if not _SWALLOWED.search(early):
                raise
            # CPython dropped the KeyboardInterrupt ("Exception ignored in" a weakref callback of
            # the import machinery, before the entry point): start-up went on, and a user's second
            # Ctrl-C is what stops it, as here (communicate again loses no output)
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    return p.returncode, err


# A KeyboardInterrupt CPython could not raise: it landed in a callback of the frozen import
# machinery (importlib's module-lock weakref callback), was printed as ignored and dropped.
_SWALLOWED = re.compile(r"Exception ignored in: [^\n]*\nTraceback \(most recent call last\):\n"
                        r"(?:  File \"<frozen [^\n]*\n(?:    [^\n]*\n)?)+KeyboardInterrupt: ?\n")


def _judge(rc: int, err: str, script: Path, what: str) -> str:
    """'quiet' (the fix), 'ran' (the pipeline was running: Ctrl-C is its normal stop, 0 and
    the summary line) or 'before-entry' (see _before_entry, and a first Ctrl-C that CPython
    dropped in the import machinery before the entry point, the second one then ending the run
    'quiet' or 'ran'); anything else fails."""
    dropped = _SWALLOWED.search(err)
    if dropped:
        verdict = _judge(rc, err[:dropped.start()] + err[dropped.end():], script, what)
        if verdict in ("quiet", "ran"):
            return "before-entry"
        pytest.fail(f"{what}: a dropped first Ctrl-C, then rc {rc}, stderr:\n{err}")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if rc == 130 and "Traceback" not in err and len(lines) <= 1:
        return "quiet"
    if rc == 0 and len(lines) == 1 and " frames in " in lines[0]:
        return "ran"
    if rc == -signal.SIGINT and not lines:  # killed before Python installed its own handler
        return "before-entry"
    if "Traceback" in err and _before_entry(err, script):
        return "before-entry"
    pytest.fail(f"{what}: rc {rc}, stderr:\n{err}")


@pytest.mark.parametrize("form", ["console-script", "python-m"])
def test_ctrl_c_at_any_moment_of_start_up(form, console_script, model, tmp_path):
    argv = [str(console_script)] if form == "console-script" else [sys.executable, "-m", "streamcad"]
    outcomes: dict[str, list[str]] = {"quiet": [], "ran": [], "before-entry": []}
    for marker in MARKERS:
        rc, err = _interrupt(argv, model, tmp_path, marker=marker)
        verdict = _judge(rc, err, console_script, f"SIGINT as {marker} loads")
        assert verdict == "quiet", (marker, verdict, rc, err)  # inside the imports: always the fix
        outcomes[verdict].append(marker)
    for delay in DELAYS:
        rc, err = _interrupt(argv, model, tmp_path, delay=delay)
        outcomes[_judge(rc, err, console_script, f"SIGINT {delay} s after spawn")].append(str(delay))
    print(form, outcomes)
    assert len(outcomes["quiet"]) >= len(MARKERS), outcomes


def test_importing_streamcad_installs_no_signal_handler_and_is_light():
    """A UI importing the library keeps its own Ctrl-C; the public names still resolve."""
    code = ("import signal, sys, streamcad\n"
            "light = sorted(m for m in ('numpy', 'cv2', 'msgspec', 'zmq') if m in sys.modules)\n"
            "same = signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
            "from streamcad import PreprocessSpec, StreamcadError, preprocess\n"
            "import streamcad.preprocess\n"  # binds the submodule on the package: the name stays the function
            "print(light, same, callable(preprocess) and streamcad.preprocess is preprocess,\n"
            "      PreprocessSpec.__module__, StreamcadError.__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True, preexec_fn=_default_sigint,
                         timeout=60, check=True).stdout.split()
    assert out == ["[]", "True", "True", "streamcad.preprocess", "streamcad.errors"], out
