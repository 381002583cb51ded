"""XSUB/XPUB proxy: many scanners (publishers) to many UIs (subscribers).

Data flow::

    Publisher(connect=True) ─┐                               ┌─► Subscriber (UI 1)
    Publisher(connect=True) ─┼─► frontend XSUB ══ proxy ══ backend XPUB ─┼─► Subscriber (UI 2)
    Publisher(connect=True) ─┘    (bind)       thread         (bind)     └─► ...
                                  ◄──────── subscriptions flow back upstream ────────

Messages pass through unchanged (topic + payload in one frame). The backend sets XPUB_VERBOSE so
every subscribe reaches the publishers, which answer each new subscriber with a status at once.
The proxy does not block on a slow UI: past its high-water mark, ZeroMQ drops that UI's
messages, and the UI sees the gap through seq. CURVE (an allow-list of UI keys) applies to the
backend, where UIs connect. ``stop()`` steers the proxy to TERMINATE and joins its thread.
"""

from __future__ import annotations

import logging
import threading

import zmq

from streamcad.errors import TransportError
from streamcad.security import ServerCurve, apply_server, start_authenticator
from streamcad.transport import bind_socket

__all__ = ["Proxy", "DEFAULT_FRONTEND", "DEFAULT_BACKEND"]

log = logging.getLogger(__name__)

DEFAULT_FRONTEND = "tcp://127.0.0.1:5559"  # publishers connect here
DEFAULT_BACKEND = "tcp://127.0.0.1:5560"  # subscribers connect here


class Proxy:
    """Bind both sides at construction (errors surface at once); start() runs the thread."""

    def __init__(
        self,
        frontend: str = DEFAULT_FRONTEND,
        backend: str = DEFAULT_BACKEND,
        *,
        allow_remote: bool = False,
        curve: ServerCurve | None = None,
        hwm: int = 1000,
    ) -> None:
        self._ctx = zmq.Context()
        self._auth = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stopped = False
        try:
            self._xsub = self._ctx.socket(zmq.XSUB)
            self._xsub.setsockopt(zmq.LINGER, 0)
            self._xsub.setsockopt(zmq.RCVHWM, hwm)
            self._xpub = self._ctx.socket(zmq.XPUB)
            self._xpub.setsockopt(zmq.LINGER, 0)
            self._xpub.setsockopt(zmq.SNDHWM, hwm)
            self._xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
            if curve is not None:
                self._auth = start_authenticator(self._ctx, curve)
                apply_server(self._xpub, curve)
            self.frontend = bind_socket(self._xsub, frontend, allow_remote)
            self.backend = bind_socket(self._xpub, backend, allow_remote)
            ctl = f"inproc://streamcad-proxy-control-{id(self)}"
            self._ctl_in = self._ctx.socket(zmq.PAIR)
            self._ctl_in.bind(ctl)
            self._ctl_out = self._ctx.socket(zmq.PAIR)
            self._ctl_out.setsockopt(zmq.LINGER, 0)
            self._ctl_out.connect(ctl)
        except BaseException:
            self._close_all()
            raise
        log.info("proxy bound: publishers -> %s, subscribers -> %s", self.frontend, self.backend)

    def start(self) -> Proxy:
        if self._thread is not None:
            raise TransportError("proxy already started")
        self._thread = threading.Thread(target=self._run, name="streamcad-proxy", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            zmq.proxy_steerable(self._xsub, self._xpub, None, self._ctl_in)
        except zmq.ZMQError as exc:  # reported by join()/stop()
            self._error = exc
            log.error("proxy stopped on error: %s", exc)

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
        if self._thread is not None and self._thread.is_alive():
            self._ctl_out.send(b"TERMINATE")
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
