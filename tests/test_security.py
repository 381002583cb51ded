"""CURVE: encryption + allow-list of client keys, on real sockets; `streamcad keys`."""

from __future__ import annotations

import logging
import stat
import time

import pytest
import zmq.auth

from streamcad.cli import main
from streamcad.client import Subscriber
from streamcad.errors import ConfigError
from streamcad.messages import Status
from streamcad.proxy import Proxy
from streamcad.security import ClientCurve, ServerCurve, generate_keypair
from streamcad.transport import Publisher


@pytest.fixture
def keys(tmp_path):
    server_dir, allow_dir, ui_dir = tmp_path / "server", tmp_path / "allowed", tmp_path / "ui"
    allow_dir.mkdir()
    _, server_secret = generate_keypair(server_dir, "server")
    ok_pub, ok_secret = generate_keypair(ui_dir, "ui_ok")
    _, bad_secret = generate_keypair(ui_dir, "ui_bad")
    (allow_dir / "ui_ok.key").write_bytes(ok_pub.read_bytes())
    return dict(server=ServerCurve(server_secret, allow_dir), server_public=server_dir / "server.key",
                ok=ok_secret, bad=bad_secret)


def _pump(pub: Publisher, sub: Subscriber, seconds: float):
    """Publish statuses and collect what the subscriber gets for `seconds`."""
    got = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pub.publish_status()
        m = sub.recv(0.02)
        if m is not None:
            got.append(m)
            if len(got) >= 3:
                break
    return got


def test_allowed_key_receives(keys):
    with Publisher("tcp://127.0.0.1:*", stream="sec", curve=keys["server"], heartbeat_s=60) as pub, \
            Subscriber(pub.endpoint, curve=ClientCurve(keys["ok"], keys["server_public"])) as sub:
        got = _pump(pub, sub, 3.0)
    assert len(got) >= 3 and all(isinstance(m, Status) and m.stream == "sec" for m in got)


def test_unknown_key_receives_nothing_and_is_logged(keys, caplog):
    caplog.set_level(logging.INFO)
    bad_public, _ = zmq.auth.load_certificate(keys["bad"])
    with Publisher("tcp://127.0.0.1:*", stream="sec", curve=keys["server"], heartbeat_s=60) as pub, \
            Subscriber(pub.endpoint, curve=ClientCurve(keys["bad"], keys["server_public"])) as sub:
        assert _pump(pub, sub, 1.0) == []
    denials = [r for r in caplog.records if r.levelno == logging.WARNING and "DENIED" in r.getMessage()]
    assert any(bad_public.decode() in r.getMessage() for r in denials), [r.getMessage() for r in caplog.records]


def test_plain_client_receives_nothing_and_is_logged(keys, caplog):
    caplog.set_level(logging.INFO)
    with Publisher("tcp://127.0.0.1:*", stream="sec", curve=keys["server"], heartbeat_s=60) as pub, \
            Subscriber(pub.endpoint) as sub:
        assert _pump(pub, sub, 1.0) == []
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("DENIED" in m and "handshake failed" in m for m in msgs), msgs


def test_proxy_backend_with_curve(keys):
    with Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", curve=keys["server"]) as proxy, \
            Publisher(proxy.frontend, stream="viaproxy", connect=True, heartbeat_s=60) as pub, \
            Subscriber(proxy.backend, curve=ClientCurve(keys["ok"], keys["server_public"])) as ok, \
            Subscriber(proxy.backend, curve=ClientCurve(keys["bad"], keys["server_public"])) as bad:
        got_ok = _pump(pub, ok, 3.0)
        assert len(got_ok) >= 3
        assert _pump(pub, bad, 0.5) == []


def test_keys_cli_and_bad_key_files(tmp_path, capsys):
    assert main(["keys", "--out", str(tmp_path), "--name", "ui1"]) == 0
    out = capsys.readouterr().out
    public, secret = tmp_path / "ui1.key", tmp_path / "ui1.key_secret"
    key, sec = zmq.auth.load_certificate(secret)
    assert key.decode() in out and sec is not None and len(key) == 40
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert zmq.auth.load_certificate(public) == (key, None)
    assert main(["keys", "--out", str(tmp_path), "--name", "ui1"]) == 1  # never overwrite
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no secret key"):
        ServerCurve(public, None)
    with pytest.raises(ConfigError, match="not found"):
        ClientCurve(secret, tmp_path / "missing.key")
    with pytest.raises(ConfigError, match="allow-list directory not found"):
        ServerCurve(secret, tmp_path / "nope")
