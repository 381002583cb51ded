"""Subscriber: gaps, publisher restarts, staleness, filters, malformed input; `streamcad listen`.

Some tests drive the subscriber with a raw zmq PUB socket that speaks the wire format by hand
(a second, independent implementation of the protocol), so seq patterns are exact.
"""

from __future__ import annotations

import json
import threading
import time

import msgspec
import pytest
import zmq

from streamcad.cli import main
from streamcad.client import Gap, Subscriber
from streamcad.errors import MessageError
from streamcad.messages import Score, Status
from streamcad.transport import Publisher


def score_dict(stream: str, publisher: str, seq: int) -> dict:
    return dict(type="score", schema=1, stream=stream, publisher=publisher, seq=seq, frame_index=seq,
                t_capture_ns=1, t_publish_ns=2, latency_ms={"total": 1.0},
                probs={"normal": 0.6, "benign": 0.3, "malignant": 0.1}, malignancy=0.1, state="clear",
                flags=[], roi=None, model_sha256="ef" * 32)


class RawPub:
    """A plain PUB socket on a free port; waits until the subscriber is connected."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def score(self, stream: str, publisher: str, seq: int) -> None:
        self.send(f"score/{stream} ".encode() + json.dumps(score_dict(stream, publisher, seq)).encode())

    def sync(self, sub: Subscriber, stream: str = "sync") -> None:
        """Send until the subscriber gets one message (slow-joiner), then drain."""
        end = time.monotonic() + 3
        while time.monotonic() < end:
            self.score(stream, "sync", 0)
            if sub.recv(0.05) is not None:
                while sub.recv(0.05) is not None:
                    pass
                return
        raise AssertionError("subscriber never connected")

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@pytest.fixture
def raw():
    p = RawPub()
    yield p
    p.close()


def recv_all(sub: Subscriber, timeout: float = 0.3) -> list:
    out = []
    while (m := sub.recv(timeout)) is not None:
        out.append(m)
    return out


def test_gaps_restarts_and_regressions(raw):
    with Subscriber(raw.endpoint, streams=["a", "sync"]) as sub:
        raw.sync(sub)
        for seq in [5, 6, 7, 10, 11, 15]:  # joining at 5 is not a gap
            raw.score("a", "pubA", seq)
        for seq in [0, 1, 2, 4]:  # publisher restarted: new id, seq from 0, no gap at the switch
            raw.score("a", "pubB", seq)
        got = recv_all(sub)
    assert [m.seq for m in got] == [5, 6, 7, 10, 11, 15, 0, 1, 2, 4]
    assert list(sub.gap_events) == [Gap("a", "pubA", 8, 10), Gap("a", "pubA", 12, 15), Gap("a", "pubB", 3, 4)]
    assert sub.gaps == {("a", "pubA"): 5, ("a", "pubB"): 1}
    assert sub.gap_count == 6 and sub.publisher_changes == 1 and sub.publisher_of("a") == "pubB"


def test_stream_filter_is_exact_and_kinds_filter(raw):
    with Subscriber(raw.endpoint, streams=["a", "sync"], kinds=("score",)) as sub:
        raw.sync(sub)
        raw.score("ab", "p", 0)  # prefix of "a" plus more: must not match
        raw.send(b"status/a " + msgspec.json.encode(
            dict(type="status", schema=1, stream="a", publisher="p", seq=1, t_publish_ns=3)))
        raw.score("a", "p", 2)
        got = recv_all(sub)
    assert [(type(m).__name__, m.stream) for m in got] == [("Score", "a")]


def test_malformed_strict_raises_lenient_skips(raw):
    garbage = [b"score/a {\"type\":\"score\"", b"score/a " + b"\x00" * 10,
               b"score/a " + json.dumps(dict(score_dict("a", "p", 1), schema=9)).encode()]
    with Subscriber(raw.endpoint, streams=["a", "sync"]) as sub:
        raw.sync(sub)
        for g in garbage:
            raw.send(g)
        errors = []
        for _ in garbage:
            with pytest.raises(MessageError) as ei:
                sub.recv(1.0)
            errors.append(str(ei.value))
        assert "truncated" in errors[0] and "0x00" in errors[1] and "schema version 9" in errors[2]
    with Subscriber(raw.endpoint, streams=["a", "sync"], strict=False) as sub:
        raw.sync(sub)
        for g in garbage:
            raw.send(g)
        raw.score("a", "p", 3)
        first = next(iter(sub))
        assert isinstance(first, Score) and first.seq == 3 and sub.rejected == 3


def test_oversized_frames_are_never_delivered(raw):
    with Subscriber(raw.endpoint, streams=["a", "sync"], max_message_bytes=4096, heartbeat_s=0.1) as sub:
        raw.sync(sub)
        big = score_dict("a", "p", 1)
        big["model_sha256"] = "x" * 8000
        raw.send(b"score/a " + json.dumps(big).encode())
        raw.score("a", "p", 2)  # libzmq cut the link (MAXMSGSIZE): this one is lost too
        assert sub.recv(0.2) is None
        assert sub.redials == 0
        raw.sync(sub)  # the subscriber re-dials after 3 quiet heartbeats; traffic resumes
        assert sub.redials >= 1
        raw.score("a", "p", 3)
        m = sub.recv(2.0)
        assert isinstance(m, Score) and m.seq == 3


def test_publisher_restart_marks_stale_then_recovers_without_false_gap():
    hb = 0.2
    pub = Publisher("tcp://127.0.0.1:*", stream="p0", heartbeat_s=hb)
    endpoint = pub.endpoint
    with Subscriber(endpoint, heartbeat_s=hb) as sub:
        assert not sub.is_stale("p0")  # grace period after opening
        end = time.monotonic() + 3
        n = 0
        while n < 3 and time.monotonic() < end:
            pub.service(0.02)
            if sub.recv(0.02) is not None:
                n += 1
        first_id = pub.publisher_id
        assert sub.publisher_of("p0") == first_id and not sub.is_stale("p0")
        pub.close()  # killed
        t_dead = time.monotonic()
        while not sub.is_stale("p0") and time.monotonic() - t_dead < 3:
            assert sub.recv(0.02) is None
        assert sub.is_stale("p0")
        assert time.monotonic() - t_dead <= 3 * hb + 0.25  # within 3 heartbeat intervals (+ poll slack)
        pub = Publisher(endpoint, stream="p0", heartbeat_s=hb)  # restarted, new id
        assert pub.publisher_id != first_id
        try:
            end = time.monotonic() + 5
            got = None
            while time.monotonic() < end:
                pub.service(0.02)
                m = sub.recv(0.02)
                if m is not None and m.publisher == pub.publisher_id:
                    got = m
                    break
            assert got is not None, "did not recover after the restart"
            for i in range(5):
                pub.publish_score(frame_index=i, t_capture_ns=time.monotonic_ns(), latency_ms={}, probs=None,
                                  malignancy=None, state="flagged", flags=["blank"], roi=None, model_sha256="0" * 64)
            rest = recv_all(sub, 0.3)
            assert [m.seq for m in rest] == list(range(got.seq + 1, pub.seq))
            assert not sub.is_stale("p0")
            assert sub.gaps == {} and sub.publisher_changes == 1
        finally:
            pub.close()


def test_never_seen_stream_goes_stale_after_grace():
    with Subscriber("tcp://127.0.0.1:9", heartbeat_s=0.05) as sub:
        assert not sub.is_stale("x")
        time.sleep(0.2)
        assert sub.is_stale("x")


def _publish_in_thread(endpoint_box: list, stop: threading.Event, ready: threading.Event):
    with Publisher("tcp://127.0.0.1:*", stream="cli0", heartbeat_s=0.1) as pub:
        endpoint_box.append(pub.endpoint)
        ready.set()
        i = 0
        while not stop.is_set():
            pub.publish_score(frame_index=i, t_capture_ns=time.monotonic_ns(), latency_ms={"infer": 1.0},
                              probs={"normal": 0.1, "benign": 0.1, "malignant": 0.8}, malignancy=0.8,
                              state="suspicious", flags=[], roi=[0, 0, 8, 8], model_sha256="0" * 64)
            i += 1
            pub.service(0.01)


def test_listen_cli_json_and_human(capsys):
    box: list = []
    stop, ready = threading.Event(), threading.Event()
    th = threading.Thread(target=_publish_in_thread, args=(box, stop, ready))
    th.start()
    try:
        assert ready.wait(5)
        assert main(["listen", "--endpoint", box[0], "--count", "4", "--json", "--timeout", "3"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 4
        msgs = [msgspec.json.decode(line.encode(), type=Score | Status) for line in lines]
        assert all(m.stream == "cli0" for m in msgs)
        assert main(["listen", "--endpoint", box[0], "--count", "2", "--kind", "score", "--timeout", "3"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 2 and all(line.startswith("score  cli0 #") and "0.800" in line for line in lines)
    finally:
        stop.set()
        th.join(5)


def test_listen_cli_times_out_with_one_line(capsys):
    # no publisher: listen waits for one (saying so once); --wait bounds that wait
    assert main(["listen", "--endpoint", "tcp://127.0.0.1:9", "--timeout", "0.3", "--wait", "0.6"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["streamcad listen: waiting for a publisher on tcp://127.0.0.1:9 (Ctrl-C to stop)",
                   "streamcad listen: no publisher on tcp://127.0.0.1:9 within --wait 0.6 s"]


def _malformed_frames() -> list[list[bytes]]:
    """One of each malformed kind a hostile or broken publisher can send (each a multipart list)."""
    ok = score_dict("a", "p", 1)

    def js(**over):
        return b"score/a " + json.dumps(dict(ok, **over)).encode()

    deep_json = b'score/a {"type":"score","schema":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep_type = b'score/a {"type":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep_msgpack = b"score/a \x81\xa4type" + b"\x91" * 100_000 + b"\xc0"
    return [
        [b'score/a {"type":"score"'],                       # truncated JSON
        [b"score/a \x85\xc1\xc1\xc1"],                      # msgpack garbage
        [js(schema=9)],                                     # unknown schema
        [js().replace(b'"malignancy": 0.1', b'"malignancy": NaN')],  # NaN (not JSON)
        [js(seq=-4)],                                       # negative seq
        [js(), b"second frame"],                            # 2-part message
        [b"score/a " + msgspec.msgpack.encode(dict(ok, type="alarm"))],  # unknown type
        [js(label="x").replace(b'"x"', b'"\xff\xfe"')],     # bad UTF-8 in a string
        [b"status/a " + json.dumps(ok).encode()],           # topic disagrees with payload
        [deep_json], [deep_type], [deep_msgpack],           # nesting 100k deep
        [b"score/a "],                                      # empty payload
        [js(probs={"normal": 0.5, "benign": 0.5, "malignant": 7.0})],  # out of range
    ]


def test_malformed_kinds_never_raise_anything_but_message_error(raw):
    """strict=False: every kind is rejected and counted (no RecursionError, no multipart part
    mistaken for a message), and the valid score after them arrives."""
    frames = _malformed_frames()
    with Subscriber(raw.endpoint, streams=["a", "sync"], strict=False) as sub:
        raw.sync(sub)
        for parts in frames:
            raw.sock.send_multipart(parts)
        raw.score("a", "p", 7)
        got = recv_all(sub, 0.5)
        assert [m.seq for m in got] == [7]
        assert sub.rejected == len(frames)
        assert sub.rejected_by["nested too deeply"] >= 1
        assert sub.rejected_by["frames: expected one frame"] == 1
    with Subscriber(raw.endpoint, streams=["a", "sync"]) as sub:  # strict: MessageError, nothing else
        raw.sync(sub)
        for parts in frames:
            raw.sock.send_multipart(parts)
        for _ in frames:
            with pytest.raises(MessageError):
                sub.recv(2.0)


def _send_forever(raw: RawPub, stop: threading.Event, frames: list[list[bytes]]) -> None:
    seq = 0
    while not stop.is_set():
        for parts in frames:
            raw.sock.send_multipart(parts)
        raw.score("a", "p", seq)
        seq += 1
        time.sleep(0.02)


def test_listen_reports_counts_and_skips_malformed_messages(raw, capsys):
    stop = threading.Event()
    th = threading.Thread(target=_send_forever, args=(raw, stop, _malformed_frames()))
    th.start()
    try:
        rc = main(["listen", "--endpoint", raw.endpoint, "--stream", "a", "--count", "3", "--json", "--timeout", "3"])
        out, err = capsys.readouterr()
        assert rc == 0, err
        msgs = [msgspec.json.decode(line.encode(), type=Score | Status) for line in out.splitlines()]
        assert len(msgs) == 3 and all(m.stream == "a" for m in msgs)
        assert "skipped a malformed message" in err and "malformed messages skipped (" in err
        assert len(err.splitlines()) <= 7  # rate-limited: 5 reports + the summary (+ gaps)
        rc = main(["listen", "--endpoint", raw.endpoint, "--stream", "a", "--count", "3", "--strict",
                   "--timeout", "3"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1 and err[0].startswith("streamcad listen: malformed message: ")
    finally:
        stop.set()
        th.join(5)


def test_spoofed_seq_is_not_a_gap_and_start_up_loss_is_visible(raw):
    with Subscriber(raw.endpoint, streams=["a", "sync"]) as sub:
        raw.sync(sub)
        for seq in (40, 41, 2**62, 42, 43, 45):
            raw.score("a", "pubA", seq)
        got = recv_all(sub)
    assert [m.seq for m in got] == [40, 41, 2**62, 42, 43, 45]
    assert sub.seq_anomalies == 1
    assert sub.gap_count == 1  # only 44: the jump to 2**62 and back is no gap
    assert sub.joined_at[("a", "pubA")] == 40 and sub.missed_at_join >= 40


def test_listen_says_at_which_seq_it_joined(raw, capsys):
    stop = threading.Event()

    def send():
        seq = 500
        while not stop.is_set():
            raw.score("a", "pubJ", seq)
            seq += 1
            time.sleep(0.01)

    th = threading.Thread(target=send)
    th.start()
    try:
        assert main(["listen", "--endpoint", raw.endpoint, "--stream", "a", "--count", "2", "--timeout", "3"]) == 0
    finally:
        stop.set()
        th.join(5)
    err = capsys.readouterr().err
    assert "joined stream a (publisher pubJ) at seq 5" in err and "earlier messages went out before" in err


def test_score_only_subscriber_counts_no_false_gap_for_statuses(raw):
    """Scores and statuses share the seq counter: a subscriber that asked for scores only used
    to count every status in between as a lost message."""
    def status(seq: int) -> None:
        raw.send(b"status/a " + msgspec.json.encode(
            dict(type="status", schema=1, stream="a", publisher="p", seq=seq, t_publish_ns=3)))

    with Subscriber(raw.endpoint, streams=["a", "sync"], kinds=("score",)) as sub:
        raw.sync(sub)
        raw.score("a", "p", 0)
        status(1)
        raw.score("a", "p", 2)
        status(3)
        raw.score("a", "p", 5)  # 4 really is missing
        got = recv_all(sub)
    assert [(type(m).__name__, m.seq) for m in got] == [("Score", 0), ("Score", 2), ("Score", 5)]
    assert sub.gap_count == 1
