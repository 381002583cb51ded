"""Bad input at the command line: each mistake gives ONE line on stderr naming the problem and a
non-zero exit, never a traceback. Every case is a real `python -m streamcad.cli` subprocess
(started together, to keep the suite fast); model files are real ONNX graphs with manifests."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from streamcad.manifest import contract_digest, manifest_path, write_manifest
from tests.helpers_onnx import make_bad_onnx, make_contract_onnx

REPO = Path(__file__).resolve().parents[1]


def _model(d: Path, name: str = "m.onnx") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = make_contract_onnx(d / name, size=32, saliency_hw=(4, 4))
    write_manifest(p, class_names=["normal", "benign", "malignant"], operating_threshold=0.5)
    return p


def _edit_manifest(model: Path, **changes) -> None:
    """Edit and re-seal (contract_sha256): a consistent manifest that is wrong about its model."""
    mp = manifest_path(model)
    d = json.loads(mp.read_text())
    d.update(changes)
    d["contract_sha256"] = contract_digest(d)
    mp.write_text(json.dumps(d))


# case -> (argv after `streamcad`, substrings the one line must contain)
def _cases(tmp: Path, busy_port: int) -> dict[str, tuple[list[str], list[str]]]:
    good = _model(tmp / "good")
    run = ["run", "--no-dashboard", "--frames", "1", "--threads", "1"]

    tampered = _model(tmp / "tampered")
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit flipped, same size
    tampered.write_bytes(bytes(data))

    truncated = _model(tmp / "truncated")
    truncated.write_bytes(truncated.read_bytes()[:-10])

    wrong_version = _model(tmp / "version")
    _edit_manifest(wrong_version, schema_version=99)

    wrong_input = _model(tmp / "contract")  # the manifest promises S=64, the graph takes 32
    _edit_manifest(wrong_input, input={"name": "input", "shape": ["N", 1, 64, 64], "dtype": "float32"})

    (tmp / "bare").mkdir()
    two_channels = make_bad_onnx(tmp / "bare" / "two.onnx", "two_channels", size=32)  # no manifest

    bad_key = tmp / "bad_key.toml"
    bad_key.write_text('version = 1\n[source]\nurl = "sweep:"\n')
    return {
        "missing_model": ([*run, "--model", str(tmp / "nope" / "m.onnx")], ["model file not found", "nope/m.onnx"]),
        "missing_video": ([*run, "--model", str(good), "--source", f"file:{tmp / 'absent.mp4'}"],
                          ["absent.mp4", "no such video file"]),
        "busy_port": ([*run, "--model", str(good), "--source", "sweep:", "--endpoint", f"tcp://127.0.0.1:{busy_port}"],
                      [f"127.0.0.1:{busy_port}", "address already in use"]),
        "busy_port_proxy": (["proxy", "--frontend", f"tcp://127.0.0.1:{busy_port}", "--backend", "tcp://127.0.0.1:*"],
                            [f"127.0.0.1:{busy_port}", "address already in use"]),
        "unknown_scheme": ([*run, "--model", str(good), "--source", "rtsp://cam/1"],
                           ["unknown scheme 'rtsp'", "valid schemes: file, device, url, gst, sweep"]),
        "bad_config_key": ([*run, "--model", str(good), "--config", str(bad_key)],
                           ["source.url: unknown key", "uri"]),
        "malformed_roi": ([*run, "--model", str(good), "--roi", "10,20,30"], ["--roi '10,20,30'", "four integers"]),
        "roi_outside_frame": ([*run, "--model", str(good), "--source", "sweep:", "--roi", "5000,5000,10,10"],
                              ["ROI override", "does not fit"]),
        "tampered_model": ([*run, "--model", str(tampered)], ["sha256 mismatch", "tampered"]),
        "truncated_model": ([*run, "--model", str(truncated)], ["size mismatch", "truncated"]),
        "wrong_manifest_version": ([*run, "--model", str(wrong_version)], ["unsupported manifest schema version 99"]),
        "wrong_input_contract": ([*run, "--model", str(wrong_input)], ["input contract mismatch"]),
        "bare_model_breaks_contract": ([*run, "--model", str(two_channels), "--allow-unverified"], ["channel"]),
        "bare_model_needs_flag": ([*run, "--model", str(two_channels)], ["missing manifest", "--allow-unverified"]),
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run every case at once; -> name -> (returncode, stderr, expected substrings)."""
    tmp = tmp_path_factory.mktemp("cli_errors")
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = {}
    try:
        for name, (argv, want) in _cases(tmp, port).items():
            procs[name] = (subprocess.Popen([sys.executable, "-m", "streamcad.cli", *argv], cwd=tmp, env=env,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), want)
        out = {}
        for name, (p, want) in procs.items():
            try:
                _, err = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
                err = f"TIMEOUT\n{err}"
            out[name] = (p.returncode, err, want)
        return out
    finally:
        holder.close()
        for p, _ in procs.values():
            if p.poll() is None:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


CASES = ["missing_model", "missing_video", "busy_port", "busy_port_proxy", "unknown_scheme", "bad_config_key",
         "malformed_roi", "roi_outside_frame", "tampered_model", "truncated_model", "wrong_manifest_version",
         "wrong_input_contract", "bare_model_breaks_contract", "bare_model_needs_flag"]


# a bare model is loaded only with --allow-unverified, and then always with this loud warning
EXPECTED_WARNING = {"bare_model_breaks_contract": "WITHOUT a manifest"}


@pytest.mark.parametrize("case", CASES)
def test_one_clear_line_and_nonzero_exit(results, case):
    rc, err, want = results[case]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if case in EXPECTED_WARNING:
        warned = [ln for ln in lines if " WARNING " in ln and EXPECTED_WARNING[case] in ln]
        assert len(warned) == 1, err
        lines = [ln for ln in lines if ln not in warned]
    assert "Traceback" not in err, err
    assert rc == 1, (rc, err)
    assert len(lines) == 1, err
    (line,) = lines
    assert line.startswith(("streamcad run: error: ", "streamcad proxy: error: ")), line
    for w in want:
        assert w in line, f"{w!r} not in {line!r}"
