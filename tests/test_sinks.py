"""The Sink interface (streamcad.sinks): every sink of a pipeline gets the same messages, the
ZeroMQ publisher in a pipeline sends nothing of its own (one heartbeat owner), drops are counted
into the status, a join is answered with a status. Real pipeline, shipped ONNX model, loopback."""

from __future__ import annotations

import time

import pytest

from streamcad.client import Subscriber
from streamcad.config import config_from_dict
from streamcad.errors import MessageError, StreamcadError
from streamcad.messages import STAGES, Score, ScoreStream, Status
from streamcad.pipeline import DEFAULT_MODEL, Pipeline
from streamcad.sinks import MemorySink, Sink, open_sinks
from streamcad.sinks.zmq import publisher_from_config
from streamcad.transport import Publisher
from tests.helpers_stream import free_port

N = 30


def _cfg(**extra):
    d = {"source": {"uri": "sweep:", "pace": "none", "fps": 30.0},
         "model": {"path": str(DEFAULT_MODEL), "threads": 1},
         "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}", "stream": "sk"},
         "frames": N, "dashboard": False}
    d.update(extra)
    return config_from_dict(d)


def test_the_publisher_and_every_other_sink_see_the_same_messages_and_no_others():
    """A real Subscriber on the ZeroMQ sink receives exactly what a MemorySink beside it got:
    the publisher adds no heartbeat or join status of its own (the pipeline is the one owner)."""
    cfg = _cfg()
    scores = ScoreStream("sk", heartbeat_s=cfg.publish.heartbeat_s)
    pub = publisher_from_config(cfg, scores)
    mem = MemorySink()
    got: list = []
    with Subscriber(cfg.publish.endpoint, rcvhwm=100_000) as sub:
        with Pipeline(cfg, publisher=pub, sinks=[mem]) as pipe:
            assert pipe.scores is scores and pipe.publisher is pub and pipe.sinks == [pub, mem]
            assert pipe.wait_subscribers(1, 20.0)  # joined before the first message
            pipe.run_sequential()
            end = time.monotonic() + 5
            while time.monotonic() < end and len(got) < len(mem.messages):
                m = sub.recv(timeout=0.2)
                if m is not None:
                    got.append(m)
    assert len(mem.scores) == N and mem.statuses
    assert got == mem.messages
    assert [m.seq for m in mem.messages] == list(range(len(mem.messages)))
    assert {m.publisher for m in got} == {pub.publisher_id}
    assert mem.closed and mem.opened == 1
    assert set(mem.scores[-1].latency_ms) == set(STAGES)  # 'queue' is a stage like the others


def test_a_sinks_drops_are_counted_and_a_join_gets_a_status_at_once():
    full = MemorySink(capacity=3)  # keeps 3 messages, then drops and counts
    keep = MemorySink()

    class Joiner(MemorySink):
        """Reports one client joining after the 10th score."""

        def write_score(self, msg):
            if len(self.scores) == 9:
                self.join()
            return super().write_score(msg)

    joiner = Joiner()
    with Pipeline(_cfg(), sinks=[full, keep, joiner]) as pipe:
        assert pipe.publisher is None  # sinks given: no ZeroMQ socket at all
        report = pipe.run_sequential()
    assert report.frames_out == N and len(full.messages) == 3
    assert full.dropped == len(keep.messages) - 3 and pipe.dropped == full.dropped
    # the status' dropped_publish is the ZeroMQ publisher's (what a subscriber sees as gaps);
    # there is none here, so it stays 0 whatever another sink drops
    assert {s.counters.dropped_publish for s in keep.statuses} == {0} and report.dropped_publish == 0
    # the message right after the 10th score is the status answering the join
    msgs = joiner.messages
    i = msgs.index(joiner.scores[9])
    assert isinstance(msgs[i + 1], Status)
    assert keep.messages == joiner.messages  # every sink, the same sequence


def test_score_stream_owns_seq_stamps_and_validation():
    s = ScoreStream("p0", heartbeat_s=1.0)
    assert s.status_due()
    st = s.status(dropped=2, counters={"frames_in": 1})
    assert st.seq == 0 and st.counters.dropped_publish == 2 and st.last_seq == -1 and not s.status_due()
    sc = s.score(frame_index=3, t_capture_ns=1_000, t_publish_ns=3_000_000, latency_ms={}, probs=None,
                 malignancy=None, state="flagged", flags=["blank"], roi=None, model_sha256="ab")
    assert (sc.seq, sc.publisher, sc.latency_ms["total"]) == (1, s.publisher_id, 2.999)
    assert s.status().last_seq == 1
    with pytest.raises(MessageError, match="set by the publisher"):
        s.score(seq=5, frame_index=0)
    with pytest.raises(MessageError, match="state"):
        s.score(frame_index=0, t_capture_ns=1, latency_ms={}, probs=None, malignancy=None, state="maybe",
                flags=[], roi=None, model_sha256="ab")
    assert s.seq == 3  # a refused message consumes no seq


def test_publisher_takes_its_stream_from_the_score_stream():
    s = ScoreStream("given", heartbeat_s=0.5)
    with Publisher("tcp://127.0.0.1:*", scores=s) as pub:
        assert (pub.stream, pub.heartbeat_s, pub.publisher_id) == ("given", 0.5, s.publisher_id)
        with pytest.raises(MessageError, match="write_score takes a Score"):
            pub.write_score(s.status())
    with pytest.raises(StreamcadError, match="takes stream and heartbeat_s from the ScoreStream"):
        Publisher("tcp://127.0.0.1:*", scores=s, stream="other")


def test_the_interface_is_small_and_the_factory_fails_loudly():
    class Half(Sink):
        def write_score(self, msg):
            return True

    with pytest.raises(TypeError, match="abstract"):
        Half()
    with pytest.raises(StreamcadError, match="unknown sink"):
        open_sinks(_cfg(), ScoreStream("x"), only=["zmq", "nope"])
    mem = MemorySink()
    with mem as m:
        assert m is mem and mem.opened == 1
    assert mem.closed
    with pytest.raises(StreamcadError, match="after close"):
        mem.write_score(Score(schema=1, stream="x", publisher="p", seq=0, frame_index=0, t_capture_ns=0,
                              t_publish_ns=0, latency_ms={}, probs=None, malignancy=None, state="flagged",
                              flags=[], roi=None, model_sha256=""))
