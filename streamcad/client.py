"""ZeroMQ subscriber for UIs and tools: typed messages, gap and staleness tracking.

Data flow::

    Publisher(s) / Proxy backend ──► SUB socket (prefix filters b"score/...", b"status/...";
        MAXMSGSIZE; CONFLATE=1 if latest_only) ──► decode_frame (bounded, strict)
        ──► per (stream, publisher): seq gap check ──► per stream: last-seen time (staleness)
        ──► recv() / iteration returns Score | Status

Gaps: each publisher numbers its messages 0, 1, 2, ... per stream (scores and statuses share the
counter; previews, kind 'preview', count on their own and are not gap-tracked: they are lossy by
design). A jump from n to m > n+1 records a Gap of m-n-1 missing messages. A message from a new
publisher id on a stream (publisher restarted) starts a fresh sequence: no gap is recorded. The
first message seen from a publisher starts its sequence too (joining late is not a gap); its seq
is kept in ``joined_at`` (a first seq above 0 = that many messages went out before this subscriber
was there: start-up loss is visible, not silent).
A jump larger than any publisher could have sent in the time since the previous message
(``max_rate`` messages/s, at least ``_MIN_JUMP``) is not a gap but a corrupt or spoofed seq: it is
counted in ``seq_anomalies`` and the sequence restarts there (a spoofed seq 2**62 cannot make
``gap_count`` 4.6e18). ``gap_events`` keeps the last 1,000 gaps.
With latest_only=True (ZMQ_CONFLATE) ZeroMQ keeps only the newest message, so gaps are expected.
libzmq conflates the outgoing subscriptions too, so latest_only takes ONE topic: one kind and at
most one stream, or no filter at all (every message of every stream); other combinations raise
TransportError. Use one latest_only Subscriber per topic when you need several.

Staleness: ``is_stale(stream)`` is True when no message of that stream was *received through
recv()/iteration* for more than 3 * heartbeat_s (publishers send a status at least every
heartbeat_s); a stream never seen counts from the subscriber's creation.

Malformed messages (bad topic, bad payload, too deeply nested, oversized, unknown type or schema,
more than one frame): with strict=True (default) recv() and iteration raise MessageError; with
strict=False they are counted in ``rejected`` (by reason in ``rejected_by``), logged (rate-limited),
and skipped. Frames larger than max_message_bytes are refused
by ZeroMQ itself (MAXMSGSIZE) before they are buffered; libzmq treats that as a protocol error and
drops the connection WITHOUT reconnecting. So when nothing at all arrives for 3 * heartbeat_s, the
subscriber re-dials its endpoints (``redials`` counts this); a link cut this way comes back then.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import zmq

from streamcad.errors import MessageError, TransportError
from streamcad.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MESSAGE_TYPES,
    Message,
    Preview,
    Status,
    decode_frame,
    kind_of,
    topic,
)
from streamcad.ratelimit import LogLimiter
from streamcad.security import ClientCurve, apply_client

__all__ = ["Subscriber", "Gap"]

log = logging.getLogger(__name__)

_MIN_JUMP = 100_000  # a seq jump below this is always a plausible gap (a long outage at any rate)


@dataclass(frozen=True, slots=True)
class Gap:
    """`missing` messages between seq `expected` and `got` (exclusive) were not received."""

    stream: str
    publisher: str
    expected: int
    got: int

    @property
    def missing(self) -> int:
        return self.got - self.expected


class Subscriber:
    """Subscribe to score/status messages of some or all streams. One thread owns it.

    >>> with Subscriber("tcp://127.0.0.1:5555", streams=["probe0"]) as sub:   # doctest: +SKIP
    ...     msg = sub.recv(timeout=2.0)   # Score | Status | None
    """

    def __init__(
        self,
        endpoint: str | Sequence[str] = "tcp://127.0.0.1:5555",
        *,
        streams: Sequence[str] | None = None,
        kinds: Sequence[str] = ("score", "status"),
        latest_only: bool = False,
        curve: ClientCurve | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        heartbeat_s: float = 1.0,
        strict: bool = True,
        rcvhwm: int = 1000,
        max_rate: float = 10_000.0,
    ) -> None:
        endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        if not endpoints:
            raise TransportError("no endpoint to connect to")
        kinds = tuple(kinds)
        bad = [k for k in kinds if k not in MESSAGE_TYPES]
        if bad or not kinds:
            raise TransportError(f"unknown message kinds {bad or kinds}: expected some of {MESSAGE_TYPES}")
        if not (0 < heartbeat_s < float("inf")) or max_message_bytes <= 0 or not (0 < max_rate < float("inf")):
            raise TransportError("heartbeat_s, max_message_bytes and max_rate must be finite and > 0")
        if isinstance(streams, str):
            streams = [streams]
        try:
            prefixes = [topic(k, s) for k in kinds for s in (streams or [None])]
        except MessageError as exc:
            raise TransportError(str(exc)) from exc
        # scores and statuses share one seq counter: a score-only subscriber still takes the
        # statuses (one a second) to count gaps right, and recv() does not return them
        self._status_for_seq = "score" in kinds and "status" not in kinds and not latest_only
        if self._status_for_seq:
            prefixes += [topic("status", s) for s in (streams or [None])]
        if latest_only and len(prefixes) > 1:
            # libzmq conflates the outgoing subscriptions too: only the last one would survive.
            if streams is None and set(kinds) >= {"score", "status"}:
                prefixes = [b""]  # everything; recv() drops the kinds not asked for (previews)
            else:
                raise TransportError(
                    f"latest_only supports one topic, got {len(prefixes)} ({prefixes}): pass one kind "
                    "and at most one stream (or neither), or use one Subscriber per topic"
                )
        self.endpoints = endpoints
        self.streams = None if streams is None else list(streams)
        self.kinds = kinds
        self.latest_only = latest_only
        self.max_message_bytes = int(max_message_bytes)
        self.heartbeat_s = float(heartbeat_s)
        self.strict = strict
        self.received = 0
        self.rejected = 0
        self.rejected_by: collections.Counter[str] = collections.Counter()  # reason -> count
        self.gaps: dict[tuple[str, str], int] = {}  # (stream, publisher) -> missing messages
        self.gap_events: collections.deque[Gap] = collections.deque(maxlen=1000)
        self.joined_at: dict[tuple[str, str], int] = {}  # (stream, publisher) -> first seq seen
        self.seq_anomalies = 0  # implausible seq jumps (corrupt or spoofed), not counted as gaps
        self.max_rate = float(max_rate)
        self._t_seq: dict[tuple[str, str], float] = {}
        self._limiter = LogLimiter(10.0)
        self.publisher_changes = 0
        self._next: dict[tuple[str, str], int] = {}
        self._publisher: dict[str, str] = {}
        self._last_seen: dict[str, float] = {}
        self._status: dict[str, Status] = {}
        self._t_open = time.monotonic()
        self._t_last_any = self._t_open
        self._t_redial = self._t_open
        self.redials = 0
        self._closed = False

        self._ctx = zmq.Context()
        try:
            sock = self._sock = self._ctx.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, int(rcvhwm))
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)  # a restarted publisher is found quickly
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            hb_ms = max(100, int(self.heartbeat_s * 1000))
            sock.setsockopt(zmq.HEARTBEAT_IVL, hb_ms)  # ZMTP pings detect a dead peer
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * hb_ms)
            if latest_only:
                sock.setsockopt(zmq.CONFLATE, 1)  # must precede connect
            if curve is not None:
                apply_client(sock, curve)
            for p in prefixes:
                sock.setsockopt(zmq.SUBSCRIBE, p)
            for ep in endpoints:
                try:
                    sock.connect(ep)
                except zmq.ZMQError as exc:
                    raise TransportError(f"cannot connect to {ep}: {exc}") from exc
        except BaseException:
            self._ctx.destroy(linger=0)
            raise
        log.info("subscriber connected to %s, topics %s", ", ".join(endpoints), prefixes)

    # --- receiving ----------------------------------------------------------------------------
    def recv(self, timeout: float = 1.0) -> Message | None:
        """The next message, or None if none arrives within `timeout` seconds."""
        if self._closed:
            raise TransportError("subscriber is closed")
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            now = time.monotonic()
            self._maybe_redial(now)
            left = deadline - now
            # wake at least every heartbeat so a silent link is re-dialled during long waits
            if not self._sock.poll(max(0, int(min(left, self.heartbeat_s) * 1000)), zmq.POLLIN):
                if time.monotonic() >= deadline:
                    return None
                continue
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                continue
            except zmq.ZMQError as exc:
                raise TransportError(f"receive failed: {exc}") from exc
            try:
                if len(parts) != 1:
                    raise MessageError(f"message of {len(parts)} frames: expected one frame (topic + payload)")
                msg = decode_frame(parts[0], self.max_message_bytes)
            except MessageError as exc:
                self.rejected += 1
                self.rejected_by[_reason(str(exc))] += 1
                if self.strict:
                    raise
                self._limiter.warning(log, "rejected", "skipping malformed message (%d rejected so far): %s",
                                      self.rejected, exc)
                if time.monotonic() >= deadline:
                    return None
                continue
            self._track(msg)  # a status a score-only subscriber took for its seq counts too
            if kind_of(msg) not in self.kinds:  # latest_only's b"" filter lets every kind through
                if time.monotonic() >= deadline:
                    return None
                continue
            return msg

    def __iter__(self) -> Iterator[Message]:
        """Yield messages until close(); waits indefinitely between messages."""
        while not self._closed:
            msg = self.recv(self.heartbeat_s)
            if msg is not None:
                yield msg

    def _maybe_redial(self, now: float) -> None:
        quiet = 3 * self.heartbeat_s
        if now - self._t_last_any <= quiet or now - self._t_redial <= quiet:
            return
        self._t_redial = now
        self.redials += 1
        log.info("nothing received for %.1f s: re-dialling %s", now - self._t_last_any, ", ".join(self.endpoints))
        for ep in self.endpoints:
            try:
                self._sock.disconnect(ep)
            except zmq.ZMQError:
                pass  # already gone (e.g. cut by MAXMSGSIZE): connect below restores it
            self._sock.connect(ep)

    def _track(self, msg: Message) -> None:
        self.received += 1
        stream, pub = msg.stream, msg.publisher
        self._t_last_any = self._last_seen[stream] = time.monotonic()
        if isinstance(msg, Status):
            self._status[stream] = msg
        if isinstance(msg, Preview):
            return  # previews are numbered on their own and skipped by design: no gap tracking
        old = self._publisher.get(stream)
        if old != pub:
            if old is not None:
                self.publisher_changes += 1
                log.info("stream %s: new publisher %s (was %s): sequence restarts", stream, pub, old)
                self._next.pop((stream, old), None)
                self._t_seq.pop((stream, old), None)
            self._publisher[stream] = pub
        key = (stream, pub)
        expected = self._next.get(key)
        now = self._t_last_any
        if expected is None:
            self.joined_at.setdefault(key, msg.seq)
            if msg.seq > 0:
                log.info("stream %s: joined publisher %s at seq %d (%d earlier messages were sent before "
                         "this subscriber was there)", stream, pub, msg.seq, msg.seq)
        elif msg.seq > expected and msg.seq - expected > max(_MIN_JUMP, (now - self._t_seq[key]) * self.max_rate):
            self.seq_anomalies += 1
            self._limiter.warning(log, "seq-jump", "stream %s: seq jumped from %d to %d (publisher %s): more than "
                                  "it could have sent; not counted as a gap (%d such jumps)",
                                  stream, expected - 1, msg.seq, pub, self.seq_anomalies)
        elif msg.seq != expected:
            if msg.seq > expected:
                gap = Gap(stream, pub, expected, msg.seq)
                self.gap_events.append(gap)
                self.gaps[key] = self.gaps.get(key, 0) + gap.missing
                log.debug("stream %s: %d messages missing before seq %d", stream, gap.missing, msg.seq)
            else:
                self._limiter.warning(log, "seq-back", "stream %s: seq went back from %d to %d (same publisher %s)",
                                      stream, expected - 1, msg.seq, pub)
        self._next[key] = msg.seq + 1
        self._t_seq[key] = now

    # --- state --------------------------------------------------------------------------------
    @property
    def missed_at_join(self) -> int:
        """Messages publishers had sent before this subscriber's first message from them (the
        first seq seen, summed): start-up loss, not a gap."""
        return sum(self.joined_at.values())

    @property
    def gap_count(self) -> int:
        """Total messages known missing, all streams."""
        return sum(self.gaps.values())

    def is_stale(self, stream: str) -> bool:
        """No message from `stream` for more than 3 heartbeat intervals."""
        last = self._last_seen.get(stream, self._t_open)
        return time.monotonic() - last > 3 * self.heartbeat_s

    def last_status(self, stream: str) -> Status | None:
        return self._status.get(stream)

    def publisher_of(self, stream: str) -> str | None:
        return self._publisher.get(stream)

    @property
    def streams_seen(self) -> list[str]:
        return sorted(self._last_seen)

    # --- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(error: str) -> str:
    """A short category for rejected_by: the error's first words, without the details."""
    for key in ("nested too deeply", "frames: expected one frame", "exceeds the limit", "unknown message type",
                "unsupported schema", "topic", "malformed", "invalid", "payload starts with", "empty payload"):
        if key in error:
            return key
    return "other"
