"""Wire messages: typed, strict, versioned. Pure msgspec + stdlib (no ZeroMQ here).

Data flow::

    pipeline fields ──► Score / Status / Preview (msgspec Struct) ──► encode_frame(msg, 'json'|'msgpack')
        ──► ONE ZeroMQ frame:  b"<type>/<stream> " + payload
        ──► decode_frame(frame, max_bytes) ──► Score | Status | Preview   (or MessageError naming the problem)

The frame starts with a topic, ``score/<stream>``, ``status/<stream>`` or ``preview/<stream>``
(streamcad.preview: a JPEG of the frame with its overlays as data), then ONE space (0x20),
then the payload. Subscribers filter by prefix (``b"score/"`` = all score streams,
``b"score/probe0 "`` = exactly stream probe0, the trailing space stops ``probe0`` matching
``probe01``). The payload is a JSON object (first byte ``{``) or a msgpack map (first byte
0x80-0x8f, 0xde or 0xdf); decoders tell the two apart by that first byte. Both carry the same
fields, including ``"type"``. Decoding never unpickles and never evaluates anything.

Schema evolution (docs/PROTOCOL.md, "Versions"): within schema version 1 a publisher may ADD
optional fields (to any object); readers ignore fields they do not know, so decoding here drops
them and the JSON Schemas allow them (no ``additionalProperties: false``). Removing or renaming
a field, changing its type, unit or meaning, making it required, or a new value of an enum
(``type``, ``state``, ``flags``, source ``state``) is a new ``schema`` version, which readers of
version 1 refuse. Building a message is still strict: ScoreStream refuses a field the Structs do
not have (``_unknown_keys``), so a typo in the pipeline never goes out silently dropped.

The committed JSON Schema files under ``streamcad/schemas/`` are generated from these Structs
(``python -m streamcad.messages --write-schemas``); a test keeps them equal. See docs/PROTOCOL.md.
"""

from __future__ import annotations

import functools
import json
import math
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from streamcad.errors import MessageError

__all__ = [
    "SCHEMA_VERSION",
    "MESSAGE_TYPES",
    "ENCODINGS",
    "STAGES",
    "FLAGS",
    "SCORE_STATES",
    "SOURCE_STATES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Probs",
    "Lesion",
    "Score",
    "SourceStatus",
    "Counters",
    "Status",
    "SaliencyMap",
    "Preview",
    "Message",
    "ScoreStream",
    "OWNED_FIELDS",
    "topic",
    "check_stream_name",
    "encode",
    "encode_frame",
    "kind_of",
    "decode_payload",
    "decode_frame",
    "json_schemas",
    "write_schemas",
    "SCHEMA_DIR",
]

SCHEMA_VERSION = 1
MESSAGE_TYPES = ("score", "status", "preview")
ENCODINGS = ("json", "msgpack")
# Latency stages in Score.latency_ms, in pipeline order ('queue': waits between the stages);
# 'total' is capture -> publish. The one definition (pipeline, benchmarks and clients import it).
STAGES = ("grab", "preprocess", "queue", "infer", "smooth", "publish", "total")
FLAGS = ("blank", "frozen", "no_signal", "not_ultrasound", "doppler", "out_of_domain")
SCORE_STATES = ("suspicious", "clear", "no_lesion", "flagged")
SOURCE_STATES = ("connecting", "live", "stale", "reconnecting", "error", "ended")
# 1 MiB: a score is ~0.5 KB, a preview (480 px JPEG, base64 in JSON) ~20-60 KB; anything near
# this is a bug or an attack.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"

_STREAM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_SEP = b" "

Unit = Annotated[float, Meta(ge=0.0, le=1.0)]
NonNegInt = Annotated[int, Meta(ge=0)]
NonNegFloat = Annotated[float, Meta(ge=0.0)]
StreamName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
# the Literal types below are built from these tuples: each name is written down once
Flag = Literal[FLAGS]


class Probs(Struct, kw_only=True):
    """Class probabilities of one frame (softmax of the temperature-scaled logits), each in [0, 1]."""

    normal: Unit
    benign: Unit
    malignant: Unit


class Lesion(Struct, kw_only=True):
    """The lesion the model outlines in this frame (models with a lesion head; streamcad.lesion)."""

    box: tuple[NonNegInt, NonNegInt, NonNegInt, NonNegInt]  # x, y, w, h in frame pixels
    confidence: Unit  # highest p(lesion) inside the box


class Score(Struct, tag="score", tag_field="type", kw_only=True):
    """One analysed frame. Times are CLOCK_MONOTONIC nanoseconds of the publishing host."""

    schema: Literal[1]
    stream: StreamName
    publisher: str  # random hex id, new at every publisher start
    seq: NonNegInt  # +1 per message (score or status) on this stream from this publisher, from 0
    frame_index: NonNegInt  # source frame index
    t_capture_ns: NonNegInt  # monotonic ns at grab
    t_publish_ns: NonNegInt  # monotonic ns at send
    # wall clock at send: ns since the Unix epoch, UTC (time.time_ns()): lines scores up with
    # DICOM, recordings and other devices. Not for latency (NTP may step it); None: an older publisher
    t_utc_ns: NonNegInt | None = None
    latency_ms: dict[str, float]  # per stage (STAGES); 'total' = capture -> publish
    probs: Probs | None  # None when the frame is flagged (not scored)
    malignancy: Unit | None  # smoothed p(malignant) over the lesion frames; None when there is no lesion track
    state: Literal[SCORE_STATES]
    flags: list[Flag]  # quality flags; empty = good frame
    roi: tuple[NonNegInt, NonNegInt, NonNegInt, NonNegInt] | None  # sector box x, y, w, h (px)
    model_sha256: str
    # optional extras
    model: str | None = None  # model name
    saliency_peak: tuple[int, int] | None = None  # (x, y) of the saliency maximum, frame pixels
    lesion: Lesion | None = None  # lesion box + confidence; None: no lesion seen, flagged, or a model without a lesion head
    label: str | None = None  # ground truth class (sweep/demo sources only)
    # out-of-domain gate score (streamcad.gate_ood; > the manifest's threshold = 'out_of_domain');
    # None: no gate, or the frame was not scored (another flag)
    ood_score: NonNegFloat | None = None


class SourceStatus(Struct, kw_only=True):
    """What the frame source reports. Geometry is None until the first frame."""

    uri: str
    state: Literal[SOURCE_STATES]
    width: NonNegInt | None = None
    height: NonNegInt | None = None
    fps: NonNegFloat | None = None  # nominal fps of the source
    fourcc: str | None = None
    backend: str | None = None  # capture backend (e.g. FFMPEG, V4L2, sweep)


class Counters(Struct, kw_only=True):
    """Running totals since publisher start."""

    frames_in: NonNegInt = 0  # frames grabbed from the source
    frames_out: NonNegInt = 0  # scores produced
    overwritten: NonNegInt = 0  # frames replaced by a newer one before processing
    rejected: NonNegInt = 0  # frames the source rejected (corrupt, wrong size)
    flagged: NonNegInt = 0  # frames with quality flags
    dropped_publish: NonNegInt = 0  # messages the publisher dropped (subscriber HWM full)
    reconnects: NonNegInt = 0


class Status(Struct, tag="status", tag_field="type", kw_only=True):
    """Heartbeat: at least once per second per stream, and at once when a subscriber joins."""

    schema: Literal[1]
    stream: StreamName
    publisher: str
    seq: NonNegInt  # shares the counter with Score
    t_publish_ns: NonNegInt
    t_utc_ns: NonNegInt | None = None  # wall clock at send, ns since the Unix epoch (UTC), as in Score
    source: SourceStatus | None = None
    counters: Counters = msgspec.field(default_factory=Counters)
    last_seq: int = -1  # seq of the last score sent on this stream (-1: none yet)
    fps_in: NonNegFloat = 0.0
    fps_out: NonNegFloat = 0.0
    backend: str | None = None  # inference backend name
    model: str | None = None
    model_sha256: str | None = None
    uptime_s: NonNegFloat = 0.0  # seconds since the publisher started
    # The operating point of the 'suspicious' state (streamcad.smoothing.OperatingPoint): entered
    # at smoothed p(malignant) >= on_threshold, left below off_threshold. operating_threshold is
    # the model's validated one (manifest; None: the model has none); threshold_source says
    # whether on_threshold is that value ('manifest') or a config override ('config').
    operating_threshold: Unit | None = None
    on_threshold: Unit | None = None
    off_threshold: Unit | None = None
    threshold_source: Literal["manifest", "config"] | None = None
    # the out-of-domain gate: 'active' (the manifest carries one; frames outside the training
    # domain are flagged 'out_of_domain') or 'absent' (the model has none: no such flag is raised)
    ood_gate: Literal["active", "absent"] | None = None


class SaliencyMap(Struct, kw_only=True):
    """The model's saliency map as data: ``width`` x ``height`` cells, one byte each, row-major.

    ``box`` (x, y, w, h, frame pixels, floats) is where the map's grid lies on the frame: the whole
    model input (the ROI letterboxed to a square) mapped back, so it may reach past the ROI into the
    letterbox padding (a UI clips the overlay to ``Preview.roi``). ``kind`` says what a byte means:
    'attention': value / 255 = the max-normalised attention (255 = the frame's peak);
    'lesion_probability': value / 255 = p(lesion) of that cell (absolute)."""

    width: Annotated[int, Meta(ge=1, le=256)]
    height: Annotated[int, Meta(ge=1, le=256)]
    kind: Literal["attention", "lesion_probability"]
    box: tuple[float, float, float, float]
    data: bytes  # width * height bytes (JSON: base64 text)

    def __post_init__(self) -> None:
        if len(self.data) != self.width * self.height:
            raise ValueError(f"saliency data has {len(self.data)} bytes; expected width * height = "
                             f"{self.width * self.height}")


class Preview(Struct, tag="preview", tag_field="type", kw_only=True):
    """A downscaled JPEG of a scored frame with its overlays as data (streamcad.preview), for viewers.

    Its own topic (``preview/<stream>``) and its own ``seq`` count (previews are lossy by design:
    they are skipped first under load, so a score/status subscriber never sees them as gaps).
    Coordinates (``roi``, ``saliency.box``, ``lesion.box``) are source-frame pixels, like a Score's;
    the JPEG is the whole frame scaled by ``width / frame_width``. ``frame_index`` joins it to the
    Score of the same frame."""

    schema: Literal[1]
    stream: StreamName
    publisher: str  # the same id as the stream's scores and statuses
    seq: NonNegInt  # +1 per preview from this publisher, from 0 (a count of its own)
    frame_index: NonNegInt
    t_capture_ns: NonNegInt
    t_publish_ns: NonNegInt
    t_utc_ns: NonNegInt | None = None  # wall clock at send, ns since the Unix epoch (UTC), as in Score
    format: Literal["jpeg"]
    image: bytes  # the encoded image (JSON: base64 text)
    width: Annotated[int, Meta(ge=1)]  # of the image
    height: Annotated[int, Meta(ge=1)]
    frame_width: Annotated[int, Meta(ge=1)]  # of the source frame (the coordinates below)
    frame_height: Annotated[int, Meta(ge=1)]
    roi: tuple[NonNegInt, NonNegInt, NonNegInt, NonNegInt] | None  # the scored sector box
    saliency: SaliencyMap | None = None  # None: the frame was not scored (flagged)
    lesion: Lesion | None = None  # as in the Score of this frame
    skipped: NonNegInt = 0  # frames due a preview that were skipped (encoder busy) since start


Message = Score | Status | Preview

_json_enc = msgspec.json.Encoder()
_msgpack_enc = msgspec.msgpack.Encoder()
_json_dec = msgspec.json.Decoder(Message)
_msgpack_dec = msgspec.msgpack.Decoder(Message)


class _Head(Struct):
    """Just enough to explain a rejected payload (unknown fields ignored)."""

    type: object = None
    schema: object = None


_json_head = msgspec.json.Decoder(_Head)
_msgpack_head = msgspec.msgpack.Decoder(_Head)


def check_stream_name(stream: str) -> str:
    """Stream ids go into topics: 1-64 chars of [A-Za-z0-9_.:-], starting alphanumeric."""
    if not isinstance(stream, str) or not _STREAM_RE.fullmatch(stream):
        raise MessageError(
            f"invalid stream name {stream!r}: expected 1-64 characters of [A-Za-z0-9_.:-] "
            "starting with a letter or digit"
        )
    return stream


def topic(kind: str, stream: str | None = None) -> bytes:
    """Subscription prefix: topic('score') -> b'score/', topic('score', 'probe0') -> b'score/probe0 '."""
    if kind not in MESSAGE_TYPES:
        raise MessageError(f"unknown message type {kind!r}: expected one of {MESSAGE_TYPES}")
    if stream is None:
        return f"{kind}/".encode()
    return f"{kind}/{check_stream_name(stream)}".encode() + _SEP


def encode(msg: Message, encoding: str = "json") -> bytes:
    """Payload only (no topic)."""
    if encoding == "json":
        return _json_enc.encode(msg)
    if encoding == "msgpack":
        return _msgpack_enc.encode(msg)
    raise MessageError(f"unknown encoding {encoding!r}: expected one of {ENCODINGS}")


def encode_frame(msg: Message, encoding: str = "json") -> bytes:
    """The whole ZeroMQ frame: b'<type>/<stream> ' + payload."""
    if not isinstance(msg, (Score, Status, Preview)):
        raise MessageError(f"cannot encode {type(msg).__name__}: expected Score, Status or Preview")
    return topic(kind_of(msg), msg.stream) + encode(msg, encoding)


def kind_of(msg: Message) -> str:
    """'score', 'status' or 'preview': the message's type, as in its topic and its "type" field."""
    return type(msg).__struct_config__.tag


def _explain(payload: bytes, is_json: bool, exc: Exception) -> str:
    """Turn a msgspec error into our words; prefer 'unknown type/schema' when that is the cause."""
    try:
        head = (_json_head if is_json else _msgpack_head).decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        head = None
    if head is not None:
        if head.type not in MESSAGE_TYPES:
            return f"unknown message type {head.type!r} at $.type (expected one of {MESSAGE_TYPES})"
        if head.schema != SCHEMA_VERSION:
            return f"unsupported schema version {head.schema!r} at $.schema (this decoder reads {SCHEMA_VERSION})"
    return str(exc)


def decode_payload(payload: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """Payload (JSON object or msgpack map) -> Score | Status | Preview. Raises MessageError."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise MessageError(f"payload must be bytes, got {type(payload).__name__}")
    n = len(payload)
    if n > max_bytes:
        raise MessageError(f"message of {n} bytes exceeds the limit of {max_bytes} bytes")
    if n == 0:
        raise MessageError("empty payload: expected a JSON object or a msgpack map")
    first = payload[0]
    is_json = first == 0x7B  # '{'
    if not is_json and not (0x80 <= first <= 0x8F or first in (0xDE, 0xDF)):
        raise MessageError(
            f"payload starts with byte 0x{first:02x}: expected a JSON object ('{{') or a msgpack map"
        )
    try:
        return (_json_dec if is_json else _msgpack_dec).decode(payload)
    except RecursionError:  # msgspec bounds nesting by the interpreter's recursion limit
        raise MessageError(
            f"{'JSON' if is_json else 'msgpack'} payload nested too deeply to be a score or status message"
        ) from None
    except msgspec.ValidationError as exc:
        raise MessageError(f"invalid {'JSON' if is_json else 'msgpack'} message: {_explain(payload, is_json, exc)}") from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec lets bad UTF-8 through
        raise MessageError(f"malformed {'JSON' if is_json else 'msgpack'} payload: {exc}") from exc


def decode_frame(frame: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """One ZeroMQ frame -> Score | Status | Preview, checking that the topic agrees with the payload."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise MessageError(f"frame must be bytes, got {type(frame).__name__}")
    frame = bytes(frame)
    if len(frame) > max_bytes:
        raise MessageError(f"message of {len(frame)} bytes exceeds the limit of {max_bytes} bytes")
    sep = frame.find(_SEP, 0, 80)
    if sep < 0:
        raise MessageError("no topic: expected b'<type>/<stream> ' before the payload")
    try:
        kind, _, stream = frame[:sep].decode("ascii").partition("/")
    except UnicodeDecodeError as exc:
        raise MessageError("topic is not ASCII: expected b'<type>/<stream> '") from exc
    if kind not in MESSAGE_TYPES:
        raise MessageError(f"unknown message type {kind!r} in topic (expected one of {MESSAGE_TYPES})")
    msg = decode_payload(frame[sep + 1 :], max_bytes)
    want = kind_of(msg)
    if want != kind or msg.stream != stream:
        raise MessageError(
            f"topic {kind}/{stream} disagrees with the payload ($.type={want!r}, $.stream={msg.stream!r})"
        )
    return msg


# ----------------------------------------------------------------------------- the score stream
def _numpy_to_builtin(obj: object) -> object:
    if hasattr(obj, "dtype") and hasattr(obj, "tolist"):  # numpy scalar or array
        return obj.tolist()
    raise TypeError(f"unsupported type {type(obj).__name__}")


# set by the ScoreStream, never by the caller
OWNED_FIELDS = frozenset({"schema", "stream", "publisher", "seq", "t_publish_ns", "t_utc_ns", "type"})


class ScoreStream:
    """The messages of one stream, built and validated here, independent of any transport.

    It owns what every output must agree on: the stream name, the publisher id (random, new at
    every start), ONE ``seq`` counter shared by scores and statuses (consumed by every message
    built, so a message a sink then drops shows as a gap), the stamps (``t_publish_ns``,
    ``latency_ms['total']`` / ``['publish']``), strict validation (msgspec; MessageError naming
    the field), and the status heartbeat timer. Sinks (streamcad.sinks) receive the finished
    messages and only deliver them: every sink of a pipeline sees the same messages with the
    same seq, so a recording matches what the ZeroMQ subscribers got.

    Not thread-safe: one thread (the pipeline's publish thread) builds every message.

    >>> s = ScoreStream("probe0")
    >>> msg = s.score(frame_index=0, t_capture_ns=1, latency_ms={}, probs=None, malignancy=None,
    ...               state="flagged", flags=["blank"], roi=None, model_sha256="ab")
    >>> (msg.seq, s.seq, s.last_score_seq)
    (0, 1, 0)
    """

    def __init__(self, stream: str = "probe0", *, heartbeat_s: float = 1.0, publisher_id: str | None = None) -> None:
        check_stream_name(stream)
        if not (isinstance(heartbeat_s, (int, float)) and 0 < heartbeat_s < math.inf):
            raise MessageError(f"heartbeat_s: expected a finite number of seconds > 0, got {heartbeat_s!r}")
        self.stream = stream
        self.heartbeat_s = float(heartbeat_s)
        self.publisher_id = publisher_id if publisher_id is not None else secrets.token_hex(8)
        self.last_score_seq = -1  # seq of the last score built (-1: none yet)
        self._seq = 0
        self._t_start = time.monotonic()
        self._t_last_status: float | None = None
        self._status_fields: dict = {}

    @property
    def seq(self) -> int:
        """The seq the next message will carry."""
        return self._seq

    @staticmethod
    def check_owned(fields: dict) -> None:
        owned = OWNED_FIELDS.intersection(fields)
        if owned:
            raise MessageError(f"fields {sorted(owned)} are set by the publisher (its ScoreStream), not the caller")

    def score(self, *, t_ready_ns: int | None = None, t_publish_ns: int | None = None, **fields) -> Score:
        """Build the next Score. `fields` are the Score fields but schema/stream/publisher/seq.
        t_publish_ns defaults to now (monotonic ns); latency_ms['total'] is filled from
        t_capture_ns when absent, latency_ms['publish'] from t_ready_ns. Raises MessageError."""
        self.check_owned(fields)
        now = time.monotonic_ns() if t_publish_ns is None else t_publish_ns
        latency = dict(fields.pop("latency_ms", None) or {})
        t_cap = fields.get("t_capture_ns")
        if "total" not in latency and isinstance(t_cap, int):
            latency["total"] = (now - t_cap) / 1e6
        if t_ready_ns is not None and "publish" not in latency:
            latency["publish"] = (now - int(t_ready_ns)) / 1e6
        fields["latency_ms"] = latency
        msg = self._build(Score, fields, now)
        bad = [k for k, v in msg.latency_ms.items() if not math.isfinite(v)]
        if bad:
            raise MessageError(f"non-finite latency at $.latency_ms.{bad[0]}: expected a finite number of ms")
        self._seq += 1
        self.last_score_seq = msg.seq
        return msg

    def set_status(self, **fields) -> None:
        """Remember Status fields (source, counters, fps_in, ...) for the next status."""
        self.check_owned(fields)
        fields.pop("last_seq", None)  # the stream knows which score went out last
        self._status_fields.update(fields)

    def status(self, *, dropped: int | None = None, **fields) -> Status:
        """Build the next Status from the remembered fields merged with `fields`; restarts the
        heartbeat timer. `dropped` (messages the sinks dropped) goes into counters.dropped_publish."""
        self.set_status(**fields)
        now = time.monotonic()
        merged = dict(self._status_fields)
        try:
            counters = msgspec.to_builtins(merged.get("counters") or {}, enc_hook=_numpy_to_builtin)
        except TypeError as exc:
            raise MessageError(f"invalid status counters: {exc}") from exc
        if not isinstance(counters, dict):
            raise MessageError(f"invalid status counters: expected Counters or a dict, got {type(counters).__name__}")
        if dropped is not None:
            counters["dropped_publish"] = int(dropped)
        merged["counters"] = counters
        merged["last_seq"] = self.last_score_seq
        merged.setdefault("uptime_s", now - self._t_start)
        msg = self._build(Status, merged, time.monotonic_ns())
        self._seq += 1
        self._t_last_status = now
        return msg

    def status_due(self, lead_s: float = 0.0) -> bool:
        """True when no status was built yet or heartbeat_s (less `lead_s`) has passed since the last."""
        last = self._t_last_status
        return last is None or time.monotonic() - last >= self.heartbeat_s - lead_s

    def _build(self, cls: type, fields: dict, now_ns: int):
        if not isinstance(now_ns, int) or isinstance(now_ns, bool):
            raise MessageError(f"t_publish_ns must be an int of monotonic ns, got {type(now_ns).__name__}")
        full = dict(fields, schema=SCHEMA_VERSION, stream=self.stream, publisher=self.publisher_id,
                    seq=self._seq, t_publish_ns=now_ns, t_utc_ns=time.time_ns())
        try:
            data = msgspec.to_builtins(full, enc_hook=_numpy_to_builtin)
            unknown = _unknown_keys(data, cls)
            if unknown:  # readers ignore unknown fields; the publisher never sends one
                raise MessageError(f"invalid {cls.__name__.lower()} fields: unknown field {unknown[0]} "
                                   f"(fields of {cls.__name__}: {', '.join(cls.__struct_fields__)})")
            return msgspec.convert(data, cls)
        except (msgspec.ValidationError, TypeError) as exc:
            raise MessageError(f"invalid {cls.__name__.lower()} fields: {exc}") from exc


def _struct_types(tp: object) -> list[type]:
    """The Struct classes inside a field type (Optional / Union / Annotated unwrapped)."""
    import typing

    if isinstance(tp, type) and issubclass(tp, Struct):
        return [tp]
    return [c for a in typing.get_args(tp) for c in _struct_types(a)]


@functools.cache
def _field_map(cls: type) -> tuple[frozenset[str], str | None, dict[str, tuple[type, ...]]]:
    """(field names, tag field, field -> the Struct types inside its type) of Struct `cls`, once per
    class: msgspec.structs.fields resolves the type hints on every call (~0.3 ms for a Score)."""
    fields = {f.name: f.type for f in msgspec.structs.fields(cls)}
    nested = {k: tuple(_struct_types(tp)) for k, tp in fields.items()}
    return frozenset(fields), cls.__struct_config__.tag_field, {k: v for k, v in nested.items() if v}


def _unknown_keys(data: object, cls: type, path: str = "$") -> list[str]:
    """Paths of keys in `data` (plain builtins) that Struct `cls` has no field for, recursively."""
    if not isinstance(data, dict):
        return []
    names, tag_field, nested = _field_map(cls)
    out = [f"{path}.{k}" for k in data if k not in names and k != tag_field]
    for k, subs in nested.items():
        if k in data:
            for sub in subs:
                out += _unknown_keys(data[k], sub, f"{path}.{k}")
    return out


def json_schemas() -> dict[str, dict]:
    """File name -> JSON Schema (Draft 2020-12) generated from the Structs."""
    return {
        "score.schema.json": msgspec.json.schema(Score),
        "status.schema.json": msgspec.json.schema(Status),
        "preview.schema.json": msgspec.json.schema(Preview),
        "message.schema.json": msgspec.json.schema(Message),
    }


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, schema in json_schemas().items():
        path = directory / name
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        out.append(path)
    return out


if __name__ == "__main__":  # python -m streamcad.messages --write-schemas
    if sys.argv[1:] != ["--write-schemas"]:
        sys.exit("usage: python -m streamcad.messages --write-schemas")
    for p in write_schemas():
        print(p)
