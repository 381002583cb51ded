"""`streamcad view` in a real browser: headless Chromium (Debian's package; `make test` installs
it where apt-get can) driven over the DevTools protocol, against a real pipeline (sweep source,
the shipped model, previews on) and the real viewer server, on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the viewer extra (aiohttp) is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian: apt-get install chromium; make test does it)")

from streamcad.client import Subscriber  # noqa: E402
from streamcad.commands.view import parse_http  # noqa: E402
from streamcad.config import config_from_dict  # noqa: E402
from streamcad.dashboard import FLAG_TEXT  # noqa: E402
from streamcad.errors import TransportError  # noqa: E402
from streamcad.messages import Score  # noqa: E402
from streamcad.pipeline import Pipeline  # noqa: E402
from streamcad.sources.sweep import SweepSource  # noqa: E402
from streamcad.transport import Publisher  # noqa: E402
from streamcad.viewer.server import ViewerServer  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _BlankableSweep(SweepSource):
    """The sweep; while `blank` is set it delivers black frames (scored 'flagged', flag 'blank')."""

    def __init__(self, **kw) -> None:
        super().__init__("", **kw)
        self.blank = threading.Event()

    def _grab(self):
        f = super()._grab()
        if f is not None and self.blank.is_set():
            return np.zeros_like(f.image)
        return f


class Browser:
    """Headless Chromium on a page, driven over the DevTools protocol (aiohttp's WebSocket client)."""

    def __init__(self, url: str, size=(1150, 660)) -> None:
        self.profile = tempfile.mkdtemp(prefix="streamcad-chromium-")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
             "--no-first-run", "--disable-extensions", f"--user-data-dir={self.profile}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--window-size={size[0]},{size[1]}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.loop = asyncio.new_event_loop()
        self._id = 0
        try:
            port = self._devtools_port()
            page = self._page_target(port)
            self.session = self.loop.run_until_complete(self._open(page["webSocketDebuggerUrl"]))
        except BaseException:
            self.close()
            raise

    def _devtools_port(self, timeout: float = 30.0) -> int:
        f = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            if f.is_file() and f.read_text().strip():
                return int(f.read_text().split()[0])
            time.sleep(0.05)
        raise TimeoutError("chromium did not open its DevTools port")

    def _page_target(self, port: int) -> dict:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages:
                return pages[0]
            time.sleep(0.05)
        raise TimeoutError("chromium has no page target")

    async def _open(self, ws_url: str):
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(ws_url, max_msg_size=0)
        return http, ws

    async def _call(self, method: str, params: dict) -> dict:
        _, ws = self.session
        self._id += 1
        await ws.send_json({"id": self._id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(ws.receive_json(), 20)
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def call(self, method: str, **params) -> dict:
        return self.loop.run_until_complete(self._call(method, params))

    def js(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_js(self, expression: str, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        err = None
        while time.monotonic() < deadline:
            try:
                v = self.js(expression)
            except RuntimeError as exc:  # the page is still loading (an element not there yet)
                v, err = None, exc
            if v:
                return v
            time.sleep(0.05)
        raise TimeoutError(f"the page never satisfied: {expression} (last error: {err})")

    def screenshot(self, clip: dict | None = None) -> np.ndarray:
        params = {"format": "png"}
        if clip is not None:
            params["clip"] = dict(clip, scale=1)
        png = base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])
        return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)

    def close(self) -> None:
        if getattr(self, "session", None):
            http, ws = self.session
            self.loop.run_until_complete(ws.close())
            self.loop.run_until_complete(http.close())
        self.loop.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


_CANVAS = "(() => { const r = document.querySelector('.panel canvas.image').getBoundingClientRect(); " \
          "return {x: r.x, y: r.y, width: r.width, height: r.height}; })()"
_SHOWN = "(() => { const m = document.querySelector('.panel .malignancy'); " \
         "return m && m.dataset.frame !== undefined ? [Number(m.dataset.frame), m.textContent] : null; })()"


def test_the_page_shows_the_live_stream_in_a_real_browser():
    ep = f"tcp://127.0.0.1:{_free_port()}"
    cfg = config_from_dict({"dashboard": False, "publish": {"endpoint": ep, "stream": "probe0"},
                            "preview": {"enabled": True, "fps": 10}})
    src = _BlankableSweep(pace="native", fps=30.0, seed=0, loop=True)
    scores: dict[int, Score] = {}
    stop_sub = threading.Event()

    def record(sub: Subscriber) -> None:  # our own subscriber: the messages the page must agree with
        while not stop_sub.is_set():
            m = sub.recv(0.2)
            if isinstance(m, Score):
                scores[m.frame_index] = m

    with Pipeline(cfg, source=src) as pipe, Subscriber(ep, kinds=("score",)) as sub:
        server = ViewerServer([ep], host="127.0.0.1", port=_free_port())
        server.serve_in_thread()
        rec = threading.Thread(target=record, args=(sub,), daemon=True)
        rec.start()
        time.sleep(0.3)
        run = threading.Thread(target=pipe.run, daemon=True)
        run.start()
        browser = Browser(server.url)
        try:
            browser.wait_js("document.querySelector('.panel .no-preview')?.hidden === true")
            clip = browser.js(_CANVAS)
            first = browser.screenshot(clip)
            browser.wait_js("document.querySelector('.panel .meta').textContent.includes('preview')")
            time.sleep(1.0)
            second = browser.screenshot(clip)
            # the picture is live: it changed between the two screenshots, and it is a picture
            assert first.shape == second.shape and first.std() > 10
            assert np.abs(first.astype(float) - second.astype(float)).mean() > 0.5

            # a flagged frame shows its flag, in the words the docs give a clinician
            src.blank.set()
            li = browser.wait_js("document.querySelector('.panel .flags li[data-flag=\"blank\"]')?.textContent")
            assert li == FLAG_TEXT["blank"]
            frame, _ = browser.js(_SHOWN)
            assert scores[frame].flags == ["blank"] and scores[frame].state == "flagged"
            assert browser.js("document.querySelector('.panel .state-box').dataset.state") == "flagged"
            src.blank.clear()
            browser.wait_js("document.querySelector('.panel .flags').children.length === 0")
            scored = "panels.get('probe0').preview && panels.get('probe0').preview.saliency !== null"
            browser.wait_js(scored)  # the picture is a scored frame again

            # the score text is the last score message's
            pipe.stop()
            run.join(10)
            time.sleep(0.5)
            stop_sub.set()
            rec.join(5)
            last = scores[max(scores)]
            shown = browser.wait_js(f"(() => {{ const s = {_SHOWN}; return s && s[0] === {last.frame_index} ? s : null; }})()")
            want = "–" if last.malignancy is None else f"{last.malignancy:.3f}"
            assert shown[1] == want, (shown, last.malignancy)

            # overlays are data, drawn on the page: the heat-map toggle changes pixels inside the
            # sector box only (the picture itself stays as it was)
            time.sleep(0.3)
            assert browser.js(scored), "the last preview shown is of an unscored frame"
            off = browser.screenshot(clip)
            browser.js("document.getElementById('show-saliency').click()")
            time.sleep(0.3)
            on = browser.screenshot(clip)
            diff = np.abs(on.astype(int) - off.astype(int)).sum(axis=2) > 0
            assert diff.any(), "the saliency toggle changed nothing"
            ys, xs = np.nonzero(diff)
            # everything that changed lies inside the scored ROI, scaled onto the canvas
            state = json.loads(urllib.request.urlopen(server.url + "api/state", timeout=5).read())
            prev = state["streams"]["probe0"]["preview"]
            k = clip["width"] / prev["frame_width"]
            rx, ry, rw, rh = (v * k for v in prev["roi"])
            assert xs.min() >= rx - 2 and xs.max() <= rx + rw + 2 and ys.min() >= ry - 2 and ys.max() <= ry + rh + 2
        finally:
            browser.close()
            server.stop()


def test_http_is_loopback_unless_allowed():
    assert parse_http("127.0.0.1:8080", False) == ("127.0.0.1", 8080)
    assert parse_http("8081", False) == ("127.0.0.1", 8081)
    assert parse_http("[::1]:8082", False) == ("::1", 8082)
    with pytest.raises(TransportError, match="refusing to bind"):
        parse_http("0.0.0.0:8080", False)
    assert parse_http("0.0.0.0:8080", True) == ("0.0.0.0", 8080)
    with pytest.raises(TransportError, match="expected HOST:PORT"):
        parse_http("localhost:http", False)


def _jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def test_one_panel_per_stream_and_the_lesion_box_is_drawn_from_data():
    """Two publishers (two probes) through one viewer: two panels. A preview whose score has a
    lesion box: the page names it, and the lesion toggle changes pixels on the box's outline only."""
    import msgspec

    from streamcad.messages import Preview

    eps = [f"tcp://127.0.0.1:{_free_port()}" for _ in range(2)]
    pubs = [Publisher(ep, stream=name) for ep, name in zip(eps, ("left", "right"), strict=True)]
    server = ViewerServer(eps, host="127.0.0.1", port=_free_port())
    server.serve_in_thread()
    browser = None
    img = np.full((300, 400), 90, np.uint8)
    img[50:250, 100:300] = 160  # the 'sector'
    roi, box = (100, 50, 200, 200), (150, 100, 60, 40)
    try:
        deadline = time.monotonic() + 10
        while any(p.subscriptions < 3 for p in pubs) and time.monotonic() < deadline:
            for p in pubs:
                p.service(0.05)
        browser = Browser(server.url)
        browser.wait_js("document.getElementById('conn').textContent === 'live'")
        for i, p in enumerate(pubs):
            p.publish_score(frame_index=5, t_capture_ns=1000 + i, latency_ms={"infer": 2.0}, probs=None,
                            malignancy=None, state="no_lesion", flags=[], roi=roi, model_sha256="ab",
                            lesion={"box": box, "confidence": 0.9})
        prev = msgspec.convert(dict(
            schema=1, stream="left", publisher=pubs[0].publisher_id, seq=0, frame_index=5, t_capture_ns=1000,
            t_publish_ns=2000, format="jpeg", image=_jpeg(img), width=400, height=300, frame_width=400,
            frame_height=300, roi=roi, saliency=None, lesion={"box": box, "confidence": 0.9}), Preview)
        assert pubs[0].write_preview(prev)
        browser.wait_js("document.querySelectorAll('.panel').length === 2")
        names = browser.js("[...document.querySelectorAll('.panel .stream-name')].map(e => e.textContent).sort()")
        assert names == ["left", "right"]
        browser.wait_js("document.querySelector('.panel[data-stream=\"left\"] .no-preview').hidden === true")
        time.sleep(0.2)
        rect = browser.js("(() => { const r = document.querySelector('.panel[data-stream=\"left\"] canvas.image')"
                          ".getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height}; })()")
        assert (rect["width"], rect["height"]) == (400, 300)
        on = browser.screenshot(rect)
        browser.js("document.getElementById('show-lesion').click()")
        time.sleep(0.2)
        off = browser.screenshot(rect)
        changed = np.abs(on.astype(int) - off.astype(int)).sum(axis=2) > 30
        ys, xs = np.nonzero(changed)
        assert changed.any(), "the lesion toggle changed nothing"
        x, y, w, h = box
        # the outline (2 px) and its label above it: nothing inside the box, nothing elsewhere
        assert xs.min() >= x - 3 and xs.max() <= x + w + 3 + 80 and ys.min() >= y - 20 and ys.max() <= y + h + 3
        assert not changed[y + 4:y + h - 4, x + 4:x + w - 4].any()
        assert browser.js("document.querySelector('.panel[data-stream=\"right\"] .no-preview').hidden") is False
    finally:
        if browser is not None:
            browser.close()
        server.stop()
        for p in pubs:
            p.close()


def test_a_slow_browser_loses_its_oldest_messages_and_only_the_newest_preview_waits():
    from streamcad.viewer.server import _OUTBOX, _Client

    async def go():
        c = _Client()
        for i in range(_OUTBOX + 5):
            c.put("score", "p", f"s{i}")
        c.put("preview", "p", "old")
        c.put("preview", "p", "new")
        c.put("preview", "q", "other")
        return c

    c = asyncio.run(go())
    assert len(c.queue) == _OUTBOX and c.queue[0] == "s5" and c.dropped == 5
    assert c.previews == {"p": "new", "q": "other"}


def test_view_cli_refuses_a_remote_bind_in_one_line():
    import sys

    r = subprocess.run([sys.executable, "-m", "streamcad.cli", "view", "--http", "0.0.0.0:8080"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to bind" in lines[0] and "--allow-remote" in lines[0]


def test_the_viewer_subscribes_with_curve_keys_as_listen_does(tmp_path):
    """A CURVE publisher with an allow-list: the viewer with an allowed key sees the stream, one
    with a key not on the list sees nothing."""
    from streamcad.security import ClientCurve, ServerCurve, generate_keypair

    allow = tmp_path / "allowed"
    allow.mkdir()
    _, server_secret = generate_keypair(tmp_path / "server", "server")
    ok_pub, ok_secret = generate_keypair(tmp_path / "ui", "ok")
    _, bad_secret = generate_keypair(tmp_path / "ui", "bad")
    (allow / "ok.key").write_bytes(ok_pub.read_bytes())
    ep = f"tcp://127.0.0.1:{_free_port()}"
    server_key = tmp_path / "server" / "server.key"
    with Publisher(ep, stream="secure", curve=ServerCurve(server_secret, allow)) as pub:
        viewers = {name: ViewerServer([ep], port=_free_port(), curve=ClientCurve.from_files(secret, server_key))
                   for name, secret in (("ok", ok_secret), ("bad", bad_secret))}
        try:
            for v in viewers.values():
                v.serve_in_thread()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not viewers["ok"].hub.received:
                pub.publish_status()
                time.sleep(0.05)
            for _ in range(10):  # more time for the refused one to (not) get anything
                pub.publish_status()
                time.sleep(0.05)
            states = {n: json.loads(urllib.request.urlopen(v.url + "api/state", timeout=5).read())
                      for n, v in viewers.items()}
        finally:
            for v in viewers.values():
                v.stop()
    assert "secure" in states["ok"]["streams"] and states["ok"]["streams"]["secure"]["status"]["stream"] == "secure"
    assert states["bad"]["streams"] == {} and states["bad"]["received"] == 0
