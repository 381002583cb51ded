"""XSUB/XPUB proxy: many scanners (publishers) to many UIs (subscribers).

Data flow::

    Publisher(connect=True) ─┐                               ┌─► Subscriber (UI 1)
    Publisher(connect=True) ─┼─► frontend XSUB ══ proxy ══ backend XPUB ─┼─► Subscriber (UI 2)
    Publisher(connect=True) ─┘    (bind)       thread         (bind)     └─► ...
                                  ◄──────── subscriptions flow back upstream ────────

Messages pass through unchanged (topic + payload in one frame). The backend sets XPUB_VERBOSE so
every subscribe reaches the publishers, which answer each new subscriber with a status at once.
The proxy does not block on a slow UI: past its high-water mark, ZeroMQ drops that UI's
messages, and the UI sees the gap through seq.

Access control, each side on its own (one CURVE key pair for the proxy, two allow-lists):

    frontend (publishers): ``publisher_curve`` = ServerCurve(proxy secret, publishers' public keys)
        ZAP domain "publishers"; a pipeline connects with ClientCurve(its secret, proxy public)
    backend (UIs):         ``curve`` = ServerCurve(proxy secret, UIs' public keys), domain "ui"
    both: MAXMSGSIZE = max_message_bytes; a peer that sends a bigger message is disconnected

Without ``publisher_curve`` any local process can publish (forged scores reach every UI): the
constructor logs that as a warning. Revocation: a watcher thread checks both allow-lists every
``revocation_check_s``; when an admitted key was removed it steers the proxy to TERMINATE, the
proxy thread unbinds and re-binds that side (every connection on it drops; allowed peers
reconnect and are admitted again, the removed key is refused) and resumes.
``stop()`` steers the proxy to TERMINATE and joins its threads.
"""

from __future__ import annotations

import logging
import threading

import zmq

from streamcad.errors import TransportError
from streamcad.security import Revocation, ServerCurve, apply_server, start_authenticator
from streamcad.transport import bind_socket

__all__ = ["Proxy", "DEFAULT_FRONTEND", "DEFAULT_BACKEND", "MAX_MESSAGE_BYTES"]

log = logging.getLogger(__name__)

DEFAULT_FRONTEND = "tcp://127.0.0.1:5559"  # publishers connect here
DEFAULT_BACKEND = "tcp://127.0.0.1:5560"  # subscribers connect here
# A score is ~1 KB and a status ~1.5 KB (JSON); 64 KiB leaves room for growth while a flood of
# 2 MiB frames (which cut UIs to a quarter of their scores) is refused at the socket.
MAX_MESSAGE_BYTES = 64 * 1024


class Proxy:
    """Bind both sides at construction (errors surface at once); start() runs the thread."""

    def __init__(
        self,
        frontend: str = DEFAULT_FRONTEND,
        backend: str = DEFAULT_BACKEND,
        *,
        allow_remote: bool = False,
        curve: ServerCurve | None = None,
        publisher_curve: ServerCurve | None = None,
        hwm: int = 1000,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        revocation_check_s: float = 0.5,
    ) -> None:
        if publisher_curve is not None and publisher_curve.allowed_clients_dir is None:
            raise TransportError("publisher CURVE needs an allow-list of publisher public keys: without one any "
                                 "process that makes itself a key pair could publish")
        if not (isinstance(max_message_bytes, int) and 1024 <= max_message_bytes <= 1 << 30):
            raise TransportError(f"max_message_bytes={max_message_bytes!r}; expected an int in [1024, 2**30]")
        self._ctx = zmq.Context()
        self._auth = None
        self._thread: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stopped = False
        self._stopping = threading.Event()
        self._cut_done = threading.Event()
        self._to_cut: list[tuple[Revocation, zmq.Socket, str, set]] = []
        self._revocations: list[tuple[Revocation, str]] = []  # (revocation, 'frontend' | 'backend')
        self._check_s = float(revocation_check_s)
        self.cuts = 0  # times a side was re-bound to cut a revoked key
        try:
            self._xsub = self._ctx.socket(zmq.XSUB)
            self._xsub.setsockopt(zmq.LINGER, 0)
            self._xsub.setsockopt(zmq.RCVHWM, hwm)
            self._xsub.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
            self._xpub = self._ctx.socket(zmq.XPUB)
            self._xpub.setsockopt(zmq.LINGER, 0)
            self._xpub.setsockopt(zmq.SNDHWM, hwm)
            self._xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
            self._xpub.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)  # subscriptions are a few bytes
            for sock, side_curve, domain, role in ((self._xpub, curve, "ui", "subscriber"),
                                                   (self._xsub, publisher_curve, "publishers", "publisher")):
                if side_curve is None:
                    continue
                sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
                if self._auth is None:
                    self._auth = start_authenticator(self._ctx, side_curve, domain, role)
                else:
                    self._auth.add(side_curve, domain, role)
                apply_server(sock, side_curve)
                rev = Revocation(self._auth, domain, check_s=0.0)
                if rev.allow is not None:
                    self._revocations.append((rev, "backend" if sock is self._xpub else "frontend"))
            self.frontend = bind_socket(self._xsub, frontend, allow_remote)
            self.backend = bind_socket(self._xpub, backend, allow_remote)
            ctl = f"inproc://streamcad-proxy-control-{id(self)}"
            # PAIR (libzmq's steerable proxy answers on the control socket: PULL fails with ENOTSUP),
            # so ONE thread sends: the supervisor, for stop() and for revocation cuts
            self._ctl_in = self._ctx.socket(zmq.PAIR)
            self._ctl_in.bind(ctl)
            self._ctl_out = self._ctx.socket(zmq.PAIR)
            self._ctl_out.setsockopt(zmq.LINGER, 0)
            self._ctl_out.connect(ctl)
        except BaseException:
            self._close_all()
            raise
        if publisher_curve is None:
            log.warning("proxy frontend %s does NOT authenticate publishers: any process that can reach it can "
                        "publish (forged scores reach every UI); give --curve-secret with --curve-allow-publishers DIR",
                        self.frontend)
        log.info("proxy bound: publishers -> %s (%s), subscribers -> %s (%s), messages <= %d bytes",
                 self.frontend, "CURVE allow-list" if publisher_curve else "plaintext", self.backend,
                 "CURVE" if curve else "plaintext", max_message_bytes)

    def start(self) -> Proxy:
        if self._thread is not None:
            raise TransportError("proxy already started")
        self._thread = threading.Thread(target=self._run, name="streamcad-proxy", daemon=True)
        self._thread.start()
        self._watcher = threading.Thread(target=self._supervise, name="streamcad-proxy-supervisor", daemon=True)
        self._watcher.start()
        return self

    def _run(self) -> None:
        try:
            while True:
                zmq.proxy_steerable(self._xsub, self._xpub, None, self._ctl_in)
                if self._stopping.is_set():
                    return
                while self._to_cut:  # the watcher stopped the proxy to cut revoked keys
                    rev, sock, endpoint, revoked = self._to_cut.pop()
                    rev.cut(sock, endpoint, revoked)
                    self.cuts += 1
                self._cut_done.set()
        except (zmq.ZMQError, TransportError) as exc:  # reported by join()/stop()
            self._error = exc
            log.error("proxy stopped on error: %s", exc)
        finally:
            self._cut_done.set()

    def _supervise(self) -> None:
        """The one thread that steers the proxy: TERMINATE on stop(); every revocation_check_s, a
        key admitted on a side and since removed -> TERMINATE, the proxy thread cuts that side."""
        while not self._stopping.wait(self._check_s if self._revocations else None):
            found = []
            for rev, side in self._revocations:
                revoked = rev.due()
                if revoked:
                    sock, endpoint = (self._xsub, self.frontend) if side == "frontend" else (self._xpub, self.backend)
                    found.append((rev, sock, endpoint, revoked))
            if found and not self._stopping.is_set():
                self._cut_done.clear()
                self._to_cut.extend(found)
                self._ctl_out.send(b"TERMINATE")
                self._cut_done.wait(5.0)
        self._ctl_out.send(b"TERMINATE")  # stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the proxy thread (e.g. the CLI waits until Ctrl-C)."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self._error is not None:
            raise TransportError(f"proxy failed: {self._error}") from self._error

    def stop(self, timeout: float = 2.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()  # the supervisor sends TERMINATE and ends
        if self._watcher is not None:
            self._watcher.join(timeout)
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TransportError(f"proxy thread did not stop within {timeout} s")
        self._close_all()
        log.info("proxy stopped")

    def _close_all(self) -> None:
        for name in ("_ctl_out", "_ctl_in", "_xpub", "_xsub"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self._ctx.term()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
