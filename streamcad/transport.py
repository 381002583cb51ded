"""ZeroMQ publisher: one stream of Score/Status messages, never blocking the pipeline.

The ZeroMQ implementation of the Sink interface (streamcad.sinks). Data flow::

    pipeline publish thread ──► ScoreStream (streamcad.messages) builds the message: fills
        schema/stream/publisher/seq/t_publish_ns, validates (msgspec, strict)
        ──► Publisher.write_score(msg) / write_status(msg)    (standalone: publish_score(**fields))
        ──► encode_frame ──► XPUB.send(NOBLOCK)
              bound (UIs connect here): each subscriber has its own queue of ``hwm`` messages; a
                  full queue drops THAT subscriber's message only (libzmq PUB semantics), which it
                  sees as a seq gap; every other subscriber is unaffected
              connected to a proxy (connect=True): one peer, XPUB_NODROP: a full queue raises
                  EAGAIN ──► self.dropped += 1 (seq still consumed, so every subscriber sees the gap)
        ◄── subscription messages (XPUB_VERBOSE), drained by poll() ──► log; the joins are
            answered with a Status at once, and a Status heartbeat goes out whenever heartbeat_s
            passed since the last one, both by the ScoreStream's owner: the pipeline (one
            heartbeat owner), or this class's publish_score/publish_status/service when standalone

One XPUB socket, bound (default ``tcp://127.0.0.1:5555``) or connected to a proxy's XSUB frontend
(``connect=True``). ``hwm_seconds`` is time: the queue per subscriber holds
``ceil(hwm_seconds * (fps + 1/heartbeat_s))`` messages, where ``fps`` is the stream's score rate
(scores) plus the status heartbeat: ``streamcad.sinks.zmq.publisher_from_config`` takes it from the source
(``streamcad.sources.capture.expected_rate``: the file's or sweep's own fps, the requested device fps;
for unpaced recorded media the ceiling of 1,000 fps), so a subscriber may lag at least
hwm_seconds before it loses messages. (Kernel socket buffers on the way hold more on top; they
only ever make the allowed lag longer.)

The queue size is fixed before the first subscriber: ``set_rate()`` works only until then (it
re-binds, or re-connects, so the listener hands new pipes the new size). Changing SNDHWM on a
live socket is unsafe in libzmq 4.3.5: it resizes every pipe, and with one subscriber stalled
and another disconnecting the I/O thread crashed (segfault, reproduced in a few seconds to a
minute; docs/RELIABILITY.md).

Why not XPUB_NODROP on a bound socket: with it, ONE subscriber that stops reading makes every send
fail, and every other subscriber then receives nothing (measured: 0 messages to a healthy UI
from ~20 s on at 240 fps; docs/RELIABILITY.md). On the one-peer proxy link it is kept: the proxy
reads promptly and does the per-subscriber dropping itself, so a drop there is a real loss
worth counting.

Not thread-safe, by design (ZeroMQ sockets are not): one thread, the pipeline's publish thread,
creates, uses and closes a Publisher. If nothing is published for a while, call ``service()``
from that thread so new subscribers get their status and heartbeats keep going.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import msgspec
import zmq
from zmq.utils.monitor import recv_monitor_message

from streamcad.errors import MessageError, TransportError
from streamcad.messages import (
    ENCODINGS,
    OWNED_FIELDS,
    Message,
    Preview,
    Score,
    ScoreStream,
    Status,
    check_stream_name,
    encode_frame,
    topic,
)
from streamcad.ratelimit import LogLimiter
from streamcad.security import (  # the bind rules are access control: defined there, re-exported here
    ClientCurve,
    Revocation,
    ServerCurve,
    apply_client,
    apply_server,
    bind_socket,
    check_bind_endpoint,
    start_authenticator,
)
from streamcad.sinks.base import Sink

__all__ = ["DEFAULT_ENDPOINT", "Publisher", "check_bind_endpoint", "bind_socket"]

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
_MONITOR_EVENTS = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)

# libzmq ZMQ_PROTOCOL_ERROR_* values seen in handshake-failed events
_HANDSHAKE_CODES = {
    0x11000002: "security mechanism mismatch: e.g. a plain client on a CURVE socket",
    0x11000001: "unspecified ZMTP error",
    0x20000000: "ZAP unspecified error",
}


class Publisher(Sink):
    """Publish Score/Status messages of one stream. See the module docstring.

    Two ways to use it:

    * standalone: ``publish_score(**fields)`` / ``publish_status()`` / ``service()`` build the
      messages with the publisher's ScoreStream (``self.scores``) and keep its heartbeat;
    * as a pipeline Sink (streamcad.sinks): the pipeline owns the ScoreStream (pass it as
      ``scores=``) and the heartbeat; ``write_score`` / ``write_status`` only send the finished
      message, ``poll()`` drains subscription events and reports the joins (the pipeline answers
      them with a status). Nothing here then builds a message on its own.

    >>> with Publisher("tcp://127.0.0.1:5555", stream="probe0") as pub:   # doctest: +SKIP
    ...     pub.publish_score(frame_index=0, t_capture_ns=t0, latency_ms={...}, probs=..., ...)
    """

    name = "zmq"

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        stream: str | None = None,
        encoding: str = "json",
        hwm_seconds: float = 4.0,
        fps: float = 30.0,
        linger_ms: int = 200,
        curve: ServerCurve | ClientCurve | None = None,
        connect: bool = False,
        allow_remote: bool = False,
        heartbeat_s: float | None = None,
        scores: ScoreStream | None = None,
    ) -> None:
        # the stream's name, id and heartbeat are the ScoreStream's; given one, they are not restated
        if scores is not None:
            if (stream is not None and stream != scores.stream) or (
                    heartbeat_s is not None and heartbeat_s != scores.heartbeat_s):
                raise TransportError(f"Publisher(scores=...) takes stream and heartbeat_s from the ScoreStream "
                                     f"({scores.stream!r}, {scores.heartbeat_s} s), got stream={stream!r}, "
                                     f"heartbeat_s={heartbeat_s!r}")
            stream, heartbeat_s = scores.stream, scores.heartbeat_s
        stream = "probe0" if stream is None else stream
        heartbeat_s = 1.0 if heartbeat_s is None else heartbeat_s
        if encoding not in ENCODINGS:
            raise TransportError(f"unknown encoding {encoding!r}: expected one of {ENCODINGS}")
        try:
            check_stream_name(stream)
        except MessageError as exc:
            raise TransportError(str(exc)) from exc
        if not (0 < hwm_seconds < math.inf and 0 < fps < math.inf):
            raise TransportError(f"hwm_seconds and fps must be finite and > 0, got {hwm_seconds} and {fps}")
        if not 0 < heartbeat_s < math.inf:
            raise TransportError(f"heartbeat_s must be finite and > 0, got {heartbeat_s}")
        if connect and isinstance(curve, ServerCurve):
            raise TransportError("connect=True takes a ClientCurve (this pipeline's key pair + the proxy's public key); "
                                 "a ServerCurve is for a bound publisher")
        if not connect and isinstance(curve, ClientCurve):
            raise TransportError("a bound publisher is the CURVE server: give a ServerCurve, not a ClientCurve")
        self.stream = stream
        self.encoding = encoding
        self.hwm_seconds = float(hwm_seconds)
        self.connect = bool(connect)
        self.allow_remote = bool(allow_remote)
        self.linger_ms = int(linger_ms)
        self.heartbeat_s = float(heartbeat_s)
        self.rate = float(fps)  # scores per second each subscriber's queue is sized for
        self.hwm = self._hwm_for(self.rate)  # messages per subscriber queue (set_rate() resizes)
        self.scores = scores if scores is not None else ScoreStream(stream, heartbeat_s=self.heartbeat_s)
        self.sent = 0
        self.dropped = 0
        self.subscriptions = 0  # subscribe messages seen (XPUB_VERBOSE: every one, duplicates too)
        # subscriptions that take this stream's statuses: one per UI (every Subscriber takes them)
        self.status_subscribers = 0
        self._status_topic = topic("status", stream)
        self._closed = False
        self._auth = None
        self._revocation: Revocation | None = None  # bound + allow-list: cuts removed keys
        self._monitor = None
        self._limiter = LogLimiter(10.0)

        self._ctx = zmq.Context()
        try:
            sock = self._sock = self._ctx.socket(zmq.XPUB)
            sock.setsockopt(zmq.SNDHWM, self.hwm)
            if connect:  # one peer, the proxy: a full HWM -> EAGAIN (counted), not a silent drop
                sock.setsockopt(zmq.XPUB_NODROP, 1)
            sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscribe, so each new UI gets a status
            sock.setsockopt(zmq.LINGER, self.linger_ms)
            if isinstance(curve, ServerCurve):
                self._auth = start_authenticator(self._ctx, curve)
                apply_server(sock, curve)
                self._revocation = Revocation(self._auth)
            elif curve is not None:  # connect mode: a CURVE client of the proxy's frontend
                apply_client(sock, curve)
            elif connect:
                log.warning("stream %s: publishing in PLAINTEXT to %s (connect mode without CURVE): whoever binds "
                            "that address receives the scores; set publish.curve_secret_key and "
                            "publish.curve_server_key to encrypt", stream, endpoint)
            self._monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
            self._monitor.setsockopt(zmq.LINGER, 0)
            if connect:
                try:
                    sock.connect(endpoint)
                except zmq.ZMQError as exc:
                    raise TransportError(f"cannot connect to {endpoint}: {exc}") from exc
                self.endpoint = endpoint
            else:
                self.endpoint = bind_socket(sock, endpoint, allow_remote)
        except BaseException:
            self._teardown(linger_ms=0)
            raise
        log.info(
            "publisher %s stream=%s %s %s (hwm=%d msgs = %.1f s at %.1f msgs/s, %s)",
            self.publisher_id, stream, "connected to" if connect else "bound", self.endpoint, self.hwm,
            self.hwm_seconds, self.rate + 1.0 / self.heartbeat_s, encoding,
        )

    # --- queue size ---------------------------------------------------------------------------
    preview_rate = 0.0  # previews per second at most (set_preview_rate); 0: no previews
    preview_sent = 0
    preview_dropped = 0  # previews the proxy link refused (connect mode); never counted in `dropped`

    def _hwm_for(self, fps: float) -> int:
        """Messages in hwm_seconds at `fps` scores/s plus the status heartbeat (and previews)."""
        return max(1, math.ceil(self.hwm_seconds * (fps + self.preview_rate + 1.0 / self.heartbeat_s)))

    def set_preview_rate(self, fps: float) -> int:
        """Previews share each subscriber's queue: size it for `fps` previews/s more, so the
        scores keep their hwm_seconds of allowed lag. Returns the HWM."""
        if not (0 <= fps < math.inf):
            raise TransportError(f"preview rate must be finite and >= 0 previews/s, got {fps}")
        self.preview_rate = float(fps)
        return self.set_rate(self.rate)

    def set_rate(self, fps: float) -> int:
        """Size the subscriber queues for `fps` scores per second, before anything was
        published and before any subscription was seen (see the module docstring: libzmq must
        not resize live pipes). The socket is re-bound (re-connected) so that every pipe gets
        the new size. Returns the HWM; TransportError once subscribers may be there."""
        self._check_open()
        if not (0 < fps < math.inf):
            raise TransportError(f"publisher rate must be finite and > 0 frames/s, got {fps}")
        hwm = self._hwm_for(float(fps))
        if hwm != self.hwm:
            if self.scores.seq > 0 or self.subscriptions > 0:
                raise TransportError(
                    f"stream {self.stream}: the subscriber queue size is fixed once subscribers are connected "
                    f"({self.subscriptions} subscriptions, {self.scores.seq} messages sent); set the rate first"
                )
            log.info("stream %s: subscriber queue %d -> %d messages (%.1f s at %.1f scores/s)",
                     self.stream, self.hwm, hwm, self.hwm_seconds, fps)
            self.hwm = hwm
            self._sock.setsockopt(zmq.SNDHWM, hwm)  # no pipe carries data yet: safe
            self._reattach()
        self.rate = float(fps)
        return hwm

    def _reattach(self) -> None:
        """Re-bind (re-connect) so the listener (the connection) takes the socket's new options.
        libzmq closes the old listener on its I/O thread: wait for its port (its ipc file,
        which it unlinks last) to be free before binding again."""
        ep = self.endpoint
        try:
            if self.connect:
                self._sock.disconnect(ep)
                self._sock.connect(ep)
                return
            self._sock.unbind(ep)
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot re-attach {ep} with the new queue size: {exc}") from exc
        scheme, rest = check_bind_endpoint(ep, self.allow_remote)
        deadline = time.monotonic() + 2.0
        if scheme == "ipc" and not rest.startswith("@"):
            while Path(rest).exists() and time.monotonic() < deadline:
                time.sleep(0.005)
        while True:
            try:
                self.endpoint = bind_socket(self._sock, ep, self.allow_remote)
                return
            except TransportError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    # --- publishing ---------------------------------------------------------------------------
    @property
    def publisher_id(self) -> str:
        """The id in every message's ``publisher`` field (the ScoreStream's)."""
        return self.scores.publisher_id

    @property
    def written(self) -> int:  # Sink counter
        return self.sent

    @property
    def seq(self) -> int:
        """The seq the next message will carry."""
        return self.scores.seq

    def publish_score(self, *, t_ready_ns: int | None = None, t_publish_ns: int | None = None,
                      **fields: Any) -> bool:
        """Publish one Score. `fields` are the Score fields except schema/stream/publisher/seq
        (filled here). t_publish_ns defaults to now (pass your own monotonic stamp if your
        latency_ms was computed against it). latency_ms['total'] is set from the timestamps when
        absent; latency_ms['publish'] from t_ready_ns (monotonic ns when the result was ready).
        Returns True if sent, False if dropped (connect mode: the proxy link's HWM full; a bound
        publisher drops per subscriber instead, seen there as a gap). Raises MessageError on bad fields.
        """
        self._check_open()
        msg = self.scores.score(t_ready_ns=t_ready_ns, t_publish_ns=t_publish_ns, **fields)
        ok = self._send(msg)
        self._service(time.monotonic())
        return ok

    def publish(self, msg: Message) -> bool:
        """Publish a prebuilt Score/Status; the publisher re-stamps its own fields."""
        self._check_open()
        if not isinstance(msg, (Score, Status)):
            raise MessageError(f"cannot publish {type(msg).__name__}: expected Score or Status")
        if isinstance(msg, Status):
            fields = msgspec.structs.asdict(msg)
            return self.publish_status(**{k: v for k, v in fields.items() if k not in OWNED_FIELDS})
        fields = {k: v for k, v in msgspec.structs.asdict(msg).items() if k not in OWNED_FIELDS}
        return self.publish_score(**fields)

    def set_status(self, **fields: Any) -> None:
        """Remember Status fields (source, counters, fps_in, fps_out, backend, model, model_sha256)
        for the next heartbeat / new-subscriber status, without sending now."""
        self.scores.set_status(**fields)

    def publish_status(self, **fields: Any) -> bool:
        """Send a Status now (merging `fields` into the remembered ones). Returns sent/dropped."""
        self._check_open()
        self.set_status(**fields)
        now = time.monotonic()
        ok = self._send_status(now)
        self._service(now)
        return ok

    def service(self, timeout: float = 0.0) -> int:
        """Wait up to `timeout` s for subscription events, answer them with a status, send a
        heartbeat if due. Returns the number of new subscriptions seen."""
        self._check_open()
        if timeout > 0:
            self._sock.poll(int(timeout * 1000), zmq.POLLIN)
        return self._service(time.monotonic())

    def write_preview(self, msg: Preview) -> bool:
        """Send a finished Preview (topic preview/<stream>; streamcad.preview). A refused one
        (connect mode, proxy link full) counts in preview_dropped, not in the scores' `dropped`."""
        self._check_open()
        if not isinstance(msg, Preview):
            raise MessageError(f"write_preview takes a Preview, got {type(msg).__name__}")
        try:
            self._sock.send(encode_frame(msg, self.encoding), zmq.NOBLOCK)
        except zmq.Again:
            self.preview_dropped += 1
            return False
        except zmq.ZMQError as exc:
            raise TransportError(f"send on {self.endpoint} failed: {exc}") from exc
        self.preview_sent += 1
        return True

    # --- internals ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"publisher on {self.endpoint} is closed")

    # --- the Sink interface (the pipeline owns the ScoreStream and the heartbeat) ----------------
    def write_score(self, msg: Score) -> bool:
        """Send a finished Score as it is (no re-stamping). True if sent, False if dropped."""
        self._check_open()
        if not isinstance(msg, Score):
            raise MessageError(f"write_score takes a Score, got {type(msg).__name__}")
        return self._send(msg)

    def write_status(self, msg: Status) -> bool:
        """Send a finished Status as it is. True if sent, False if dropped."""
        self._check_open()
        if not isinstance(msg, Status):
            raise MessageError(f"write_status takes a Status, got {type(msg).__name__}")
        return self._send(msg)

    def poll(self) -> int:
        """Subscription events, key revocation, monitor events; returns the joins seen (the
        caller answers them with a status). Sends nothing."""
        self._check_open()
        new = 0
        while True:  # subscription messages: b'\x01' + topic (subscribe) / b'\x00' + topic
            try:
                ev = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if ev[:1] == b"\x01":
                new += 1
                self.subscriptions += 1
                if self._status_topic.startswith(ev[1:]):  # b"", b"status/", b"status/<stream> "
                    self.status_subscribers += 1
                log.info("stream %s: new subscription to %r", self.stream, ev[1:])
            elif ev[:1] == b"\x00":
                log.info("stream %s: subscription to %r ended", self.stream, ev[1:])
        if self._revocation is not None:
            self._revocation.poll(self._sock, self.endpoint)
        self._drain_monitor()
        return new

    def _send(self, msg: Message) -> bool:
        # the seq was consumed when the ScoreStream built msg: a drop shows as a gap
        frame = encode_frame(msg, self.encoding)
        try:
            self._sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            self._limiter.warning(log, "dropped", "stream %s: proxy link queue full (hwm %d), %d messages dropped so far",
                                  self.stream, self.hwm, self.dropped)
            return False
        except zmq.ZMQError as exc:
            raise TransportError(f"send on {self.endpoint} failed: {exc}") from exc
        self.sent += 1
        return True

    def _send_status(self, now: float) -> bool:
        # standalone use: the publisher is the authority on its own drops
        return self._send(self.scores.status(dropped=self.dropped))

    def _service(self, now: float) -> int:
        """Standalone use: poll(), then a status for new subscribers or when the heartbeat is due."""
        new = self.poll()
        if new or self.scores.status_due():
            self._send_status(now)
        return new

    def _drain_monitor(self) -> None:
        if self._monitor is None:
            return
        while True:
            try:
                evt = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = evt["event"]
            ep = evt.get("endpoint", b"")
            ep = ep.decode(errors="replace") if isinstance(ep, bytes) else ep
            if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                log.warning("stream %s: client on %s DENIED: authentication failed (key not allowed)", self.stream, ep)
            elif kind in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                code = evt.get("value")
                why = _HANDSHAKE_CODES.get(code, f"code {code}")
                log.warning("stream %s: client on %s DENIED: handshake failed (%s)", self.stream, ep, why)
            elif kind == zmq.EVENT_ACCEPTED:
                log.debug("stream %s: connection accepted on %s", self.stream, ep)
            elif kind == zmq.EVENT_DISCONNECTED:
                log.info("stream %s: a subscriber disconnected from %s", self.stream, ep)

    # --- lifetime -----------------------------------------------------------------------------
    def _teardown(self, linger_ms: int) -> None:
        if self._monitor is not None:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(linger=0)
            self._monitor = None
        if getattr(self, "_sock", None) is not None:
            self._sock.close(linger=linger_ms)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self._ctx.term()

    def close(self) -> None:
        """Close within linger_ms: pending messages to a vanished subscriber are discarded."""
        if self._closed:
            return
        self._closed = True
        self._teardown(self.linger_ms)
        log.info("publisher %s closed (sent %d, dropped %d)", self.publisher_id, self.sent, self.dropped)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

