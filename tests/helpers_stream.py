"""Real network stream servers on 127.0.0.1 for the url: source tests, built on FFmpeg.

    HttpFeed: ``ffmpeg -re -stream_loop -1 -i CLIP -f mpegts -listen 1 http://127.0.0.1:PORT``,
        FFmpeg's own HTTP server (one client per process); stall() SIGSTOPs it, stop() kills it.
    RtpFeed + RtspServer: FFmpeg's RTSP muxer cannot listen for players (``-rtsp_flags listen``
        is for receiving an ANNOUNCE/RECORD, measured: OpenCV's client gets "connection
        refused"), so FFmpeg sends RTP over UDP to RtpFeed (``-f rtp -sdp_file``) and RtspServer,
        a small RTSP/1.0 server, answers DESCRIBE with FFmpeg's SDP and relays the RTP packets
        interleaved on the RTSP connection (RTP/AVP/TCP; a UDP SETUP gets 461, so FFmpeg's
        client falls back to TCP by itself). stall() holds the packets back; stop() closes the
        server and every session (a restart is a new RtspServer on the same port).

Everything skips (pytest.skip) when the ``ffmpeg`` binary is missing.
"""

from __future__ import annotations

import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest


def need_ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        pytest.skip("ffmpeg is not installed (Debian: apt-get install ffmpeg)")
    return exe


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_clip(path: Path, seconds: float = 2.0, fps: int = 25, size: str = "320x240") -> Path:
    """A real H.264 clip (FFmpeg's test pattern, a keyframe every 0.2 s: a joining player gets
    a picture quickly)."""
    exe = need_ffmpeg()
    subprocess.run([exe, "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate={fps}",
                    "-t", str(seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", str(fps // 5),
                    "-bf", "0", str(path)], check=True, timeout=60)
    return path


class _Ffmpeg:
    def __init__(self, args: list[str]) -> None:
        import tempfile

        self.log = tempfile.NamedTemporaryFile(prefix="ffmpeg-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen([need_ffmpeg(), "-v", "error", "-nostdin", *args],
                                     stdout=subprocess.DEVNULL, stderr=self.log)

    def log_tail(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-500:]

    def stall(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


class HttpFeed(_Ffmpeg):
    """FFmpeg serving CLIP (looped, at its own rate) as MPEG-TS over HTTP on 127.0.0.1:port."""

    def __init__(self, clip: Path, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/live.ts"
        args = ["-re", "-stream_loop", "-1", "-i", str(clip), "-c:v", "copy", "-an",
                "-f", "mpegts", "-listen", "1", self.url]
        for _ in range(5):  # a restart on the same port may race the old socket's teardown
            super().__init__(args)
            if _wait_listening(port, self.proc):
                return
            time.sleep(0.3)
        raise AssertionError(f"ffmpeg never listened on 127.0.0.1:{port}: {self.log_tail()}")


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> bool:
    """Wait until a socket LISTENs on 127.0.0.1:port, without connecting to it (FFmpeg's
    ``-listen 1`` serves exactly one client: a probe connection would be that client).
    False when the process exited first."""
    want = f"0100007F:{port:04X}"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[1] == want and cols[3] == "0A":  # 0A = TCP_LISTEN
                    return True
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class RtpFeed(_Ffmpeg):
    """FFmpeg sending CLIP (looped, at its own rate) as RTP/UDP to a socket of ours; packets()
    yields them. The SDP FFmpeg wrote describes the stream."""

    def __init__(self, clip: Path, workdir: Path) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        port = self.sock.getsockname()[1]
        sdp = workdir / "feed.sdp"
        super().__init__(["-re", "-stream_loop", "-1", "-i", str(clip), "-c:v", "copy", "-an",
                          "-f", "rtp", "-sdp_file", str(sdp), f"rtp://127.0.0.1:{port}?rtcpport={port}"])
        end = time.monotonic() + 10
        while not (sdp.is_file() and "m=video" in sdp.read_text()) and time.monotonic() < end:
            time.sleep(0.05)
        self.sdp = sdp.read_text()
        self.sinks: list = []  # callables taking one RTP packet
        self.held = threading.Event()  # set: packets are dropped (a stalled camera)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while not self._stop.is_set():
            try:
                pkt = self.sock.recv(65536)
            except (TimeoutError, OSError):
                continue
            if len(pkt) >= 2 and 200 <= pkt[1] <= 204:  # RTCP (rtcpport = the same port): not video
                continue
            if self.held.is_set():
                continue
            for sink in list(self.sinks):
                sink(pkt)

    def stall(self) -> None:
        self.held.set()

    def resume(self) -> None:
        self.held.clear()

    def stop(self) -> None:
        self._stop.set()
        super().stop()
        self._thread.join(2)
        self.sock.close()


class RtspServer:
    """RTSP/1.0 on 127.0.0.1:port serving one RtpFeed at rtsp://127.0.0.1:port/live (TCP
    interleaved RTP only)."""

    def __init__(self, feed: RtpFeed, port: int) -> None:
        self.feed = feed
        self.port = port
        self.url = f"rtsp://127.0.0.1:{port}/live"
        self.sessions = 0  # PLAYs served
        self._lsock = socket.socket()
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind(("127.0.0.1", port))
        self._lsock.listen(4)
        self._lsock.settimeout(0.2)
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _sdp(self) -> str:
        lines = []
        for line in self.feed.sdp.strip().splitlines():
            if line.startswith("m=video"):
                parts = line.split()
                parts[1] = "0"
                line = " ".join(parts)
                lines += [line, "a=control:track0"]
                continue
            if line.startswith("c="):
                line = "c=IN IP4 0.0.0.0"
            lines.append(line)
        return "\r\n".join(lines) + "\r\n"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._lsock.accept()
            except (TimeoutError, OSError):
                continue
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        lock = threading.Lock()
        sink = None
        buf = b""
        conn.settimeout(0.2)
        try:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                buf += data
                while True:
                    if buf[:1] == b"$":  # interleaved RTCP from the client
                        if len(buf) < 4:
                            break
                        n = struct.unpack(">H", buf[2:4])[0]
                        if len(buf) < 4 + n:
                            break
                        buf = buf[4 + n:]
                        continue
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head, buf = buf[:end].decode("latin-1"), buf[end + 4:]
                    sink = self._answer(conn, lock, head, sink)
        except OSError:
            return
        finally:
            if sink in self.feed.sinks:
                self.feed.sinks.remove(sink)
            conn.close()

    def _answer(self, conn, lock, head: str, sink):
        lines = head.split("\r\n")
        method = lines[0].split()[0]
        hdr = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        cseq = hdr.get("cseq", "0")
        extra, body, status = {}, "", "200 OK"
        if method == "OPTIONS":
            extra["Public"] = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER"
        elif method == "DESCRIBE":
            body = self._sdp()
            extra.update({"Content-Type": "application/sdp", "Content-Base": self.url + "/"})
        elif method == "SETUP":
            transport = hdr.get("transport", "")
            if "TCP" not in transport.upper():
                status = "461 Unsupported Transport"
            else:
                extra.update({"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1", "Session": "1234"})
        elif method == "PLAY":
            extra["Session"] = "1234"

            def sink(pkt: bytes, conn=conn, lock=lock) -> None:
                with lock:
                    try:
                        conn.sendall(b"$\x00" + struct.pack(">H", len(pkt)) + pkt)
                    except OSError:
                        pass

            self.sessions += 1
        elif method not in ("TEARDOWN", "GET_PARAMETER", "SET_PARAMETER"):
            status = "501 Not Implemented"
        msg = f"RTSP/1.0 {status}\r\nCSeq: {cseq}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in extra.items())
        msg += f"Content-Length: {len(body)}\r\n\r\n{body}"
        with lock:
            conn.sendall(msg.encode("latin-1"))
        if method == "PLAY" and sink is not None:
            self.feed.sinks.append(sink)
        return sink

    def stop(self) -> None:
        """The server goes away: listening socket and every session closed."""
        self._stop.set()
        self._thread.join(2)
        self._lsock.close()
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self.feed.sinks.clear()


def wait_state(src, states, timeout: float = 20.0, read: bool = True) -> list:
    """Read frames until src.state is one of `states`; returns the frames read meanwhile."""
    frames, end = [], time.monotonic() + timeout
    states = {str(s) for s in states}
    while time.monotonic() < end:
        if str(src.state) in states:
            return frames
        f = src.read(timeout=0.1) if read else None
        if f is not None:
            frames.append(f)
        elif not read:
            time.sleep(0.05)
    raise AssertionError(f"source never reached {sorted(states)} within {timeout} s: {src.stats}")
