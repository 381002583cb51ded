"""Packaging as a new user meets it: the wheel (its top-level names, the licence files and
metadata, the package data the runtime needs, no setuptools deprecation warnings while it is
built), every test module collected where torch and scikit-learn are absent, and the
Makefile's Python check (one line, no .venv left behind)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    """Build the wheel from a copy of the checkout (no network: this venv's setuptools)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv*", ".whl", ".gpu", "build", "runs", "*.egg-info",
                                                            "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"))
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:  # the dev extra brings >= 77 (PEP 639 licence fields)
        pytest.skip(f"setuptools {setuptools.__version__} in this venv; the wheel needs >= 77 (the dev extra)")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (whl,) = (tmp / "dist").glob("streamcad-*.whl")
    return whl, r.stdout + r.stderr


def test_wheel_top_level_names_and_package_data(wheel):
    whl, _ = wheel
    names = zipfile.ZipFile(whl).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    # one name in site-packages: the tooling is installed under the project's namespace
    assert top == {"streamcad"}, top
    for needed in ("streamcad/schemas/score.schema.json", "streamcad/schemas/status.schema.json",
                   "streamcad/data/sample/labels.csv", "streamcad/data/sample/LICENSE.txt",
                   "streamcad/engines/models/default.onnx", "streamcad/engines/models/default.json",
                   "streamcad/train/splits/busbra_5fold.csv", "streamcad/train/splits/busi_5fold.csv",
                   "streamcad/train/data/arrays.py", "streamcad/benchmarks/cli.py", "streamcad/engines/export.py"):
        assert needed in names, needed
    assert any(n.startswith("streamcad/data/sample/images/") and n.endswith(".png") for n in names)
    assert not any(n.startswith(("streamcad/tests/", "streamcad/docs/")) for n in names)


def test_every_package_folder_is_in_the_wheel_list():
    """pyproject lists the packages (package-dir maps the checkout's folders): a new folder with an
    __init__.py that is not listed would be missing from every install. Compare both ways."""
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapped = {"streamcad": "streamcad", **cfg["package-dir"]}
    found = set()
    for name, folder in mapped.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name, *rel)))
    assert found == listed, (sorted(found - listed), sorted(listed - found))


def test_installed_wheel_imports_the_tooling_under_the_namespace(wheel, tmp_path):
    """Unpacked the way pip installs it, away from the checkout: streamcad.engines / .train /
    .benchmarks import from the wheel, the shipped model is found inside it, and there is no
    top-level `train` or `engines` to collide with a user's own."""
    whl, _ = wheel
    site = tmp_path / "site"
    zipfile.ZipFile(whl).extractall(site)
    code = textwrap.dedent(
        """
        import importlib.util, sys
        import streamcad, streamcad.engines, streamcad.benchmarks
        from streamcad.pipeline import DEFAULT_MODEL
        assert streamcad.__file__.startswith(sys.argv[1]), streamcad.__file__
        assert streamcad.engines.__file__.startswith(sys.argv[1] + "/streamcad/engines"), streamcad.engines.__file__
        assert DEFAULT_MODEL.is_file() and str(DEFAULT_MODEL).startswith(sys.argv[1]), DEFAULT_MODEL
        assert importlib.util.find_spec("streamcad.train.cv").origin.startswith(sys.argv[1])
        for generic in ("train", "engines", "benchmarks"):
            assert importlib.util.find_spec(generic) is None, generic
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -I: isolated (no cwd, no user site); the venv's own site-packages holds this checkout's
    # editable finder, so only the unpacked wheel is put first and the checkout must not be used
    r = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); exec({code!r})", str(site)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout[-2000:] + r.stderr[-2000:]


def test_wheel_licence_and_metadata(wheel):
    whl, _ = wheel
    z = zipfile.ZipFile(whl)
    meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(z.read(meta_name).decode())
    assert meta["License-Expression"].startswith("Apache-2.0"), meta["License-Expression"]
    files = meta.get_all("License-File")
    assert "LICENSE" in files and "streamcad/data/sample/LICENSE.txt" in files, files
    lic = z.read(meta_name.replace("METADATA", "licenses/LICENSE")).decode()
    assert "Apache License" in lic and "Version 2.0, January 2004" in lic
    assert "END OF TERMS AND CONDITIONS" in lic  # the whole text, not a stub
    assert meta["Requires-Python"] == ">=3.11"
    extras = set(meta.get_all("Provides-Extra"))
    assert {"cpu", "gpu", "eval", "train", "tensorrt", "dev"} <= extras, extras
    runtime = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert not any(r.startswith("onnxruntime") for r in runtime), runtime  # cpu or gpu, never both


def test_wheel_builds_without_setuptools_deprecation_warnings(wheel):
    _, log = wheel
    bad = [ln for ln in log.splitlines() if "Deprecat" in ln or "deprecated" in ln]
    assert not bad, "\n".join(bad)


BLOCKER = textwrap.dedent(
    """
    import sys

    class Absent:  # as if the train and eval extras were not installed
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "torchvision", "kornia", "sklearn", "scipy", "matplotlib"}:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Absent())
    """
)


def test_every_test_module_collects_without_torch(tmp_path):
    """The runtime-only install collects the whole suite: training modules skip themselves."""
    (tmp_path / "block_train_extra.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "block_train_extra", "tests"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    tail = r.stdout[-3000:] + r.stderr[-2000:]
    assert r.returncode == 0, tail
    assert "error" not in r.stdout.splitlines()[-1].lower(), tail
    collected = [ln for ln in r.stdout.splitlines() if "::" in ln]
    assert any(ln.startswith("tests/test_messages.py::") for ln in collected), tail
    assert not any(ln.startswith("tests/test_finetune.py::") for ln in collected), "training tests ran without torch"


def _fake_python(path: Path, version: str) -> Path:
    """An interpreter stand-in that reports `version` to the Makefile's checks and can make no venv."""
    major, minor = (int(x) for x in version.split(".")[:2])
    path.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case "$*" in
          *version_info*) [ {major} -gt 3 ] || [ {minor} -ge 11 ] && exit 0 || exit 1 ;;
          *python_version*) echo {version}; exit 0 ;;
          *"-m venv"*) mkdir -p "$3/bin"; exit 1 ;;
        esac
        exit 1
        """))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_makefile_refuses_old_python_in_one_line_and_leaves_no_venv(tmp_path):
    for f in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / f, tmp_path / f)
    old = _fake_python(tmp_path / "python3.10", "3.10.13")
    r = subprocess.run(["make", "demo", f"PY={old}"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    ours = [ln for ln in r.stderr.splitlines() if ln.startswith("make: ") and "***" not in ln]  # not make's own
    assert ours == [f"make: streamcad needs Python >= 3.11; {old} is 3.10.13: make PY=python3.11 ... (or newer)"], r.stderr
    assert not (tmp_path / ".venv").exists()
    # a new-enough interpreter whose venv creation fails: the half-made .venv is removed again
    broken = _fake_python(tmp_path / "python3.12", "3.12.1")
    r = subprocess.run(["make", "demo", f"PY={broken}"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert f"make: could not create .venv with {broken} (removed it again)" in r.stderr, r.stderr
    assert not (tmp_path / ".venv").exists()
    # a .venv made earlier with an old Python is named, not used
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(old, tmp_path / ".venv" / "bin" / "python")
    r = subprocess.run(["make", "demo", f"PY={broken}"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "make: .venv was made with Python 3.10.13; streamcad needs >= 3.11: rm -rf .venv and rerun" in r.stderr, r.stderr
