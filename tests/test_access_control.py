"""Access control on real sockets (127.0.0.1): who may publish into a proxy, who may read, what a
removed key still gets, and the key files a user gets wrong. Every wait has a timeout; nothing
here asserts a duration (the cut-off times are measured by benchmarks/revocation.py)."""

from __future__ import annotations

import logging
import time

import pytest
import zmq
import zmq.auth

from streamcad.client import Subscriber
from streamcad.errors import ConfigError, TransportError
from streamcad.messages import Status
from streamcad.proxy import MAX_MESSAGE_BYTES, Proxy
from streamcad.security import ClientCurve, ServerCurve, generate_keypair
from streamcad.transport import Publisher


@pytest.fixture
def keys(tmp_path):
    """The proxy/server key pair, two allow-lists (UIs, publishers) and key pairs on both sides."""
    server_dir, ui_allow, pub_allow, own = (tmp_path / d for d in ("server", "ui_allow", "pub_allow", "own"))
    ui_allow.mkdir()
    pub_allow.mkdir()
    _, server_secret = generate_keypair(server_dir, "server")
    out = {"server_secret": server_secret, "server_public": server_dir / "server.key",
           "ui_allow": ui_allow, "pub_allow": pub_allow}
    for name, allow in (("ui1", ui_allow), ("ui2", ui_allow), ("pub1", pub_allow), ("pub2", pub_allow), ("intruder", None)):
        public, secret = generate_keypair(own, name)
        out[name] = secret
        if allow is not None:
            (allow / f"{name}.key").write_bytes(public.read_bytes())
    return out


def _client(keys, name: str) -> ClientCurve:
    return ClientCurve(keys[name], keys["server_public"])


def _pump(pubs, subs, until, timeout: float = 10.0, period: float = 0.01) -> list[list]:
    """Publish a status on every publisher each `period`, collect per subscriber until until(got) or timeout."""
    got: list[list] = [[] for _ in subs]
    end = time.monotonic() + timeout
    while time.monotonic() < end and not until(got):
        for p in pubs:
            p.publish_status()
        for k, s in enumerate(subs):
            while (m := s.recv(0.001)) is not None:
                got[k].append((time.monotonic(), m))
        time.sleep(period)
    return got


def _streams(got) -> set[str]:
    return {m.stream for _, m in got}


# --------------------------------------------------------------------------- proxy frontend
def test_proxy_frontend_admits_only_allow_listed_publishers(keys, caplog):
    """Forged scores from any local process reached every UI through the proxy (issue 12)."""
    caplog.set_level(logging.INFO)
    with Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*",
               publisher_curve=ServerCurve(keys["server_secret"], keys["pub_allow"])) as proxy:
        pubs = [
            Publisher(proxy.frontend, stream="allowed", connect=True, curve=_client(keys, "pub1"), heartbeat_s=60),
            Publisher(proxy.frontend, stream="forged", connect=True, heartbeat_s=60),  # no CURVE at all
            Publisher(proxy.frontend, stream="unlisted", connect=True, curve=_client(keys, "intruder"), heartbeat_s=60),
        ]
        try:
            with Subscriber(proxy.backend) as ui:
                got = _pump(pubs, [ui], lambda g: sum(m.stream == "allowed" for _, m in g[0]) >= 30)
        finally:
            for p in pubs:
                p.close()
    assert sum(m.stream == "allowed" for _, m in got[0]) >= 30
    assert _streams(got[0]) == {"allowed"}, _streams(got[0])
    intruder, _ = zmq.auth.load_certificate(keys["intruder"])
    denials = [r.getMessage() for r in caplog.records if "DENIED" in r.getMessage()]
    assert any("publisher DENIED" in d and intruder.decode() in d for d in denials), denials


def test_proxy_without_publisher_auth_says_so(keys, caplog):
    caplog.set_level(logging.WARNING)
    Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*").stop()
    assert any("does NOT authenticate publishers" in r.getMessage() for r in caplog.records)
    with pytest.raises(TransportError, match="needs an allow-list"):  # CURVE for anyone = no authentication
        Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", publisher_curve=ServerCurve(keys["server_secret"], None))


def test_proxy_refuses_oversized_messages(keys):
    """2 MiB frames through the proxy cut UIs to a quarter of their scores (issue 12)."""
    big = b"status/probe9 " + b"x" * (2 << 20)
    ctx = zmq.Context.instance()
    with Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*") as proxy, \
            Publisher(proxy.frontend, stream="probe0", connect=True, heartbeat_s=60) as good:
        rogue = ctx.socket(zmq.PUB)
        rogue.setsockopt(zmq.LINGER, 0)
        rogue.connect(proxy.frontend)
        ui = ctx.socket(zmq.SUB)  # raw: no subscriber-side size limit to hide what the proxy lets through
        ui.setsockopt(zmq.LINGER, 0)
        ui.setsockopt(zmq.SUBSCRIBE, b"")
        ui.connect(proxy.backend)
        sizes = []
        try:
            end = time.monotonic() + 10
            while time.monotonic() < end and sum(s < MAX_MESSAGE_BYTES for s in sizes) < 40:
                good.publish_status()
                try:
                    rogue.send(big, zmq.NOBLOCK)
                except zmq.Again:
                    pass
                while ui.poll(5):
                    sizes.append(len(ui.recv()))
        finally:
            rogue.close()
            ui.close()
    assert sum(s < MAX_MESSAGE_BYTES for s in sizes) >= 40  # the honest publisher kept getting through
    assert max(sizes) < MAX_MESSAGE_BYTES, f"a {max(sizes)}-byte frame passed the proxy"


# --------------------------------------------------------------------------- connect mode
def test_connect_mode_with_curve_is_encrypted_to_whoever_binds_first(keys, caplog):
    """With the proxy down, a pipeline in connect mode streamed plaintext to whoever bound the port."""
    ctx = zmq.Context.instance()
    thief = ctx.socket(zmq.XSUB)
    thief.setsockopt(zmq.LINGER, 0)
    thief.bind("tcp://127.0.0.1:*")
    endpoint = thief.getsockopt(zmq.LAST_ENDPOINT).decode()
    thief.send(b"\x01")  # subscribe to everything

    def stolen(pub: Publisher, seconds: float) -> int:
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            pub.publish_status()
            while thief.poll(10):
                thief.recv()
                n += 1
            if n and seconds > 5:
                break
        return n

    try:
        caplog.set_level(logging.WARNING)
        with Publisher(endpoint, stream="plain", connect=True, heartbeat_s=60) as pub:
            assert stolen(pub, 10.0) > 0  # the control: plaintext is readable by the thief ...
        assert any("PLAINTEXT" in r.getMessage() for r in caplog.records)  # ... and said so at start
        with Publisher(endpoint, stream="sealed", connect=True, heartbeat_s=60, curve=_client(keys, "pub1")) as pub:
            assert stolen(pub, 1.5) == 0
    finally:
        thief.close()
    with pytest.raises(TransportError, match="ClientCurve"):
        Publisher("tcp://127.0.0.1:1", connect=True, curve=ServerCurve(keys["server_secret"], keys["ui_allow"]))


# --------------------------------------------------------------------------- revocation
def _silent_after(got_k, t: float) -> bool:
    return not any(ts > t for ts, _ in got_k)


def test_removed_key_is_cut_from_a_direct_publisher(keys):
    """A CURVE key removed from the allow-list kept receiving (467 messages in 15 s, issue 12)."""
    curve = ServerCurve(keys["server_secret"], keys["ui_allow"])
    with Publisher("tcp://127.0.0.1:*", stream="probe0", curve=curve, heartbeat_s=60) as pub, \
            Subscriber(pub.endpoint, curve=_client(keys, "ui1")) as ui1, \
            Subscriber(pub.endpoint, curve=_client(keys, "ui2")) as ui2:
        got = _pump([pub], [ui1, ui2], lambda g: all(len(x) >= 5 for x in g))
        assert all(len(x) >= 5 for x in got)
        (keys["ui_allow"] / "ui1.key").unlink()
        t_removed = time.monotonic()
        state = {}

        def cut_and_healthy_back(g):
            # ui1 silent for 1 s while ui2 received after that second began: cut, and ui2 reconnected
            if not g[0] or not g[1]:
                return False
            last1 = g[0][-1][0]
            return time.monotonic() - last1 > 1.0 and g[1][-1][0] > last1 + 0.5 and state.setdefault("last1", last1)

        got = _pump([pub], [ui1, ui2], cut_and_healthy_back)
        assert "last1" in state, f"ui1 still receiving: {len(got[0])} messages after its key was removed"
        assert pub._revocation.cuts >= 1
        # and it stays out (its reconnects are refused), while ui2 keeps receiving
        t = time.monotonic()
        got = _pump([pub], [ui1, ui2], lambda g: len(g[1]) >= 20)
        assert _silent_after(got[0], t) and len(got[1]) >= 20
        assert state["last1"] >= t_removed - 0.1


def test_removed_keys_are_cut_on_both_sides_of_the_proxy(keys):
    with Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*",
               curve=ServerCurve(keys["server_secret"], keys["ui_allow"]),
               publisher_curve=ServerCurve(keys["server_secret"], keys["pub_allow"]),
               revocation_check_s=0.2) as proxy:
        pubs = [Publisher(proxy.frontend, stream=s, connect=True, curve=_client(keys, s), heartbeat_s=60)
                for s in ("pub1", "pub2")]
        try:
            with Subscriber(proxy.backend, curve=_client(keys, "ui1")) as ui1, \
                    Subscriber(proxy.backend, curve=_client(keys, "ui2")) as ui2:
                both = {"pub1", "pub2"}
                got = _pump(pubs, [ui1, ui2], lambda g: all(_streams(x) == both for x in g))
                assert all(_streams(x) == both for x in got), [_streams(x) for x in got]

                (keys["ui_allow"] / "ui1.key").unlink()  # a UI loses access
                (keys["pub_allow"] / "pub1.key").unlink()  # a publisher loses access
                t0 = time.monotonic()

                def settled(g):
                    # after the cut: ui2 gets pub2 again, and for 1 s neither ui1 nor pub1 was seen
                    if time.monotonic() - t0 < 1.5:
                        return False
                    recent = time.monotonic() - 1.0
                    late1 = [m for ts, m in g[0] if ts > recent]
                    late2 = {m.stream for ts, m in g[1] if ts > recent}
                    return not late1 and late2 == {"pub2"}

                got = _pump(pubs, [ui1, ui2], settled)
                recent = time.monotonic() - 1.0
                assert not [m for ts, m in got[0] if ts > recent], "ui1 still receiving"
                assert {m.stream for ts, m in got[1] if ts > recent} == {"pub2"}, "pub1 still publishing or pub2 lost"
                assert proxy.cuts >= 2
        finally:
            for p in pubs:
                p.close()


# --------------------------------------------------------------------------- key files
def test_one_malformed_key_does_not_lock_everyone_out(keys, caplog):
    caplog.set_level(logging.WARNING)
    (keys["ui_allow"] / "broken.key").write_text("this is not a certificate\n")
    (keys["ui_allow"] / "empty.key").write_bytes(b"")
    curve = ServerCurve(keys["server_secret"], keys["ui_allow"])
    with Publisher("tcp://127.0.0.1:*", stream="probe0", curve=curve, heartbeat_s=60) as pub, \
            Subscriber(pub.endpoint, curve=_client(keys, "ui1")) as ui1, \
            Subscriber(pub.endpoint, curve=_client(keys, "ui2")) as ui2:
        got = _pump([pub], [ui1, ui2], lambda g: all(len(x) >= 3 for x in g))
    assert all(len(x) >= 3 and all(isinstance(m, Status) for _, m in x) for x in got)
    warned = [r.getMessage() for r in caplog.records if "malformed key file" in r.getMessage()]
    assert sum("broken.key" in w for w in warned) == 1, warned  # once, not per handshake


def test_secret_key_readable_by_others_is_refused(keys):
    keys["server_secret"].chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others \(mode 0644\).*chmod 600"):
        ServerCurve(keys["server_secret"], keys["ui_allow"])
    keys["ui1"].chmod(0o640)
    with pytest.raises(ConfigError, match="readable by others"):
        ClientCurve(keys["ui1"], keys["server_public"])


@pytest.mark.parametrize("name", ["x" * 300, "", ".hidden", "a/b", "-rf", "ui 1"])
def test_bad_key_names_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="invalid key name"):
        generate_keypair(tmp_path, name)


# --------------------------------------------------------------------------- the real CLI, end to end
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_pipeline_publishes_into_an_authenticating_proxy(keys, tmp_path):
    """`streamcad run` (connect mode, CURVE client) -> `streamcad proxy --curve-allow-publishers`
    -> a UI: scores arrive; the same pipeline with a key the proxy does not list gets nothing through."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from streamcad.manifest import write_manifest
    from streamcad.messages import Score
    from tests.helpers_onnx import make_contract_onnx

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    model = make_contract_onnx(tmp_path / "m.onnx", size=32, saliency_hw=(4, 4))
    write_manifest(model, operating_threshold=0.5)
    front, back = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"

    def config(name: str, secret) -> Path:
        p = tmp_path / f"{name}.toml"
        p.write_text(f'version = 1\n[publish]\nendpoint = "{front}"\nconnect = true\nstream = "{name}"\n'
                     f'curve_secret_key = "{secret}"\ncurve_server_key = "{keys["server_public"]}"\n')
        return p

    proxy = subprocess.Popen([sys.executable, "-m", "streamcad.cli", "proxy", "--frontend", front, "--backend", back,
                              "--curve-secret", str(keys["server_secret"]), "--curve-allow-publishers", str(keys["pub_allow"])],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = []
    try:
        assert "proxy:" in proxy.stdout.readline()  # bound
        # --curve-secret encrypts the backend too (any CURVE client there: no --curve-allow)
        with Subscriber(back, rcvhwm=100_000, curve=_client(keys, "ui1")) as ui:
            for name, secret in (("allowed", keys["pub1"]), ("unlisted", keys["intruder"])):
                runs.append(subprocess.Popen(
                    [sys.executable, "-m", "streamcad.cli", "run", "--no-dashboard", "--frames", "40", "--model", str(model),
                     "--source", "sweep:", "--config", str(config(name, secret))],
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            scores: dict[str, int] = {}
            end = time.monotonic() + 90
            while time.monotonic() < end and any(r.poll() is None for r in runs):
                m = ui.recv(0.2)
                if isinstance(m, Score):
                    scores[m.stream] = scores.get(m.stream, 0) + 1
            while (m := ui.recv(0.5)) is not None:  # what is still queued
                if isinstance(m, Score):
                    scores[m.stream] = scores.get(m.stream, 0) + 1
        errs = [r.communicate(timeout=30)[1] for r in runs]
    finally:
        for p in (proxy, *runs):
            if p.poll() is None:
                p.kill()
        proxy.communicate()
    assert [r.returncode for r in runs] == [0, 0], errs
    assert scores.get("allowed", 0) >= 30, (scores, errs[0])
    assert "unlisted" not in scores, scores
    assert not any("PLAINTEXT" in e for e in errs)


def test_an_open_ui_side_does_not_open_the_publisher_side(keys):
    """CURVE without a UI allow-list (any key pair may read) must not let any key pair publish:
    pyzmq's CURVE_ALLOW_ANY is one flag for every ZAP domain of the context."""
    with Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", curve=ServerCurve(keys["server_secret"], None),
               publisher_curve=ServerCurve(keys["server_secret"], keys["pub_allow"])) as proxy:
        pubs = [Publisher(proxy.frontend, stream="allowed", connect=True, curve=_client(keys, "pub1"), heartbeat_s=60),
                Publisher(proxy.frontend, stream="unlisted", connect=True, curve=_client(keys, "intruder"), heartbeat_s=60)]
        try:
            with Subscriber(proxy.backend, curve=_client(keys, "intruder")) as ui:  # any key may read here
                got = _pump(pubs, [ui], lambda g: sum(m.stream == "allowed" for _, m in g[0]) >= 30)
        finally:
            for p in pubs:
                p.close()
    assert sum(m.stream == "allowed" for _, m in got[0]) >= 30
    assert _streams(got[0]) == {"allowed"}, _streams(got[0])
