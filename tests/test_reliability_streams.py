"""Several streams at once, as deployed: 4 `streamcad run` PROCESSES (one per probe, sweep
sources, publish.connect = true in a TOML config) -> one `streamcad proxy` PROCESS -> 2
subscribers in this test. Each subscriber must receive all 4 streams, each stream from one
publisher with consecutive seq from its first message to its final status (nothing lost)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamcad.client import Subscriber
from streamcad.manifest import write_manifest
from streamcad.messages import Score, Status
from tests.helpers_onnx import make_contract_onnx

REPO = Path(__file__).resolve().parents[1]
N_STREAMS = 4
FRAMES = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_four_pipeline_processes_through_proxy_process(tmp_path):
    model = make_contract_onnx(tmp_path / "m.onnx", size=32, saliency_hw=(4, 4))
    write_manifest(model, class_names=["normal", "benign", "malignant"], operating_threshold=0.5)
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "streamcad.cli"]
    proxy = subprocess.Popen([*cli, "proxy", "--frontend", front, "--backend", back], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs: list[subprocess.Popen] = []
    subs = [Subscriber(back, rcvhwm=100_000) for _ in range(2)]
    got: list[list] = [[], []]
    try:
        line = proxy.stdout.readline()  # printed once both sockets are bound
        assert "proxy:" in line, proxy.stderr.read() if proxy.poll() is not None else line
        for i in range(N_STREAMS):
            cfg = tmp_path / f"probe{i}.toml"
            cfg.write_text(
                f"version = 1\nframes = {FRAMES}\ndashboard = false\n"
                f"[source]\nuri = \"sweep:\"\nfps = 15.0\nseed = {i}\n"
                f"[model]\npath = \"{model}\"\nthreads = 1\n"
                f"[publish]\nendpoint = \"{front}\"\nconnect = true\nheartbeat_s = 0.5\n"
            )
            runs.append(subprocess.Popen([*cli, "run", "--config", str(cfg), "--stream", f"probe{i}"], env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        end = time.monotonic() + 90
        while time.monotonic() < end and any(p.poll() is None for p in runs):
            for k, sub in enumerate(subs):
                while (m := sub.recv(0.02)) is not None:
                    got[k].append(m)
        for k, sub in enumerate(subs):  # drain what is still in flight
            while (m := sub.recv(0.5)) is not None:
                got[k].append(m)
        errs = [p.communicate(timeout=10)[1] for p in runs]
        assert [p.returncode for p in runs] == [0] * N_STREAMS, errs
        assert all("Traceback" not in e for e in errs), errs
    finally:
        for s in subs:
            s.close()
        for p in [*runs, proxy]:
            if p.poll() is None:
                p.terminate()
        for p in [*runs, proxy]:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
    assert proxy.returncode is not None
    streams = {f"probe{i}" for i in range(N_STREAMS)}
    for k in range(2):
        assert {m.stream for m in got[k]} == streams, f"subscriber {k} saw {sorted({m.stream for m in got[k]})}"
        for s in sorted(streams):
            msgs = [m for m in got[k] if m.stream == s]
            assert len({m.publisher for m in msgs}) == 1, f"{s}: more than one publisher"
            seqs = [m.seq for m in msgs]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"sub {k} {s}: seq not consecutive"
            final = msgs[-1]
            assert isinstance(final, Status) and final.counters.frames_out == FRAMES  # the last word arrived
            scores = [m for m in msgs if isinstance(m, Score)]
            assert scores and final.last_seq == scores[-1].seq
            assert [m.frame_index for m in scores] == sorted(m.frame_index for m in scores)
        assert subs[k].gap_count == 0
    # both subscribers saw the same messages of each stream (where they overlap)
    for s in streams:
        a = {m.seq: m.t_publish_ns for m in got[0] if m.stream == s}
        b = {m.seq: m.t_publish_ns for m in got[1] if m.stream == s}
        common = set(a) & set(b)
        assert len(common) >= FRAMES // 2 and all(a[q] == b[q] for q in common)


def _score(pub, i: int) -> bool:
    return pub.publish_score(frame_index=i, t_capture_ns=time.monotonic_ns(), latency_ms={"infer": 1.0},
                             probs={"normal": 0.7, "benign": 0.2, "malignant": 0.1}, malignancy=0.1,
                             state="clear", flags=[], roi=[0, 0, 10, 10], model_sha256="0" * 64)


def _first_message(sub, pub, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pub.service(0.01)
        if sub.recv(0.01) is not None:
            return True
    return False


def _drain(sub, seconds=1.0) -> list:
    out = []
    while (m := sub.recv(seconds)) is not None:
        out.append(m)
    return out


@pytest.mark.slow
def test_one_stalled_subscriber_costs_only_itself_direct_and_through_the_proxy():
    """A UI that stops reading fills its own queue and loses its own messages; the healthy UI
    loses nothing and the publisher drops nothing, connected straight to the publisher (per-pipe
    drops on the bound XPUB) and through the proxy alike. (Before: XPUB_NODROP on the bound
    socket made every send fail for EVERYONE once one queue was full.)"""
    from streamcad.proxy import Proxy
    from streamcad.transport import Publisher

    n = 20_000
    results = {}  # a 5,000-message publisher queue (10 s at 500/s) absorbs scheduling hiccups
    for mode in ("direct", "proxy"):
        proxy = Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*").start() if mode == "proxy" else None
        if proxy is None:
            pub = Publisher("tcp://127.0.0.1:*", stream="slow", hwm_seconds=10.0, fps=500.0, heartbeat_s=60)
            where = pub.endpoint
        else:
            pub = Publisher(proxy.frontend, stream="slow", hwm_seconds=10.0, fps=500.0, heartbeat_s=60,
                            connect=True)
            where = proxy.backend
        healthy = Subscriber(where, rcvhwm=1_000_000, heartbeat_s=60)
        stalled = Subscriber(where, rcvhwm=10, heartbeat_s=60)
        try:
            assert _first_message(healthy, pub) and _first_message(stalled, pub)
            got = []
            for i in range(n):  # the healthy UI keeps reading; the stalled one never does
                _score(pub, i)
                if i % 50 == 0:
                    while (m := healthy.recv(0)) is not None:
                        got.append(m)
            got += _drain(healthy)
            stalled_got = _drain(stalled, 0.5)
            stalled.close()  # the stalled UI goes away; one more message shows the healthy UI its gap
            time.sleep(0.3)
            end = time.monotonic() + 5
            while not _score(pub, n) and time.monotonic() < end:
                time.sleep(0.05)
            got += _drain(healthy)
            results[mode] = {"published": n, "publisher_dropped": pub.dropped, "healthy_gaps": healthy.gap_count,
                             "healthy_received_scores": sum(isinstance(m, Score) for m in got) - 1,
                             "stalled_received": len(stalled_got)}
        finally:
            healthy.close()
            stalled.close()
            pub.close()
            if proxy is not None:
                proxy.stop()
    print("SLOW_SUBSCRIBER", results)
    for mode, r in results.items():  # the healthy UI gets every message; only the stalled one loses
        assert r["publisher_dropped"] == 0 and r["healthy_gaps"] == 0, mode
        assert r["healthy_received_scores"] == n, mode
        assert r["stalled_received"] < n, mode


@pytest.mark.slow
def test_proxy_killed_and_restarted_stream_resumes(tmp_path):
    """`streamcad proxy` dies (SIGKILL) under a running `streamcad run`, and comes back on the
    same ports: the UI sees the stream go stale, then resume from the SAME publisher (the pipeline
    never restarted). The pipeline's connecting XPUB keeps its queue across the reconnect, so an
    outage shorter than publish.hwm_seconds (4 s) may lose nothing; whatever is lost shows as a seq
    gap at the UI (the publisher counts only what it could not queue): never silent."""
    model = make_contract_onnx(tmp_path / "m.onnx", size=32, saliency_hw=(4, 4))
    write_manifest(model, class_names=["normal", "benign", "malignant"], operating_threshold=0.5)
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "streamcad.cli"]

    def start_proxy():
        p = subprocess.Popen([*cli, "proxy", "--frontend", front, "--backend", back], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert "proxy:" in p.stdout.readline(), p.stderr.read() if p.poll() is not None else "no banner"
        return p

    cfg = tmp_path / "probe.toml"
    cfg.write_text(f"version = 1\ndashboard = false\n[source]\nuri = \"sweep:\"\nfps = 15.0\n"
                   f"[model]\npath = \"{model}\"\nthreads = 1\n"
                   f"[publish]\nendpoint = \"{front}\"\nconnect = true\nheartbeat_s = 0.5\nstream = \"probe0\"\n")
    proxies = [start_proxy()]
    run = subprocess.Popen([*cli, "run", "--config", str(cfg)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sub = Subscriber(back, rcvhwm=100_000, heartbeat_s=0.5)
    got: list = []

    def pump(until, pred=lambda: False):
        while time.monotonic() < until and not pred():
            if (m := sub.recv(0.05)) is not None:
                got.append(m)

    try:
        pump(time.monotonic() + 30, lambda: sum(isinstance(m, Score) for m in got) >= 15)
        assert sum(isinstance(m, Score) for m in got) >= 15, "no scores before the proxy was killed"
        n_before = len(got)
        proxies[0].kill()
        proxies[0].wait(5)
        pump(time.monotonic() + 2.0)
        assert sub.is_stale("probe0")  # 3 heartbeats without a message
        assert len(got) - n_before <= 5  # only what was in flight
        t_restart = time.monotonic()
        proxies.append(start_proxy())
        pump(t_restart + 20, lambda: sum(isinstance(m, Score) for m in got[n_before:]) >= 15)
        resumed = [m for m in got[n_before:] if isinstance(m, Score)]
        assert len(resumed) >= 15, "scores did not resume after the proxy came back"
        assert not sub.is_stale("probe0")
        t_resumed = time.monotonic() - t_restart
        run.terminate()
        assert run.wait(10) == 0, run.stderr.read()
        pump(time.monotonic() + 1.0)  # the final status
        print(f"PROXY_RESTART resumed {t_resumed:.2f} s after restart (incl. proxy start), "
              f"gap {sub.gap_count} messages, publisher dropped {got[-1].counters.dropped_publish}")
    finally:
        sub.close()
        for p in [run, *proxies]:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    assert len({m.publisher for m in got}) == 1 and sub.publisher_changes == 0  # never restarted
    final = got[-1]
    assert isinstance(final, Status)  # the final status, sent after SIGTERM
    # Every loss is visible at the UI as a seq gap. The publisher counts what it could not queue
    # (dropped_publish); messages already inside the killed proxy, or published while no
    # subscription existed (the proxy was gone), are lost without the publisher knowing: they
    # show up only as the gap, never as a silent splice.
    seqs = sorted({m.seq for m in got})
    missing = (seqs[-1] - seqs[0] + 1) - len(seqs)
    assert sub.gap_count == missing
    assert final.counters.dropped_publish <= missing
    seqs = [m.seq for m in got]
    assert all(b > a for a, b in zip(seqs[:-1], seqs[1:], strict=True))
