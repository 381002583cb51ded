"""Every code example in README.md and docs/*.md is run (or, where it cannot be, checked and
skipped with the reason written beside it in the doc).

A fenced block's language says what it is:
- `python`: run in a subprocess against a real `streamcad demo` pipeline on a free loopback port
  (the example's `tcp://127.0.0.1:5555` is pointed there); its output must show the demo's stream.
- `js`: the same with Node.js, where `node` and the `zeromq` package are installed (else skipped).
- `toml`: must load as a streamcad config (strict: unknown keys are errors).
- `sh`: every `streamcad ...` line must parse with the real command line (flags exist), every
  `make TARGET` must be a target of the Makefile (`make -n`), every `pip install -e '.[X]'` must
  name extras of pyproject.toml. A block that can be run quickly is run; one marked
  `<!-- example: skip: REASON -->` on the line before it (long runs, GPUs, downloads) is only
  checked, and the test reports the reason.
- no language: text (diagrams, wire layouts). Such a block must not start with a command:
  commands are `sh` blocks, so that they are checked.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DEMO_ENDPOINT = "tcp://127.0.0.1:5555"
COMMAND_WORDS = ("streamcad ", "make ", "pip ", "python ", "python3 ", ".venv", "torchrun ", "cd ", "git ")


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    lang: str
    code: str
    skip: str | None  # the reason written beside it, for blocks that are checked but not run

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}:{self.lang or 'text'}"


def blocks() -> list[Block]:
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in re.finditer(r"^```([\w-]*)\n(.*?)^```", text, re.S | re.M):
            before = text[: m.start()].rstrip("\n").splitlines()
            marker = re.fullmatch(r"<!-- example: skip: (.+?) -->", before[-1].strip()) if before else None
            out.append(Block(path.relative_to(REPO).as_posix(), text[: m.start()].count("\n") + 1, m.group(1),
                             m.group(2), marker.group(1) if marker else None))
    return out


ALL = blocks()
KNOWN = {"", "python", "js", "toml", "sh", "json"}


def test_every_block_has_a_known_kind():
    bad = [b.id for b in ALL if b.lang not in KNOWN]
    assert not bad, f"blocks of unknown language {bad}; expected one of {sorted(KNOWN)}"
    assert sum(b.lang == "python" for b in ALL) >= 2 and any(b.lang == "sh" for b in ALL)


@pytest.mark.parametrize("block", [b for b in ALL if b.lang == ""], ids=lambda b: b.id)
def test_text_blocks_are_not_commands(block):
    first = next((ln.strip() for ln in block.code.splitlines() if ln.strip() and not ln.startswith("#")), "")
    assert not first.startswith(COMMAND_WORDS), f"{block.id} starts with a command: tag it ```sh so it is checked"


# ----------------------------------------------------------------------------- toml


@pytest.mark.parametrize("block", [b for b in ALL if b.lang == "toml"], ids=lambda b: b.id)
def test_toml_blocks_are_valid_configs(block):
    from streamcad.config import config_from_dict

    config_from_dict(tomllib.loads(block.code))  # raises ConfigError naming the key


# ----------------------------------------------------------------------------- sh


def _commands(code: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        line = line.split("  #", 1)[0].split(" # ", 1)[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _check_streamcad(argv: list[str]) -> None:
    """Parse argv with streamcad's real parser (no command runs). SystemExit = a bad flag."""
    import contextlib
    import io

    from streamcad.cli import _build_parser

    parser, _ = _build_parser(argv)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            raise AssertionError(f"`streamcad {shlex.join(argv)}` does not parse: {err.getvalue().strip()}") from exc


def _check_make(words: list[str]) -> None:
    targets = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
    assignments = [w for w in words[1:] if "=" in w]
    for t in targets or ["demo"]:
        r = subprocess.run(["make", "-n", t, *assignments], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 or "make evaluate: name the folder" in r.stderr, (t, r.stderr)
        assert "No rule to make target" not in r.stderr, (t, r.stderr)


def _check_pip(words: list[str]) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for w in words:
        m = re.fullmatch(r"'?\.\[([a-z,]+)\]'?", w)
        if m:
            unknown = set(m.group(1).split(",")) - set(project["optional-dependencies"])
            assert not unknown, f"pip install names unknown extras {unknown}"


@pytest.mark.parametrize("block", [b for b in ALL if b.lang == "sh"], ids=lambda b: b.id)
def test_sh_blocks(block):
    cmds = _commands(block.code)
    assert cmds, block.id
    for cmd in cmds:
        words = shlex.split(cmd)
        exe = Path(words[0]).name
        if exe == "streamcad":
            _check_streamcad(words[1:])
        elif exe == "make":
            if shutil.which("make"):
                _check_make(words)
        elif exe == "pip" or words[1:3] == ["-m", "pip"]:
            _check_pip(words)
        elif exe == "torchrun":
            i = words.index("streamcad.cli")
            _check_streamcad(words[i + 1:])
        elif exe not in ("python3", "python") and not block.skip:  # a skipped block may name outside tools
            raise AssertionError(f"{block.id}: no check for `{exe}`; add one to tests/test_docs_examples.py")
    if block.skip:
        pytest.skip(f"checked, not run: {block.skip}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO)}
    for cmd in cmds:
        r = subprocess.run(cmd, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{block.id}: `{cmd}` exit {r.returncode}: {r.stderr[-2000:]}"


# ----------------------------------------------------------------------------- python / js


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_endpoint():
    """A real `streamcad demo` (the shipped model over the repo's sample sweep) on a free port."""
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "streamcad.cli", "demo", "--no-dashboard", "--frames", "100000",
                             "--endpoint", endpoint], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        # the examples start once the demo publishes (loading the model can take seconds on a busy
        # machine, and an example rightly calls a silent stream stale after 3 s)
        from streamcad.client import Subscriber

        with Subscriber(endpoint, streams=["demo"]) as sub:
            assert sub.recv(timeout=90.0) is not None, f"the demo published nothing within 90 s: {proc.poll()}"
        yield endpoint, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_example(argv: list[str], code: str, endpoint: str, want_lines: int, timeout: float = 60.0) -> list[str]:
    """Run an example until it printed `want_lines` lines (or ended); -> its stdout lines."""
    assert DEMO_ENDPOINT in code, "the example no longer talks to the demo's endpoint"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*argv, code.replace(DEMO_ENDPOINT, endpoint)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    got_enough = threading.Event()

    def read() -> None:
        for ln in proc.stdout:
            lines.append(ln.rstrip("\n"))
            if len(lines) >= want_lines:
                got_enough.set()
        got_enough.set()  # the example ended

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        got_enough.wait(timeout)
    finally:
        proc.kill()
        _, err = proc.communicate()
        reader.join(5)
    assert len(lines) >= want_lines, f"{len(lines)} lines in {timeout:.0f} s: {lines}; stderr: {err[-2000:]}"
    return lines


@pytest.mark.parametrize("block", [b for b in ALL if b.lang == "python"], ids=lambda b: b.id)
def test_python_examples_print_the_demo_stream(block, demo_endpoint):
    if block.skip:
        pytest.skip(block.skip)
    endpoint, demo = demo_endpoint
    assert demo.poll() is None, demo.stderr.read()
    lines = _run_example([sys.executable, "-c"], block.code, endpoint, want_lines=5)
    for ln in lines[:5]:
        # `seq state malignancy` (reference client) or `score/demo seq state malignancy` (bare pyzmq)
        m = re.fullmatch(r"(score/demo )?(\d+) (suspicious|clear|no_lesion|flagged) (None|[01](\.\d+)?)", ln)
        assert m, f"{block.id} printed {ln!r}"


def _node_zeromq() -> str | None:
    node = shutil.which("node")
    if node is None:
        return "needs Node.js (node not on PATH)"
    r = subprocess.run([node, "-e", "require('zeromq')"], cwd=REPO, capture_output=True, text=True, timeout=30)
    return None if r.returncode == 0 else "needs the zeromq npm package (zeromq.js v6)"


@pytest.mark.parametrize("block", [b for b in ALL if b.lang == "js"], ids=lambda b: b.id)
def test_js_examples_print_the_demo_stream(block, demo_endpoint):
    why = block.skip or _node_zeromq()
    if why:
        pytest.skip(why)
    endpoint, _ = demo_endpoint
    lines = _run_example([shutil.which("node"), "-e"], block.code, endpoint, want_lines=5)
    assert all(ln.startswith("score/demo ") for ln in lines[:5]), lines


def test_every_markdown_file_the_docs_name_exists():
    """README once cited a DESIGN.md that was not in the repository."""
    missing = []
    for path in DOCS:
        for ref in sorted(set(re.findall(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md)\b", path.read_text()))):
            if ref.startswith("shared/") or (REPO.parent / "shared").joinpath(ref).exists():
                continue  # ../shared/data/MANIFEST.md and friends live beside the checkout
            here = [REPO / ref, path.parent / ref, REPO / "docs" / ref, REPO / "engines" / "models" / ref]
            if not any(p.is_file() for p in here):
                missing.append(f"{path.relative_to(REPO)}: {ref}")
    assert not missing, missing


@pytest.mark.parametrize("block", [b for b in ALL if b.lang == "python" and "is_stale(" in b.code], ids=lambda b: b.id)
def test_python_example_notices_a_silent_stream(block):
    """The staleness check of an example must fire while the stream is silent, not only when a
    message arrives (a `for msg in sub` loop never gets to it)."""
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    demo = subprocess.Popen([sys.executable, "-m", "streamcad.cli", "demo", "--no-dashboard", "--frames", "100000",
                             "--endpoint", endpoint], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    example = subprocess.Popen([sys.executable, "-c", block.code.replace(DEMO_ENDPOINT, endpoint)], cwd=REPO,
                               env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    stale = threading.Event()
    scored = threading.Event()

    def read() -> None:
        for ln in example.stdout:
            lines.append(ln.strip())
            if ln.strip() == "demo stale":
                stale.set()
            elif len(lines) >= 3:
                scored.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert scored.wait(60), f"no scores: {lines}"
        demo.terminate()
        demo.wait(timeout=30)
        # stale = nothing for 3 heartbeats (3 s); allow the 1 s receive timeout on top
        assert stale.wait(15), f"the example never said the stream went stale: {lines[-5:]}"
    finally:
        for p in (demo, example):
            if p.poll() is None:
                p.kill()
                p.wait()
