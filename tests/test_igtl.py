"""The OpenIGTLink sink against a real pyigtl client over loopback TCP, fed by a real pipeline
(sweep source, the shipped model), next to the ZeroMQ stream it must agree with."""

from __future__ import annotations

import json
import socket
import threading
import time

import msgspec
import numpy as np
import pytest

pyigtl = pytest.importorskip("pyigtl", reason="the igtl extra (pyigtl) is not installed")

from streamcad.client import Subscriber  # noqa: E402
from streamcad.commands.run import igtl_arg  # noqa: E402
from streamcad.config import config_from_dict  # noqa: E402
from streamcad.errors import ConfigError, TransportError  # noqa: E402
from streamcad.messages import Score  # noqa: E402
from streamcad.pipeline import Pipeline  # noqa: E402
from streamcad.sinks.igtl import IgtlSink  # noqa: E402
from streamcad.sinks.memory import MemorySink  # noqa: E402
from streamcad.sources import open_source  # noqa: E402
from streamcad.transport import Publisher  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _pipeline(frames: int, igtl: IgtlSink, endpoint: str, mem: MemorySink):
    cfg = config_from_dict({"frames": frames, "dashboard": False, "publish": {"endpoint": endpoint}})
    src = open_source("sweep:", pace="native", fps=30.0, seed=0, loop=True)
    return Pipeline(cfg, source=src, publisher=Publisher(endpoint, stream="probe0"), sinks=[igtl, mem])


class _Collector(threading.Thread):
    """Polls a pyigtl client: every Score STRING, IMAGE and POINT it sees, by timestamp."""

    def __init__(self, client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.by_device: dict[str, dict[float, object]] = {"Image": {}, "Score": {}, "Lesion": {}}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for m in self.client.get_latest_messages():
                self.by_device.setdefault(m.device_name, {})[round(m.timestamp, 6)] = m
            time.sleep(0.002)


def test_images_and_scores_reach_a_pyigtl_client_equal_to_the_zeromq_stream():
    port, ep = _free_port(), f"tcp://127.0.0.1:{_free_port()}"
    sink = IgtlSink("127.0.0.1", port)
    client = pyigtl.OpenIGTLinkClient("127.0.0.1", port)
    mem = MemorySink(wants_frames=True)
    col = _Collector(client)
    try:
        assert _wait(lambda: sink.connected == 1)
        col.start()
        with _pipeline(60, sink, ep, mem) as pipe, Subscriber(ep, kinds=("score",)) as sub:
            t = threading.Thread(target=pipe.run, daemon=True)
            time.sleep(0.3)  # the SUB joins before the first frame
            t.start()
            zmq_scores = {}
            while len(zmq_scores) < 60 and (m := sub.recv(5.0)) is not None:
                zmq_scores[m.seq] = m
            t.join(10)
            time.sleep(0.5)  # the last frames' messages cross the socket
    finally:
        col.stop.set()
        client.stop()
        sink.close()
    strings = col.by_device["Score"]
    assert len(strings) >= 10, f"the client saw only {len(strings)} scores"
    frames = {i: img for i, _, img in mem.frames}
    paired = 0
    for ts, sm in strings.items():
        wire = msgspec.json.decode(sm.string.encode(), type=Score)
        assert wire == zmq_scores[wire.seq]  # the very message the ZeroMQ subscribers got
        # capture time, not send time: the stamp is t_capture_ns moved onto the UTC clock
        img = col.by_device["Image"].get(ts)
        if img is None:
            continue  # the client's newest-per-device mailbox kept a later image
        x, y, w, h = wire.roi
        assert img.image.shape == (1, h, w) and img.image.dtype == np.uint8
        assert np.array_equal(img.image[0], frames[wire.frame_index][y:y + h, x:x + w])
        paired += 1
    assert paired >= 5
    # a POINT only for scores that carry a lesion (the shipped model has a lesion head when its
    # manifest says saliency_kind = lesion_probability); never one for a score without a lesion
    with_lesion = {s.seq for s in zmq_scores.values() if s.lesion is not None}
    if not with_lesion:
        assert not col.by_device.get("Lesion")


def test_lesion_point_and_capture_timestamp():
    port = _free_port()
    sink = IgtlSink("127.0.0.1", port, lesion_device="Lesion")
    score = msgspec.convert(dict(
        type="score", schema=1, stream="probe0", publisher="ab", seq=4, frame_index=9, t_capture_ns=time.monotonic_ns() - 2_000_000_000,
        t_publish_ns=time.monotonic_ns(), latency_ms={}, probs={"normal": 0.1, "benign": 0.2, "malignant": 0.7},
        malignancy=0.6, state="suspicious", flags=[], roi=(10, 20, 300, 200), model_sha256="ab",
        lesion={"box": (50, 60, 40, 30), "confidence": 0.8}), Score)
    msgs = sink.messages(np.zeros((200, 300), np.uint8), score, 1234.5)
    sink.close()
    kinds = [m.message_type for m in msgs]
    assert kinds == ["IMAGE", "STRING", "POINT"]
    assert [m.timestamp for m in msgs] == [1234.5] * 3
    np.testing.assert_allclose(msgs[2].positions, [[60.0, 55.0, 0.0]])  # box centre (70, 75) - ROI corner (10, 20)
    assert json.loads(msgs[1].string)["lesion"]["confidence"] == 0.8
    # the frame's capture time is what the header carries: 2 s before now, on the UTC clock
    from streamcad.sources.base import Frame

    sink2 = IgtlSink("127.0.0.1", port)
    client = pyigtl.OpenIGTLinkClient("127.0.0.1", port)
    try:
        assert _wait(lambda: sink2.connected == 1)
        sink2.write_frame(Frame(np.full((480, 640), 7, np.uint8), score.t_capture_ns, 9))
        sink2.write_score(score)
        got = client.wait_for_message("Lesion", timeout=5)
        img = client.wait_for_message("Image", timeout=5)
    finally:
        client.stop()
        sink2.close()
    assert got is not None and img is not None
    assert abs(img.timestamp - (time.time() - 2.0)) < 0.5
    assert img.image.shape == (1, 200, 300) and (img.image == 7).all()


def test_reconnects_after_the_client_goes_away():
    port = _free_port()
    sink = IgtlSink("127.0.0.1", port)
    from streamcad.sources.base import Frame

    def send(i: int) -> None:
        t = time.monotonic_ns()
        sink.write_frame(Frame(np.full((100, 120), i, np.uint8), t, i))
        sink.write_score(msgspec.convert(dict(
            type="score", schema=1, stream="p", publisher="ab", seq=i, frame_index=i, t_capture_ns=t, t_publish_ns=t,
            latency_ms={}, probs=None, malignancy=None, state="flagged", flags=["blank"], roi=(0, 0, 120, 100),
            model_sha256="ab"), Score))

    try:
        first = pyigtl.OpenIGTLinkClient("127.0.0.1", port)
        assert _wait(lambda: sink.connected == 1)
        send(1)
        assert first.wait_for_message("Image", timeout=5).image[0, 0, 0] == 1
        first.stop()  # Slicer closed, or the network blinked
        assert _wait(lambda: sink.connected == 0), "the server kept a client that went away"
        second = pyigtl.OpenIGTLinkClient("127.0.0.1", port)
        assert _wait(lambda: sink.connected == 1)
        send(2)
        got = second.wait_for_message("Image", timeout=5)
        second.stop()
    finally:
        sink.close()
    assert got is not None and got.image[0, 0, 0] == 2  # the new client gets new frames, not old ones
    assert sink.clients_served == 2


def test_a_client_that_stops_reading_never_slows_the_scores():
    """A client that connects and never reads: the TCP buffers fill, the sender thread waits, the
    sink drops (and counts) frames or cuts the client; the pipeline's publish thread does not
    wait: every score still reaches the ZeroMQ subscriber, none missing."""
    port, ep = _free_port(), f"tcp://127.0.0.1:{_free_port()}"
    sink = IgtlSink("127.0.0.1", port, queue=2, send_timeout_s=30.0)
    stalled = socket.create_connection(("127.0.0.1", port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    mem = MemorySink()
    try:
        assert _wait(lambda: sink.connected == 1)
        with _pipeline(90, sink, ep, mem) as pipe, Subscriber(ep) as sub:  # scores + statuses: one seq
            time.sleep(0.3)
            t = threading.Thread(target=pipe.run, daemon=True)
            t.start()
            got = []
            while len(got) < 90 and (m := sub.recv(5.0)) is not None:
                if isinstance(m, Score):
                    got.append(m.seq)
            t.join(10)
            assert not t.is_alive()
            assert sink.connected == 1  # still connected: its send waits within the 30 s timeout
        assert len(got) == 90 and sub.gap_count == 0
        assert sink.dropped > 0  # the stalled client cost frames to itself only
    finally:
        stalled.close()
        sink.close()


def test_loopback_unless_allowed_and_busy_port_and_flags():
    with pytest.raises(TransportError, match="refusing to bind"):
        IgtlSink("0.0.0.0", _free_port())
    holder = socket.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(TransportError, match="address already in use"):
            IgtlSink("127.0.0.1", holder.getsockname()[1])
    finally:
        holder.close()
    with pytest.raises(TransportError, match="igtl.image_device"):
        IgtlSink("127.0.0.1", _free_port(), image_device="x" * 21)
    assert igtl_arg("18944") == {"enabled": True, "port": 18944}
    assert igtl_arg("127.0.0.1:18945") == {"enabled": True, "port": 18945, "host": "127.0.0.1"}
    for bad in ("", "abc", "1:2:x", ":80", "70000"):
        with pytest.raises(ConfigError, match="expected \\[HOST:\\]PORT"):
            igtl_arg(bad)
