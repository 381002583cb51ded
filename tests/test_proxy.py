"""XSUB/XPUB proxy: 4 scanners (publishers) to 2 UIs (subscribers), real sockets."""

from __future__ import annotations

import time

import pytest

from streamcad.client import Subscriber
from streamcad.errors import TransportError
from streamcad.messages import Score, Status
from streamcad.proxy import Proxy
from streamcad.transport import Publisher

N_SCORES = 60


def _score(pub: Publisher, i: int) -> bool:
    return pub.publish_score(frame_index=i, t_capture_ns=time.monotonic_ns(), latency_ms={"infer": 1.0},
                             probs={"normal": 0.7, "benign": 0.2, "malignant": 0.1}, malignancy=0.1,
                             state="clear", flags=[], roi=[0, 0, 10, 10], model_sha256="0" * 64)


def test_four_streams_two_subscribers_through_proxy():
    streams = [f"probe{i}" for i in range(4)]
    with Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*") as proxy:
        pubs = [Publisher(proxy.frontend, stream=s, connect=True, heartbeat_s=0.05, hwm_seconds=10) for s in streams]
        subs = [Subscriber(proxy.backend, rcvhwm=10_000) for _ in range(2)]
        try:
            # warm-up: heartbeats flow until each UI has heard from every scanner
            seen = [set(), set()]
            got: list[list] = [[], []]
            end = time.monotonic() + 5
            while any(len(s) < 4 for s in seen) and time.monotonic() < end:
                for p in pubs:
                    p.service(0.002)
                for k, sub in enumerate(subs):
                    while (m := sub.recv(0.001)) is not None:
                        seen[k].add(m.stream)
                        got[k].append(m)
            assert all(s == set(streams) for s in seen), f"warm-up incomplete: {seen}"
            for i in range(N_SCORES):
                for p in pubs:
                    assert _score(p, i), "publisher dropped through the proxy"
            final = {p.stream: p.seq - 1 for p in pubs}
            for k, sub in enumerate(subs):
                end = time.monotonic() + 5
                while time.monotonic() < end:
                    m = sub.recv(0.1)
                    if m is None:
                        break
                    got[k].append(m)
        finally:
            for s in subs:
                s.close()
            for p in pubs:
                p.close()
    for k in range(2):
        for p in pubs:
            seqs = [m.seq for m in got[k] if m.stream == p.stream]
            assert all(m.publisher == p.publisher_id for m in got[k] if m.stream == p.stream)
            assert seqs == list(range(seqs[0], final[p.stream] + 1)), f"sub {k} {p.stream}: not consecutive"
            scores = [m for m in got[k] if m.stream == p.stream and isinstance(m, Score)]
            assert [m.frame_index for m in scores] == list(range(N_SCORES))
        assert subs[k].gap_count == 0
        assert any(isinstance(m, Status) for m in got[k])


def test_proxy_bind_errors_and_clean_stop():
    with pytest.raises(TransportError, match="allow_remote"):
        Proxy("tcp://0.0.0.0:*", "tcp://127.0.0.1:*")
    p = Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*").start()
    try:
        with pytest.raises(TransportError, match="in use"):
            Proxy(p.frontend, "tcp://127.0.0.1:*")
        assert p.running
    finally:
        p.stop()
    assert not p.running
    # both ports are free again
    Proxy(p.frontend, p.backend).stop()
