"""`streamcad view`'s web server: subscribe like any UI, serve one live page.

Data flow::

    publisher(s) ──ZeroMQ──► subscriber thread: streamcad.client.Subscriber (score, status,
        preview; CURVE as for `listen`) ──call_soon_threadsafe──► Hub (asyncio loop)
        Hub: per stream the last status, score and preview, and the smoothed-score trace of
        the last `trace_s` seconds ──► every browser's WebSocket (/ws), JSON text messages:
            {"type": "hello", texts, trace_s, streams: {name: snapshot}}   at connect
            the wire message as JSON (score / status / preview: image base64), as it arrives
    GET /            the page (static/index.html + viewer.js + viewer.css)
    GET /api/state   the same snapshot as the hello (for scripts and tests)

A browser that reads slowly never holds up the others or the subscriber: each has a bounded
outbox; previews are coalesced (only the newest of a stream waits), and when scores or statuses
overflow the oldest go (counted in that browser's `dropped`, shown on its page).

aiohttp (server and WebSocket in one well-kept asyncio library, no ASGI server or framework on
top) is the `viewer` extra; the rest of the runtime does not need it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from pathlib import Path

import msgspec
from aiohttp import WSMsgType, web

from streamcad.client import Subscriber
from streamcad.dashboard import FLAG_TEXT, STATE_TEXT
from streamcad.errors import StreamcadError, TransportError
from streamcad.messages import Preview, Score, Status, kind_of

__all__ = ["Hub", "ViewerServer", "STATIC_DIR"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
_OUTBOX = 256  # score/status messages a browser may fall behind before the oldest are dropped
_STATE_WORDS = {"no_lesion": "No lesion in view", "clear": "Lesion: below threshold",
                "suspicious": "Lesion: possibly malignant", "flagged": "Not scored"}


class _Client:
    """One browser: a bounded outbox of encoded messages and the newest preview per stream."""

    def __init__(self) -> None:
        self.queue: collections.deque[str] = collections.deque()
        self.previews: dict[str, str] = {}
        self.dropped = 0
        self.wake = asyncio.Event()

    def put(self, kind: str, stream: str, text: str) -> None:
        if kind == "preview":
            self.previews[stream] = text  # an unsent older preview of this stream is replaced
        else:
            if len(self.queue) >= _OUTBOX:
                self.queue.popleft()
                self.dropped += 1
            self.queue.append(text)
        self.wake.set()


class Hub:
    """The latest state of every stream seen, and the browsers to forward messages to. Lives on
    the asyncio loop's thread (publish() is called there through call_soon_threadsafe)."""

    def __init__(self, trace_s: float = 30.0) -> None:
        if not 1.0 <= trace_s <= 3600.0:
            raise StreamcadError(f"--trace-s {trace_s}: expected 1 to 3600 seconds")
        self.trace_s = float(trace_s)
        self.streams: dict[str, dict] = {}
        self.clients: set[_Client] = set()
        self.received = 0
        self.subscriber_error: str | None = None

    def _stream(self, name: str) -> dict:
        return self.streams.setdefault(name, {"status": None, "score": None, "preview": None,
                                              "trace": collections.deque()})

    def publish(self, msg: Score | Status | Preview) -> None:
        self.received += 1
        kind = kind_of(msg)
        st = self._stream(msg.stream)
        builtin = msgspec.to_builtins(msg)  # bytes (the JPEG) -> base64 text
        st[kind] = builtin
        if isinstance(msg, Score):
            trace = st["trace"]
            trace.append([msg.t_capture_ns, msg.malignancy, msg.state])
            while trace and msg.t_capture_ns - trace[0][0] > self.trace_s * 1e9:
                trace.popleft()
        text = json.dumps(builtin, separators=(",", ":"))
        for c in self.clients:
            c.put(kind, msg.stream, text)

    def snapshot(self) -> dict:
        return {
            "type": "hello",
            "trace_s": self.trace_s,
            "texts": {"state": STATE_TEXT, "state_words": _STATE_WORDS, "flag": FLAG_TEXT},
            "received": self.received,
            "subscriber_error": self.subscriber_error,
            "streams": {name: {"status": s["status"], "score": s["score"], "preview": s["preview"],
                               "trace": list(s["trace"])}
                        for name, s in sorted(self.streams.items())},
        }


class ViewerServer:
    """The subscriber thread + the aiohttp app. `run()` blocks until `stop()` (or Ctrl-C)."""

    def __init__(self, endpoints: list[str], *, host: str = "127.0.0.1", port: int = 8080,
                 curve=None, heartbeat_s: float = 1.0, trace_s: float = 30.0) -> None:
        self.endpoints = list(endpoints)
        self.host, self.port = host, int(port)
        self.curve = curve
        self.heartbeat_s = heartbeat_s
        self.hub = Hub(trace_s)
        self.url: str | None = None
        self.ready = threading.Event()  # set once the HTTP port is bound (url is known)
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._sub_started = False
        # the subscriber is created here, on the caller's thread, so a bad endpoint or CURVE
        # key is the caller's one-line error; the thread then owns it
        self._sub = Subscriber(self.endpoints, kinds=("score", "status", "preview"), curve=curve,
                               heartbeat_s=heartbeat_s, strict=False)

    # ------------------------------------------------------------------ subscriber thread
    def _subscribe(self) -> None:
        sub, loop = self._sub, self._loop
        try:
            while not self._stop.is_set():
                msg = sub.recv(timeout=0.2)
                if msg is not None:
                    loop.call_soon_threadsafe(self.hub.publish, msg)
        except StreamcadError as exc:  # our own worded error: show it on the page and in the log
            log.error("subscriber stopped: %s", exc)
            loop.call_soon_threadsafe(setattr, self.hub, "subscriber_error", str(exc))
        finally:
            sub.close()

    # ------------------------------------------------------------------ HTTP
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/api/state", self._state)
        app.router.add_static("/static/", STATIC_DIR, show_index=False)
        return app

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.hub.snapshot())

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=10.0)
        await ws.prepare(request)
        client = _Client()
        self.hub.clients.add(client)
        sender = asyncio.ensure_future(self._send_loop(ws, client))
        try:
            await ws.send_str(json.dumps(self.hub.snapshot(), separators=(",", ":")))
            async for m in ws:  # the page sends nothing; this loop ends when it goes away
                if m.type == WSMsgType.ERROR:
                    break
        finally:
            self.hub.clients.discard(client)
            sender.cancel()
        return ws

    async def _send_loop(self, ws: web.WebSocketResponse, client: _Client) -> None:
        dropped_told = 0
        while not ws.closed:
            await client.wake.wait()
            client.wake.clear()
            while client.queue:
                await ws.send_str(client.queue.popleft())
            for stream in list(client.previews):
                await ws.send_str(client.previews.pop(stream))
            if client.dropped != dropped_told:
                dropped_told = client.dropped
                await ws.send_str(json.dumps({"type": "viewer", "dropped": client.dropped}))

    # ------------------------------------------------------------------ lifetime
    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise TransportError(f"cannot serve http on {self.host}:{self.port}: {exc.strerror or exc}") from exc
        port = runner.addresses[0][1] if runner.addresses else self.port  # the bound one (port 0: any)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{port}/"
        thread = threading.Thread(target=self._subscribe, name="streamcad-view-sub", daemon=True)
        thread.start()
        self._sub_started = True
        self.ready.set()
        log.info("viewer on %s, subscribed to %s", self.url, ", ".join(self.endpoints))
        try:
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stopped.wait(), 0.2)
                except TimeoutError:
                    pass
        finally:
            self._stop.set()
            await runner.cleanup()
            thread.join(timeout=2.0)

    def run(self) -> None:
        try:
            asyncio.run(self._serve())
        finally:
            self._stop.set()
            if not self._sub_started:  # else its own thread closes it (ZeroMQ sockets are per thread)
                self._sub.close()

    def stop(self) -> None:
        """Ask run() to return (thread-safe; signal handlers call it)."""
        self._stop.set()
        if self._loop is not None and self._stopped is not None:
            try:
                self._loop.call_soon_threadsafe(self._stopped.set)
            except RuntimeError:  # the loop has already closed
                pass

    def wait_ready(self, timeout: float = 10.0) -> str:
        if not self.ready.wait(timeout):
            raise TransportError(f"the viewer did not start serving within {timeout:g} s")
        return self.url or ""

    def serve_in_thread(self) -> threading.Thread:
        """Start run() on a daemon thread (tests, tools); returns it once the port is bound."""
        t = threading.Thread(target=self.run, name="streamcad-view", daemon=True)
        t.start()
        deadline = time.monotonic() + 10.0
        while not self.ready.is_set() and t.is_alive() and time.monotonic() < deadline:
            self.ready.wait(0.05)
        if not self.ready.is_set():
            raise TransportError(f"the viewer did not start serving on {self.host}:{self.port}")
        return t
