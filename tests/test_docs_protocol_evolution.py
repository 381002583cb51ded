"""docs/PROTOCOL.md "Versions": within schema version 1 publishers only ADD optional fields and
readers ignore what they do not know; everything else is a new schema version, which a version-1
reader refuses. Tested with this release's reader (streamcad.client.Subscriber over a real
loopback socket, and the committed JSON Schemas) against a stream from a NEWER publisher: fields
this reader has never heard of, at the top level and nested. Also: the publisher itself stays
strict, and every message carries a UTC wall-clock stamp (t_utc_ns) beside the monotonic ones."""

from __future__ import annotations

import json
import socket
import time

import jsonschema
import msgspec
import pytest
import zmq

from streamcad.client import Subscriber
from streamcad.errors import MessageError
from streamcad.messages import SCHEMA_DIR, Score, ScoreStream, Status, decode_frame

SCORE_V1 = dict(
    type="score", schema=1, stream="ward3", publisher="feedbeef", seq=0, frame_index=12,
    t_capture_ns=1_000_000, t_publish_ns=9_000_000,
    latency_ms={"grab": 0.2, "infer": 1.5, "total": 8.0},
    probs={"normal": 0.1, "benign": 0.25, "malignant": 0.65}, malignancy=0.61, state="suspicious",
    flags=[], roi=[10, 20, 300, 240], model_sha256="ab" * 32,
)
# what a later 1.x publisher might add: new top-level fields, new nested fields, a new object
NEWER = {"heart_rate_bpm": 71, "probe": {"serial": "X-1", "depth_cm": 4.5}, "operator_note": None}
STATUS_V1 = dict(type="status", schema=1, stream="ward3", publisher="feedbeef", seq=1, t_publish_ns=9_500_000,
                 source={"uri": "device:0", "state": "live", "width": 1920, "height": 1080},
                 counters={"frames_in": 5, "frames_out": 5}, last_seq=0)


def _newer(base: dict, **nested: dict) -> dict:
    d = json.loads(json.dumps(base))
    d.update(NEWER)
    for key, extra in nested.items():
        d[key].update(extra)
    return d


def _frame(d: dict, encoding: str) -> bytes:
    payload = json.dumps(d).encode() if encoding == "json" else msgspec.msgpack.encode(d)
    return f"{d['type']}/{d['stream']} ".encode() + payload


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_this_reader_takes_a_newer_v1_stream_over_a_real_socket(encoding):
    score = _newer(SCORE_V1, probs={"indeterminate": 0.0}, latency_ms={"postprocess": 0.3})
    status = _newer(STATUS_V1, source={"serial_number": "SN-9"}, counters={"frames_recorded": 5})
    endpoint = f"tcp://127.0.0.1:{_port()}"
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(endpoint)
    got: list = []
    try:
        with Subscriber(endpoint, streams=["ward3"], strict=True) as sub:
            deadline = time.monotonic() + 15
            seq = 0
            while len({type(m) for m in got}) < 2 and time.monotonic() < deadline:
                for d in (score, status):  # resend until the slow joiner is connected
                    pub.send(_frame(dict(d, seq=seq), encoding))
                    seq += 1
                msg = sub.recv(timeout=0.2)
                while msg is not None:
                    got.append(msg)
                    msg = sub.recv(timeout=0.05)
            assert sub.rejected == 0
    finally:
        pub.close()
    s = next(m for m in got if isinstance(m, Score))
    st = next(m for m in got if isinstance(m, Status))
    # every field this reader knows is intact; the unknown ones are simply not there
    assert (s.stream, s.frame_index, s.state, s.malignancy, s.roi) == ("ward3", 12, "suspicious", 0.61, (10, 20, 300, 240))
    assert (s.probs.benign, s.probs.malignant) == (0.25, 0.65) and s.latency_ms["postprocess"] == 0.3
    assert not hasattr(s, "heart_rate_bpm") and not hasattr(s.probs, "indeterminate")
    assert (st.source.state, st.source.width, st.counters.frames_in) == ("live", 1920, 5)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d.update(schema=2), "unsupported schema version 2"),  # the version bump
        (lambda d: d.update(state="maybe"), "$.state"),  # a new enum value is not additive
        (lambda d: d.update(flags=["smudge"]), "$.flags[0]"),
        (lambda d: d.pop("model_sha256"), "model_sha256"),  # removing a field is not additive
        (lambda d: d.update(malignancy="high"), "$.malignancy"),  # nor is changing a type
    ],
)
def test_anything_but_an_added_field_is_refused(change, words):
    d = _newer(SCORE_V1)
    change(d)
    with pytest.raises(MessageError) as exc:
        decode_frame(_frame(d, "json"))
    assert words in str(exc.value)


def test_committed_json_schemas_follow_the_rule():
    v = jsonschema.Draft202012Validator(json.loads((SCHEMA_DIR / "message.schema.json").read_text()))
    assert v.is_valid(_newer(SCORE_V1, probs={"indeterminate": 0.0}))
    assert v.is_valid(_newer(STATUS_V1, source={"serial_number": "SN-9"}, counters={"frames_recorded": 5}))
    assert not v.is_valid(dict(SCORE_V1, state="maybe"))
    assert not v.is_valid({k: x for k, x in SCORE_V1.items() if k != "model_sha256"})
    for name in ("score.schema.json", "status.schema.json", "message.schema.json"):
        assert '"additionalProperties": false' not in (SCHEMA_DIR / name).read_text(), name


def test_the_publisher_never_sends_a_field_the_schema_lacks():
    ss = ScoreStream("ward3")
    fields = {k: v for k, v in SCORE_V1.items() if k not in ("type", "schema", "stream", "publisher", "seq", "t_publish_ns")}
    with pytest.raises(MessageError, match=r"unknown field \$\.heart_rate_bpm"):
        ss.score(**fields, heart_rate_bpm=71)
    with pytest.raises(MessageError, match=r"unknown field \$\.probs\.indeterminate"):
        ss.score(**dict(fields, probs={**fields["probs"], "indeterminate": 0.0}))
    with pytest.raises(MessageError, match=r"unknown field \$\.counters\.framez_in"):
        ss.status(counters={"framez_in": 3})
    with pytest.raises(MessageError, match="set by the publisher"):
        ss.score(**fields, t_utc_ns=0)


def test_every_message_carries_a_utc_wall_clock_stamp():
    ss = ScoreStream("ward3")
    fields = {k: v for k, v in SCORE_V1.items() if k not in ("type", "schema", "stream", "publisher", "seq", "t_publish_ns")}
    before = time.time_ns()
    msgs = [ss.score(**fields), ss.status(), ss.score(**fields)]
    after = time.time_ns()
    for m in msgs:
        assert before <= m.t_utc_ns <= after, (before, m.t_utc_ns, after)
        kind = "score" if isinstance(m, Score) else "status"
        assert decode_frame(f"{kind}/ward3 ".encode() + msgspec.json.encode(m)).t_utc_ns == m.t_utc_ns
    assert msgs[0].t_utc_ns > 1_600_000_000 * 10**9  # Unix-epoch ns (after 2020), not the monotonic clock
    assert msgs[0].t_utc_ns <= msgs[1].t_utc_ns <= msgs[2].t_utc_ns
