"""Messages: strict typed decoding, both encodings, committed JSON Schemas, hostile input."""

from __future__ import annotations

import json

import jsonschema
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcad.errors import MessageError
from streamcad.messages import (
    SCHEMA_DIR,
    Counters,
    Probs,
    Score,
    SourceStatus,
    Status,
    check_stream_name,
    decode_frame,
    decode_payload,
    encode_frame,
    json_schemas,
    topic,
)


def make_score(**over) -> Score:
    fields = dict(
        schema=1, stream="probe0", publisher="0123abcd", seq=7, frame_index=41,
        t_capture_ns=1_000_000, t_publish_ns=9_000_000,
        latency_ms={"grab": 0.2, "preprocess": 0.5, "infer": 1.5, "smooth": 0.01, "publish": 0.05, "total": 8.0},
        probs=Probs(normal=0.1, benign=0.25, malignant=0.65), malignancy=0.61, state="suspicious",
        flags=[], roi=(10, 20, 300, 240), model_sha256="ab" * 32, model="small", saliency_peak=(120, 88),
    )
    fields.update(over)
    return Score(**fields)


def make_status(**over) -> Status:
    fields = dict(
        schema=1, stream="probe0", publisher="0123abcd", seq=8, t_publish_ns=9_500_000,
        source=SourceStatus(uri="file:clip.mp4", state="live", width=640, height=480, fps=30.0, fourcc="avc1", backend="FFMPEG"),
        counters=Counters(frames_in=100, frames_out=90, overwritten=10, flagged=3),
        last_seq=7, fps_in=30.0, fps_out=29.5, backend="onnxruntime", model="small", model_sha256="ab" * 32, uptime_s=3.5,
    )
    fields.update(over)
    return Status(**fields)


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
@pytest.mark.parametrize("msg", [make_score(), make_score(probs=None, malignancy=None, state="flagged", flags=["blank", "frozen"], roi=None, saliency_peak=None), make_status(), make_status(source=None)])
def test_round_trip_is_exact(encoding, msg):
    frame = encode_frame(msg, encoding)
    kind = "score" if isinstance(msg, Score) else "status"
    assert frame.startswith(f"{kind}/probe0 ".encode())
    assert decode_frame(frame) == msg
    first = frame[len(kind) + len("/probe0 ")]
    assert (first == ord("{")) == (encoding == "json")


def test_committed_schemas_equal_generated():
    fresh = json_schemas()
    committed = {p.name: json.loads(p.read_text()) for p in SCHEMA_DIR.glob("*.json")}
    assert set(committed) == set(fresh), "run: python -m streamcad.messages --write-schemas"
    for name, schema in fresh.items():
        assert committed[name] == json.loads(json.dumps(schema)), f"{name} is stale: regenerate it"


def test_schema_accepts_encoded_and_rejects_wrong():
    schema = json.loads((SCHEMA_DIR / "message.schema.json").read_text())
    v = jsonschema.Draft202012Validator(schema)
    for msg in (make_score(), make_status()):
        v.validate(json.loads(msgspec.json.encode(msg)))
    bad = json.loads(msgspec.json.encode(make_score()))
    bad["probs"]["malignant"] = 1.5
    assert not v.is_valid(bad)
    bad = json.loads(msgspec.json.encode(make_score()))
    bad["state"] = "maybe"
    assert not v.is_valid(bad)


def _json_frame(mutate) -> bytes:
    d = json.loads(msgspec.json.encode(make_score()))
    mutate(d)
    return b"score/probe0 " + json.dumps(d).encode()


@pytest.mark.parametrize(
    "frame, words",
    [
        (encode_frame(make_score())[:-9], "truncated"),
        (encode_frame(make_score(), "msgpack")[:-9], "truncated"),
        (_json_frame(lambda d: d.update(seq="7")), "$.seq"),
        (_json_frame(lambda d: d["probs"].update(malignant=1.5)), "$.probs.malignant"),
        (_json_frame(lambda d: d.update(roi=[1, 2, 3])), "$.roi"),
        (_json_frame(lambda d: d.update(flags=["smudge"])), "$.flags[0]"),
        (_json_frame(lambda d: d.pop("model_sha256")), "model_sha256"),
        (_json_frame(lambda d: d.update(schema=2)), "schema version 2"),
        (_json_frame(lambda d: d.update(type="alarm")), "unknown message type 'alarm'"),
        (b"alarm/probe0 {}", "unknown message type 'alarm'"),
        (b"score/probe0" + b"x" * 100, "no topic"),
        (b"score/probe0 \x00\x01", "0x00"),
        (b"score/probe0 ", "empty payload"),
        (b"status/probe0 " + encode_frame(make_score()).split(b" ", 1)[1], "disagrees"),
        (b"score/probe9 " + encode_frame(make_score()).split(b" ", 1)[1], "disagrees"),
        (b"score/probe0 " + b"{" + b" " * (2 << 20), "exceeds the limit"),
        (b"sc\xffre/p0 {}", "ASCII"),
    ],
)
def test_bad_frames_name_the_problem(frame, words):
    with pytest.raises(MessageError) as ei:
        decode_frame(frame)
    assert words in str(ei.value)


def test_size_limit_is_configurable():
    frame = encode_frame(make_score())
    with pytest.raises(MessageError, match=f"{len(frame)} bytes exceeds the limit of 100 bytes"):
        decode_frame(frame, max_bytes=100)
    assert decode_frame(frame, max_bytes=len(frame)) == make_score()


def test_topics_and_stream_names():
    assert topic("score") == b"score/"
    assert topic("status", "probe0") == b"status/probe0 "
    for bad in ["", "a b", "a/b", "-x", "x" * 65, "é"]:
        with pytest.raises(MessageError, match="invalid stream name"):
            check_stream_name(bad)
    with pytest.raises(MessageError, match="unknown message type"):
        topic("alarm")
    with pytest.raises(MessageError, match="unknown encoding"):
        encode_frame(make_score(), "pickle")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_message_error(data):
    for fn in (decode_frame, decode_payload):
        try:
            fn(data)
        except MessageError:
            pass
    try:
        decode_frame(b"score/probe0 " + data)
    except MessageError:
        pass


_VALID = [encode_frame(make_score(), "json"), encode_frame(make_score(), "msgpack"), encode_frame(make_status(), "msgpack")]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_VALID), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_valid_frames_only_raise_message_error(frame, edits):
    buf = bytearray(frame)
    for pos, val in edits:
        buf[pos % len(buf)] = val
    try:
        msg = decode_frame(bytes(buf))
    except MessageError:
        return
    assert isinstance(msg, (Score, Status))
