"""Publisher over real ZeroMQ sockets on 127.0.0.1 / ipc, every receive with a timeout."""

from __future__ import annotations

import json
import socket
import stat
import threading
import time

import jsonschema
import msgspec
import pytest

from streamcad.client import Subscriber
from streamcad.errors import MessageError, TransportError
from streamcad.messages import SCHEMA_DIR, Score, Status
from streamcad.transport import Publisher

ANY_PORT = "tcp://127.0.0.1:*"


def score_fields(i: int) -> dict:
    return dict(
        frame_index=i, t_capture_ns=time.monotonic_ns(),
        latency_ms={"grab": 0.1, "preprocess": 0.4, "infer": 1.2, "smooth": 0.01},
        probs={"normal": 0.2, "benign": 0.3, "malignant": 0.5}, malignancy=0.45, state="suspicious",
        flags=[], roi=[4, 8, 320, 240], model_sha256="cd" * 32, model="small", saliency_peak=[100, 90],
    )


def wait_for(sub: Subscriber, pub: Publisher | None, pred, timeout: float = 3.0):
    """Pump the publisher's service loop and the subscriber until pred(msg) holds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pub is not None:
            pub.service(0.005)
        msg = sub.recv(0.02)
        if msg is not None and pred(msg):
            return msg
    raise AssertionError("expected message did not arrive")


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_round_trip_over_socket_and_schema(encoding):
    with Publisher(ANY_PORT, stream="probe3", encoding=encoding, heartbeat_s=60) as pub, \
            Subscriber(pub.endpoint, heartbeat_s=1.0) as sub:
        status = wait_for(sub, pub, lambda m: isinstance(m, Status))
        pub.publish_status(source={"uri": "file:a.mp4", "state": "live", "width": 640, "height": 480,
                                   "fps": 25.0, "fourcc": "avc1", "backend": "FFMPEG"},
                           counters={"frames_in": 5, "frames_out": 4, "dropped_publish": 99},
                           fps_in=25.0, fps_out=24.0, backend="onnxruntime", model="small", model_sha256="cd" * 32)
        fields = score_fields(12)
        t_ready = time.monotonic_ns()
        assert pub.publish_score(t_ready_ns=t_ready, **fields) is True
        got = []
        while len(got) < 2:
            m = sub.recv(2.0)
            assert m is not None, "message lost"
            got.append(m)
    st2, sc = got
    assert isinstance(st2, Status) and isinstance(sc, Score)
    assert st2.seq == status.seq + 1 and sc.seq == st2.seq + 1
    assert st2.counters.dropped_publish == 0  # the publisher's own count wins over the caller's 99
    assert st2.counters.frames_in == 5 and st2.source.width == 640 and st2.last_seq == -1
    assert sc.stream == "probe3" and sc.publisher == pub.publisher_id and sc.schema == 1
    assert sc.frame_index == 12 and sc.probs.malignant == 0.5 and sc.roi == (4, 8, 320, 240)
    assert sc.saliency_peak == (100, 90) and sc.model == "small"
    assert sc.latency_ms["infer"] == 1.2
    assert sc.latency_ms["total"] == pytest.approx((sc.t_publish_ns - fields["t_capture_ns"]) / 1e6)
    assert 0 <= sc.latency_ms["publish"] <= sc.latency_ms["total"]


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_real_frames_validate_against_committed_schemas(encoding):
    """Take the bytes straight off a raw SUB socket (not our decoder) and validate them."""
    import zmq

    score_schema = json.loads((SCHEMA_DIR / "score.schema.json").read_text())
    status_schema = json.loads((SCHEMA_DIR / "status.schema.json").read_text())
    ctx = zmq.Context()
    raw = ctx.socket(zmq.SUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        with Publisher(ANY_PORT, stream="p0", encoding=encoding, heartbeat_s=60) as pub:
            raw.connect(pub.endpoint)
            frames = []
            end = time.monotonic() + 3
            while len(frames) < 3 and time.monotonic() < end:
                pub.service(0.01)
                if frames:
                    pub.publish_score(**score_fields(len(frames)))
                if raw.poll(20):
                    frames.append(raw.recv())
    finally:
        raw.close()
        ctx.term()
    assert len(frames) == 3
    kinds = []
    for f in frames:
        t, payload = f.split(b" ", 1)
        kind = t.split(b"/")[0].decode()
        kinds.append(kind)
        obj = json.loads(payload) if encoding == "json" else msgspec.msgpack.decode(payload)
        jsonschema.validate(obj, score_schema if kind == "score" else status_schema)
    assert kinds[0] == "status" and "score" in kinds


def test_bad_fields_are_refused_with_the_field_named():
    with Publisher(ANY_PORT, heartbeat_s=60) as pub:
        f = score_fields(1)
        f["probs"] = {"normal": 0.2, "benign": 0.3, "malignant": 1.5}
        with pytest.raises(MessageError, match=r"\$\.probs\.malignant"):
            pub.publish_score(**f)
        with pytest.raises(MessageError, match="set by the publisher"):
            pub.publish_score(seq=3, **score_fields(1))
        f = score_fields(1)
        f["latency_ms"]["infer"] = float("nan")
        with pytest.raises(MessageError, match="latency_ms.infer"):
            pub.publish_score(**f)
        f = score_fields(1)
        f["state"] = "worrying"
        with pytest.raises(MessageError, match=r"\$\.state"):
            pub.publish_score(**f)
        assert pub.seq == 0  # refused messages do not consume a seq (no false gap)


def test_late_subscriber_gets_status_within_1s():
    # heartbeat far away: only the subscription-triggered status can arrive in time
    with Publisher(ANY_PORT, stream="late", heartbeat_s=30) as pub:
        for i in range(5):
            pub.publish_score(**score_fields(i))
        with Subscriber(pub.endpoint, kinds=("status",)) as sub:
            t0 = time.monotonic()
            got = None
            i = 5
            while got is None and time.monotonic() - t0 < 1.0:
                pub.publish_score(**score_fields(i))  # the pipeline keeps publishing at ~30 fps
                i += 1
                got = sub.recv(0.03)
            assert isinstance(got, Status), "no status within 1 s of subscribing"
            assert got.last_seq >= 4 and got.stream == "late"


def test_slow_subscriber_never_blocks_publisher_drops_are_counted():
    pub = Publisher(ANY_PORT, stream="fast", hwm_seconds=1.0, fps=20.0, heartbeat_s=60)
    sub = Subscriber(pub.endpoint, rcvhwm=20, heartbeat_s=60)
    try:
        wait_for(sub, pub, lambda m: isinstance(m, Status))
        slow = threading.Event()
        slow.set()
        done = threading.Event()
        seen: list[int] = []

        def reader():  # sleeps in its receive loop while the publisher bursts
            while not done.is_set():
                if slow.is_set():
                    time.sleep(0.01)
                m = sub.recv(0.05)
                if m is not None:
                    seen.append(m.seq)

        th = threading.Thread(target=reader)
        th.start()
        worst = 0.0
        attempts = 0
        while pub.dropped < 200 and attempts < 300_000:
            t = time.perf_counter()
            pub.publish_score(**score_fields(attempts))
            worst = max(worst, time.perf_counter() - t)
            attempts += 1
        assert pub.dropped >= 200, "HWM never reached"
        assert worst < 0.5, f"a publish call blocked for {worst:.2f} s"
        slow.clear()
        # the final message must get through, so the subscriber can see every gap before it
        end = time.monotonic() + 10
        while not pub.publish_status() and time.monotonic() < end:
            time.sleep(0.01)
        last = pub.seq - 1
        while (not seen or seen[-1] < last) and time.monotonic() < end:
            time.sleep(0.02)
        done.set()
        th.join(5)
        assert seen and seen[-1] == last
        assert pub.sent + pub.dropped == pub.seq
        # TCP loses nothing: every seq the publisher dropped is a gap the subscriber saw
        assert sub.gap_count == pub.dropped
        assert len(seen) + sub.gap_count == last - seen[0] + 1
    finally:
        sub.close()
        pub.close()


def test_latest_only_gets_newest():
    with pytest.raises(TransportError, match="one topic"):
        Subscriber("tcp://127.0.0.1:9", streams=["a"], latest_only=True)
    with Publisher(ANY_PORT, stream="p0", heartbeat_s=60) as pub, \
            Subscriber(pub.endpoint, latest_only=True, heartbeat_s=60) as sub:
        end = time.monotonic() + 3
        while pub.subscriptions < 1 and time.monotonic() < end:
            pub.service(0.01)
        for i in range(60):
            pub.publish_score(**score_fields(i))
        time.sleep(0.3)
        m = sub.recv(2.0)
        assert isinstance(m, Score) and m.seq == pub.seq - 1 and m.frame_index == 59
        assert sub.recv(0.2) is None


def test_busy_port_names_endpoint():
    with Publisher(ANY_PORT) as pub:
        with pytest.raises(TransportError, match=f"{pub.endpoint}.*in use"):
            Publisher(pub.endpoint)


def test_remote_bind_must_be_explicit():
    with pytest.raises(TransportError, match="allow_remote"):
        Publisher("tcp://0.0.0.0:*")
    with pytest.raises(TransportError, match="allow_remote"):
        Publisher("tcp://*:*")
    with pytest.raises(TransportError, match="bad endpoint"):
        Publisher("127.0.0.1:5555")
    with Publisher("tcp://0.0.0.0:*", allow_remote=True) as pub:
        assert pub.endpoint.startswith("tcp://0.0.0.0:")


def test_ipc_permissions_second_bind_and_stale_file(tmp_path):
    path = tmp_path / "probe.sock"
    ep = f"ipc://{path}"
    with Publisher(ep, stream="ipc0", heartbeat_s=60) as pub:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with pytest.raises(TransportError, match="live process"):
            Publisher(ep)
        with Subscriber(ep) as sub:  # the first instance still works
            wait_for(sub, pub, lambda m: isinstance(m, Status))
    # a dead process's socket file: bound, then closed without unlinking
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    assert stale.exists()
    with Publisher(f"ipc://{stale}") as pub:
        assert stat.S_IMODE(stale.stat().st_mode) == 0o600
    notsock = tmp_path / "file.sock"
    notsock.write_text("x")
    with pytest.raises(TransportError, match="not a socket"):
        Publisher(f"ipc://{notsock}")


def test_close_is_bounded_when_subscriber_stuck_or_gone():
    for gone in (False, True):
        pub = Publisher(ANY_PORT, hwm_seconds=1.0, fps=20.0, heartbeat_s=60)
        sub = Subscriber(pub.endpoint, rcvhwm=20)
        wait_for(sub, pub, lambda m: isinstance(m, Status))
        n = 0
        while pub.dropped == 0 and n < 300_000:  # fill every buffer on the way
            pub.publish_score(**score_fields(n))
            n += 1
        if gone:
            sub.close()
        t = time.monotonic()
        pub.close()
        elapsed = time.monotonic() - t
        sub.close()
        assert elapsed < 1.0, f"close took {elapsed:.2f} s (gone={gone})"
        with pytest.raises(TransportError, match="closed"):
            pub.publish_score(**score_fields(0))


def test_pipeline_style_call_numpy_values_and_own_publish_stamp():
    import numpy as np

    with Publisher(ANY_PORT, stream="np0", heartbeat_s=60) as pub, Subscriber(pub.endpoint) as sub:
        wait_for(sub, pub, lambda m: isinstance(m, Status))
        t_cap = time.monotonic_ns()
        t_pub = t_cap + 5_000_000
        f = score_fields(3)
        f.update(t_capture_ns=t_cap, probs=dict(zip(("normal", "benign", "malignant"), np.array([0.25, 0.25, 0.5], np.float32), strict=True)),
                 malignancy=np.float64(0.5), roi=(np.int64(1), 2, 3, 4), flags=sorted({"frozen"}), state="flagged")
        f["latency_ms"] = {"queue": 0.5, "total": 5.0}
        assert pub.publish_score(t_publish_ns=t_pub, **f)
        pub.publish_status(uptime_s=12.5, fps_in=np.float32(30.0))
        sc = wait_for(sub, None, lambda m: isinstance(m, Score))
        st = wait_for(sub, None, lambda m: isinstance(m, Status))
    assert sc.t_publish_ns == t_pub and sc.latency_ms == {"queue": 0.5, "total": 5.0}
    assert sc.probs.malignant == 0.5 and sc.roi == (1, 2, 3, 4) and sc.flags == ["frozen"]
    assert st.uptime_s == 12.5 and st.fps_in == 30.0 and st.last_seq == sc.seq
