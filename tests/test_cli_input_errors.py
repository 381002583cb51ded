"""Values that mean nothing, files nested or typed wrongly, key files set up wrongly, Ctrl-C while
starting: each gives ONE line on stderr naming the key (or file) and what was expected, exit code
1 (130 for Ctrl-C), never a traceback. Real `python -m streamcad.cli` subprocesses, started
together; model files are real ONNX graphs with real manifests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamcad.manifest import manifest_path, write_manifest
from streamcad.security import generate_keypair
from tests.helpers_onnx import make_contract_onnx

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _model(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = make_contract_onnx(d / "m.onnx", size=32, saliency_hw=(4, 4))
    write_manifest(p, operating_threshold=0.5)
    return p


def _raw_edit(model: Path, old: str, new: str) -> None:
    mp = manifest_path(model)
    text = mp.read_text()
    assert text.count(old) == 1, (old, text)
    mp.write_text(text.replace(old, new))


def _toml(tmp: Path, name: str, text: str) -> str:
    p = tmp / f"{name}.toml"
    p.write_text("version = 1\n" + text)
    return str(p)


def _cases(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    good = _model(tmp / "good")
    run = ["run", "--no-dashboard", "--frames", "1", "--model", str(good)]

    mean_str = _model(tmp / "mean_str")
    _raw_edit(mean_str, '"mean": 0.0', '"mean": "0.5"')
    std_inf = _model(tmp / "std_inf")
    _raw_edit(std_inf, '"std": 1.0', '"std": Infinity')
    mean_edit = _model(tmp / "mean_edit")  # a plausible number, no re-seal: p(malignant) would move
    _raw_edit(mean_edit, '"mean": 0.0', '"mean": 0.3')
    deep = _model(tmp / "deep")
    manifest_path(deep).write_text("[" * 100_000 + "]" * 100_000)
    old = _model(tmp / "v1")
    d = json.loads(manifest_path(old).read_text())
    d.pop("contract_sha256", None)
    d["schema_version"] = 1
    manifest_path(old).write_text(json.dumps(d))

    _, secret = generate_keypair(tmp / "keys", "server")
    open_secret = tmp / "keys" / "open.key_secret"
    open_secret.write_bytes(secret.read_bytes())
    open_secret.chmod(0o644)
    allow = tmp / "allow"
    allow.mkdir()

    deep_toml = tmp / "deep.toml"
    deep_toml.write_text("version = 1\n[quality]\nthresholds = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n")
    return {
        "fps_inf": ([*run, "--fps", "inf"], ["source.fps", "<= 1000"]),
        "fps_1e308": ([*run, "--fps", "1e308"], ["source.fps", "<= 1000"]),
        "hwm_inf": ([*run, "--config", _toml(tmp, "hwm", "[publish]\nhwm_seconds = inf\n")], ["publish.hwm_seconds", "<= 300"]),
        "seed_negative": ([*run, "--seed", "-1"], ["source.seed", ">= 0"]),
        "tau_inf": ([*run, "--config", _toml(tmp, "tau", "[smoothing]\ntau_s = inf\n")], ["smoothing.tau_s", "<= 60"]),
        "leave_inf": ([*run, "--config", _toml(tmp, "leave", "[smoothing]\nleave_after_s = inf\n")],
                      ["smoothing.leave_after_s", "<= 60"]),
        "threads_1000": ([*run, "--threads", "1000"], ["model.threads", "<= 256"]),
        "threads_over_cpus": ([*run, "--threads", str(len(os.sched_getaffinity(0)) + 1)], ["model", "exceeds the", "CPUs"]),
        "model_path_empty": (["run", "--no-dashboard", "--frames", "1", "--model", ""], ["model.path", "length >= 1"]),
        "toml_5000_deep": ([*run, "--config", str(deep_toml)], ["deep.toml", "nested too deeply"]),
        "manifest_100k_deep": (["run", "--no-dashboard", "--frames", "1", "--model", str(deep)], ["m.json", "nested too deeply"]),
        "manifest_mean_string": (["run", "--no-dashboard", "--frames", "1", "--model", str(mean_str)],
                                 ["preprocess.mean='0.5'", "a finite number"]),
        "manifest_std_infinity": (["run", "--no-dashboard", "--frames", "1", "--model", str(std_inf)],
                                  ["non-finite number Infinity"]),
        "manifest_mean_edited": (["run", "--no-dashboard", "--frames", "1", "--model", str(mean_edit)],
                                 ["contract_sha256 mismatch", "re-export"]),
        "manifest_version_1": (["run", "--no-dashboard", "--frames", "1", "--model", str(old)],
                               ["schema version 1", "python -m streamcad.engines.upgrade_manifest m.onnx"]),
        "keys_name_300": (["keys", "--out", str(tmp / "k"), "--name", "n" * 300], ["invalid key name", "300 characters"]),
        "proxy_allow_without_secret": (["proxy", "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*",
                                        "--curve-allow", str(allow)], ["--curve-allow needs --curve-secret"]),
        "proxy_publishers_without_secret": (["proxy", "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*",
                                             "--curve-allow-publishers", str(allow)], ["--curve-allow-publishers needs --curve-secret"]),
        "config_allow_without_secret": ([*run, "--config", _toml(tmp, "allow", f'[publish]\ncurve_allowed_dir = "{allow}"\n')],
                                        ["publish:", "curve_allowed_dir is set but curve_secret_key is not"]),
        "world_readable_secret": ([*run, "--config", _toml(tmp, "open", f'[publish]\ncurve_secret_key = "{open_secret}"\n'
                                                                         f'curve_allowed_dir = "{allow}"\n')],
                                  ["open.key_secret", "readable by others (mode 0644)", "chmod 600"]),
        "proxy_world_readable_secret": (["proxy", "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*",
                                         "--curve-secret", str(open_secret)], ["readable by others"]),
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_input")
    procs = {}
    try:
        for name, (argv, want) in _cases(tmp).items():
            procs[name] = (subprocess.Popen([sys.executable, "-m", "streamcad.cli", *argv], cwd=tmp, env=ENV,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), want)
        out = {}
        for name, (p, want) in procs.items():
            try:
                _, err = p.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
                err = f"TIMEOUT\n{err}"
            out[name] = (p.returncode, err, want)
        return out
    finally:
        for p, _ in procs.values():
            if p.poll() is None:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


CASES = ["fps_inf", "fps_1e308", "hwm_inf", "seed_negative", "tau_inf", "leave_inf", "threads_1000",
         "threads_over_cpus", "model_path_empty", "toml_5000_deep", "manifest_100k_deep", "manifest_mean_string",
         "manifest_std_infinity", "manifest_mean_edited", "manifest_version_1", "keys_name_300",
         "proxy_allow_without_secret", "proxy_publishers_without_secret", "config_allow_without_secret",
         "world_readable_secret", "proxy_world_readable_secret"]


@pytest.mark.parametrize("case", CASES)
def test_one_line_naming_the_key(results, case):
    rc, err, want = results[case]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert rc == 1, (rc, err)
    assert len(lines) == 1, err
    (line,) = lines
    assert line.startswith(("streamcad run: error: ", "streamcad proxy: error: ", "streamcad keys: error: ")), line
    for w in want:
        assert w in line, f"{w!r} not in {line!r}"


def _loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc to see when a library loads")
@pytest.mark.parametrize("library", ["msgspec", "onnxruntime"])
def test_ctrl_c_while_starting_exits_130_without_traceback(tmp_path, library):
    """Ctrl-C while `run` starts: as the command's config code loads (msgspec) it was a
    KeyboardInterrupt traceback every time (4 of 4 before the fix), while ONNX Runtime loads
    sometimes the ImportError of a half-initialised extension (1 of 4)."""
    good = _model(tmp_path / "good")
    p = subprocess.Popen([sys.executable, "-m", "streamcad.cli", "run", "--no-dashboard", "--model", str(good),
                          "--source", "sweep:", "--endpoint", "tcp://127.0.0.1:*"],
                         cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 60
        while not _loaded(p.pid, library) and p.poll() is None and time.monotonic() < end:
            time.sleep(0.001)
        assert p.poll() is None, p.communicate()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert "Traceback" not in err and "Error" not in err, err
    assert p.returncode == 130, (p.returncode, err)
