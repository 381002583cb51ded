"""IgtlSink: an OpenIGTLink server for 3D Slicer (OpenIGTLinkIF) and other IGT tools.

Data flow::

    publish thread (the Sink calls; never blocks):
        write_frame(frame)  a client is connected? keep a copy of the frame
        write_score(score)  -> (ROI crop of that frame, the Score, capture time as UTC)
                            -> bounded queue (`queue` frames; full: the oldest is dropped, counted)
    sender thread:   per item, packed with pyigtl (the message classes SlicerIGT's own Python
                     tools use), to every connected client:
                       IMAGE  `image_device`   the ROI crop, uint8, 1 x H x W, 1 mm per pixel
                       STRING `score_device`   the Score as JSON (the ZeroMQ message's fields)
                       POINT  `lesion_device`  the lesion box's centre in the image's pixels
                                               (only when the Score has a lesion)
                     all three stamped with the frame's capture time (UTC seconds, as the
                     OpenIGTLink header wants; from the monotonic t_capture_ns).
                     A client that does not take data within `send_timeout_s` is disconnected.
    accept thread:   listens on host:port (18944 by default, as PlusServer), loopback unless
                     allow_remote; any number of clients; one that goes away is dropped and a
                     new connection is served at once.

Why not pyigtl's own OpenIGTLinkServer: it replaces the process's SIGINT/SIGTERM handlers (and
so cannot start off the main thread), serves one client, keeps a 100-message queue that drops
without a count and sends queued old frames to the next client, and spins on a client socket that
was closed. The wire format is pyigtl's either way.
"""

from __future__ import annotations

import collections
import errno
import logging
import select
import socket
import threading
import time
from typing import Annotated

import msgspec
import numpy as np

from streamcad.errors import TransportError
from streamcad.messages import Score, Status
from streamcad.sinks.base import Sink, SinkOptions, register_sink

__all__ = ["IgtlSink", "IgtlConfig", "DEFAULT_PORT"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 18944  # OpenIGTLink's registered port; PlusServer's default


class IgtlConfig(SinkOptions):
    # OpenIGTLink server for 3D Slicer (streamcad.sinks.igtl, the igtl extra): per scored frame an
    # IMAGE of the ROI, the score as STRING (JSON) and the lesion centre as POINT. CLI: run --igtl [HOST:]PORT.
    enabled: bool = False
    host: str = "127.0.0.1"  # loopback unless allow_remote, as for [publish]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 18944  # the OpenIGTLink port PlusServer uses
    allow_remote: bool = False
    image_device: Annotated[str, msgspec.Meta(min_length=1, max_length=20)] = "Image"  # device names: <= 20 bytes (OpenIGTLink header)
    score_device: Annotated[str, msgspec.Meta(min_length=1, max_length=20)] = "Score"
    lesion_device: Annotated[str, msgspec.Meta(min_length=1, max_length=20)] = "Lesion"
    queue: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 8  # frames waiting for a slow client before the oldest is dropped


class IgtlSink(Sink):
    """OpenIGTLink server sink. See the module docstring."""

    name = "igtl"
    wants_frames = True

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, allow_remote: bool = False,
                 image_device: str = "Image", score_device: str = "Score", lesion_device: str = "Lesion",
                 queue: int = 8, send_timeout_s: float = 2.0) -> None:
        import pyigtl  # the igtl extra; imported here so the sinks package needs nothing heavy

        from streamcad.transport import check_bind_endpoint

        self._pyigtl = pyigtl
        check_bind_endpoint(f"tcp://{host}:{port}", allow_remote)  # the publisher's rule, in its words
        for what, name in (("image_device", image_device), ("score_device", score_device),
                           ("lesion_device", lesion_device)):
            if not name or len(name.encode()) > 20:
                raise TransportError(f"igtl.{what} {name!r}: expected 1-20 bytes (the OpenIGTLink device name field)")
        if not 1 <= queue <= 1000:
            raise TransportError(f"igtl.queue {queue}: expected 1-1000 frames")
        self.host, self.devices = host, (image_device, score_device, lesion_device)
        self.send_timeout_s = float(send_timeout_s)
        self.written = 0  # frames sent to at least one client
        self.dropped = 0  # frames a slow client made us drop (the oldest queued one)
        self.clients_served = 0
        self._queue: collections.deque = collections.deque()
        self._maxlen = int(queue)
        self._cv = threading.Condition()
        self._clients: list[socket.socket] = []
        self._frame = None  # (index, image copy) of the frame whose score comes next
        self._closed = threading.Event()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._lsock = socket.create_server((host.strip("[]"), int(port)), family=family, backlog=4)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise TransportError(f"cannot serve OpenIGTLink on {host}:{port}: address already in use "
                                     "(another process, e.g. PlusServer, holds it)") from exc
            raise TransportError(f"cannot serve OpenIGTLink on {host}:{port}: {exc.strerror or exc}") from exc
        self._lsock.settimeout(0.2)
        self.port = self._lsock.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept_loop, name="streamcad-igtl-accept", daemon=True),
                         threading.Thread(target=self._send_loop, name="streamcad-igtl-send", daemon=True)]
        for t in self._threads:
            t.start()
        log.info("OpenIGTLink server on %s:%d (devices %s)", host, self.port, ", ".join(self.devices))

    @classmethod
    def from_config(cls, config) -> IgtlSink:
        return cls.from_options(config.igtl)

    @classmethod
    def from_options(cls, c: IgtlConfig) -> IgtlSink:
        return cls(c.host, c.port, allow_remote=c.allow_remote, image_device=c.image_device,
                   score_device=c.score_device, lesion_device=c.lesion_device, queue=c.queue)

    @property
    def connected(self) -> int:
        with self._cv:
            return len(self._clients)

    # ------------------------------------------------------------------ publish thread
    def write_frame(self, frame) -> bool:
        if not self._clients:  # nobody listens: no copy, no work
            self._frame = None
            return False
        self._frame = (frame.index, frame.image.copy())
        return True

    def write_score(self, msg: Score) -> bool:
        held, self._frame = self._frame, None
        if held is None or held[0] != msg.frame_index or msg.roi is None:
            return True
        x, y, w, h = msg.roi
        crop = held[1][y: y + h, x: x + w]  # a view of our own copy
        t_utc = time.time() - (time.monotonic_ns() - msg.t_capture_ns) / 1e9  # capture time, UTC seconds
        with self._cv:
            if len(self._queue) >= self._maxlen:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append((crop, msg, t_utc))
            self._cv.notify()
        return True

    def write_status(self, msg: Status) -> bool:
        return True

    # ------------------------------------------------------------------ sender thread
    def messages(self, crop: np.ndarray, score: Score, t_utc: float) -> list:
        """The pyigtl messages of one scored frame (IMAGE, STRING, and POINT when a lesion is boxed)."""
        igtl = self._pyigtl
        image_dev, score_dev, lesion_dev = self.devices
        rx, ry = score.roi[0], score.roi[1]
        out = [igtl.ImageMessage(np.ascontiguousarray(crop)[None], device_name=image_dev, timestamp=t_utc),
               igtl.StringMessage(msgspec.json.encode(score).decode(), device_name=score_dev, timestamp=t_utc)]
        if score.lesion is not None:
            bx, by, bw, bh = score.lesion.box
            centre = [bx + bw / 2 - rx, by + bh / 2 - ry, 0.0]  # in the IMAGE's pixels (its origin: the ROI corner)
            out.append(igtl.PointMessage(positions=[centre], names=["lesion"], device_name=lesion_dev,
                                         timestamp=t_utc))
        return out

    def _send_loop(self) -> None:
        while not self._closed.is_set():
            with self._cv:
                while not self._queue and not self._closed.is_set():
                    self._cv.wait(0.2)
                    self._reap()
                if self._closed.is_set():
                    return
                crop, score, t_utc = self._queue.popleft()
                clients = list(self._clients)
            data = b"".join(m.pack() for m in self.messages(crop, score, t_utc))
            sent = False
            for c in clients:
                try:
                    c.sendall(data)
                    sent = True
                except OSError as exc:  # gone, reset, or too slow (send timeout): drop this client
                    self._drop(c, f"send failed: {exc.strerror or exc}")
            self.written += sent

    def _reap(self) -> None:
        """(holding _cv) Read and discard what clients send (Slicer's status/GET_ messages), and
        notice the ones that closed, so a client that went away is dropped while idle too."""
        if not self._clients:
            return
        readable, _, _ = select.select(self._clients, [], [], 0)  # recv() alone would wait its timeout
        for c in readable:
            try:
                data = c.recv(65536)
            except OSError as exc:
                self._drop(c, exc.strerror or str(exc), locked=True)
                continue
            if not data:
                self._drop(c, "closed by the client", locked=True)

    def _drop(self, c: socket.socket, why: str, locked: bool = False) -> None:
        def remove() -> None:
            if c in self._clients:
                self._clients.remove(c)
        if locked:
            remove()
        else:
            with self._cv:
                remove()
        try:
            peer = c.getpeername()
        except OSError:
            peer = "?"
        c.close()
        log.info("OpenIGTLink client %s left (%s)", peer, why)

    # ------------------------------------------------------------------ accept thread
    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                c, peer = self._lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closed.is_set():
                    return
                raise
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.settimeout(self.send_timeout_s)  # sendall gives up on a client that stopped reading
            with self._cv:
                self._clients.append(c)
                self._queue.clear()  # a new client starts at the newest frame, not at old queued ones
                self.clients_served += 1
            log.info("OpenIGTLink client %s:%s connected", *peer[:2])

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with self._cv:
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=2.0)
        self._lsock.close()
        with self._cv:
            for c in self._clients:
                c.close()
            self._clients.clear()


@register_sink("igtl", IgtlConfig, section="igtl")
def build(options: IgtlConfig, context: dict) -> Sink | None:
    """An IgtlSink (pyigtl: the igtl extra) of `options` when enabled."""
    return IgtlSink.from_options(options) if options.enabled else None
