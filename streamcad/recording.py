"""Session recording and replay: a run kept exactly as it happened, on disk.

Data flow::

    pipeline publish thread ──► Recorder (a Sink): write_frame(frame) / write_score / write_status
        ──► bounded queue (full, or the writer more than MAX_LAG_S behind: the item is dropped
            and counted, the pipeline never waits; unpaced recorded media: it waits instead)
        ──► writer thread ──► DIR/frames/00000/00000000.png     (the delivered gray frame, lossless)
                          ──► DIR/frames.jsonl                  (one line per frame: index, stamps, file)
                          ──► DIR/messages.jsonl                (every published message, wire JSON)
                          (lines flushed at least every FLUSH_S; a SIGKILL loses at most ~1 s)
        DIR/drops.jsonl  (the writer's running drop counts, a line when they change)
        DIR/session.json (at open: format, run config, model id/sha256/path, versions, stream)
        DIR/model.json   (the model manifest as loaded)      DIR/end.json (at a clean close: counts)

    Recording(DIR) ──► frames() / messages() / load_frame()          (a truncated last line is skipped)
    file:DIR   ──► RecordingSource: the frames again, at their recorded pace or as fast as scored
    replay(DIR, endpoint)  ──► the recorded messages, unchanged, at their recorded timing / speed
    streamcad.rescore.rescore(DIR, model) ──► every recorded frame through the pipeline again

Why PNG files and not a video: recorded sessions are for research and model comparison, so the
pixels must come back exactly (re-scoring with the same model must give the same probabilities),
and a recording must survive the process being killed. Measured with this OpenCV build (5.0,
FFmpeg backend; tests cover the PNG path): FFV1 in .mkv and in .avi is lossless, but the writer
buffers in 256 KiB blocks that OpenCV cannot flush, so SIGKILL lost 16 frames (0.5 s at 30 fps;
more at lower rates or smaller frames) from the .mkv and 4 plus a broken one from the .avi;
MJPG is lossy (max error 67 grey levels on noise). A PNG per frame (compression level 1) is
lossless, complete on disk the moment it is written, readable by any tool, survives a resolution
change mid-session. The price (measured, zlib level 1): 1.4-1.6x the disk space of FFV1 (46 KB
per 370x370 frame, 223 KB per 1280x960), 10-27 ms of CPU per frame on the writer thread, and one
file per frame (folders of 1000).

What is recorded is what the pipeline saw: the delivered Frame (gray uint8 image, its source
index, chroma, the colour-flow mask of a colour frame as a 0/1 PNG, sweep label/roi), not the
capture card's colour pixels, which the pipeline never keeps. Smoothing depends on time, so a
re-scored session has the same per-frame probabilities but may differ in `malignancy`/`state`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamcad.errors import SourceError, StreamcadError
from streamcad.messages import Message, Score, Status, decode_payload, encode
from streamcad.ratelimit import LogLimiter
from streamcad.sinks.base import Sink
from streamcad.sources.base import Frame, SourceInfo, ThreadedSource

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "FLUSH_S",
    "RecordingError",
    "Recorder",
    "Recording",
    "FrameEntry",
    "RecordingSource",
    "replay",
]

log = logging.getLogger(__name__)

FORMAT = "streamcad-recording"
FORMAT_VERSION = 1
FLUSH_S = 0.25  # lines reach the kernel at least this often: a kill loses well under a second
_QUEUE_ITEMS = 48  # ~0.8 s of 30 fps (a frame + its score each); a writer this far behind drops
# and, at any rate, a writer whose last item waited this long: what is queued is what a kill loses
MAX_LAG_S = 0.5
_FRAMES_PER_DIR = 1000
_PNG_LEVEL = 1  # fastest zlib level: lossless all the same, ~2x the size of level 9 at 1/5 the time
_END = object()


class RecordingError(StreamcadError):
    """A recording that cannot be written or read: the message names the file and what was expected."""


def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


# =============================================================================== writing
class Recorder(Sink):
    """The recording Sink. See the module docstring for the layout and the guarantees."""

    name = "record"

    def __init__(self, directory: str | Path, *, session: dict | None = None, manifest: dict | None = None,
                 max_size_mb: float = 4096.0, max_duration_s: float = 3600.0, frames: bool = True,
                 lossless: bool = False) -> None:
        if not (max_size_mb > 0 and max_duration_s > 0):
            raise RecordingError(f"record bounds: expected max_size_mb > 0 and max_duration_s > 0, "
                                 f"got {max_size_mb} and {max_duration_s}")
        self.dir = Path(directory).expanduser()
        self.session = {"format": FORMAT, "version": FORMAT_VERSION, "created_utc": _utc_now(), **(session or {})}
        self.manifest = manifest
        self.max_bytes = int(max_size_mb * 1e6)
        self.max_duration_s = float(max_duration_s)
        self.wants_frames = bool(frames)
        # lossless (the source is recorded media read unpaced, where every frame is scored anyway):
        # a full queue makes the publish thread wait for the disk instead of dropping
        self.lossless = bool(lossless)
        self.written = 0  # messages on disk
        self.dropped = 0  # messages the writer could not take in time (queue full)
        self.frames_written = 0
        self.frames_dropped = 0
        self.bytes_written = 0
        self.stopped: str | None = None  # why recording stopped before close (a bound reached)
        self.error: str | None = None  # the writer failed (disk full, ...): recording stopped
        self._q: queue.Queue = queue.Queue(maxsize=_QUEUE_ITEMS)
        self._lag_s = 0.0  # how long the item the writer took last had waited (the backlog, in time)
        self._limiter = LogLimiter(10.0)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._t_first: float | None = None
        self._frames_f = self._messages_f = self._drops_f = None
        self._drops_written = (0, 0)

    @classmethod
    def from_config(cls, config, context: dict | None = None) -> Recorder:
        """The [record] section of a RunConfig; `context` may carry the loaded model (manifest,
        id, sha256, the path it came from) and the source."""
        import msgspec

        from streamcad import __version__
        from streamcad.manifest import git_commit, library_versions

        r = config.record
        ctx = context or {}
        model = ctx.get("model")
        manifest = model.manifest.to_dict() if getattr(model, "manifest", None) is not None else None
        session = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "created_utc": _utc_now(),
            "streamcad": __version__,
            "git_commit": git_commit(Path(__file__).resolve().parents[1]),
            "versions": library_versions(("pyzmq", "msgspec")),
            "config": msgspec.to_builtins(config),
            "stream": config.publish.stream,
            "source_uri": config.source.uri,
            "model": None if model is None else {
                "id": model.model_id, "sha256": model.sha256, "path": ctx.get("model_path"),
                "backend": getattr(model.backend, "name", None)},
            "frames": {"codec": "png", "pixels": "the delivered Frame.image: gray uint8 (H, W)",
                       "layout": "frames/NNNNN/NNNNNNNN.png, indexed by frames.jsonl"},
        }
        return cls(r.dir, session=session, manifest=manifest, max_size_mb=r.max_size_mb,
                   max_duration_s=r.max_duration_s, frames=r.frames,
                   lossless=bool(getattr(ctx.get("source"), "lossless", False)))

    # --- Sink --------------------------------------------------------------------------------
    def open(self) -> None:
        if self._thread is not None:
            return
        d = self.dir
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            raise RecordingError(f"record dir {d}: exists and is not an empty directory; expected a new or "
                                 "empty directory (a recording is never overwritten)")
        try:
            (d / "frames").mkdir(parents=True, exist_ok=True)
            _write_json_atomic(d / "session.json", self.session)
            if self.manifest is not None:
                _write_json_atomic(d / "model.json", self.manifest)
            self._frames_f = open(d / "frames.jsonl", "ab")  # noqa: SIM115 (closed by the writer thread)
            self._messages_f = open(d / "messages.jsonl", "ab")  # noqa: SIM115
            self._drops_f = open(d / "drops.jsonl", "ab")  # noqa: SIM115
        except OSError as exc:
            raise RecordingError(f"record dir {d}: cannot write: {exc}") from exc
        self._thread = threading.Thread(target=self._writer, name="streamcad-recorder", daemon=True)
        self._thread.start()
        log.info("recording to %s (frames: %s, bounds %.0f MB / %.0f s)", d, "png" if self.wants_frames else "off",
                 self.max_bytes / 1e6, self.max_duration_s)

    def _offer(self, item) -> bool:
        if self._thread is None:
            raise RecordingError(f"record dir {self.dir}: write before open()")
        if self._closed or self.stopped or self.error:
            return False  # stopped on a bound (said once in the log), not a drop
        try:
            if self.lossless:
                self._q.put((time.monotonic(), item), timeout=10.0)  # a writer stuck this long counts as dropping
            elif self._lag_s > MAX_LAG_S:  # the writer is behind by more than the kill budget allows
                return False
            else:
                self._q.put_nowait((time.monotonic(), item))
            return True
        except queue.Full:
            return False

    def _dropped(self, what: str) -> None:
        self._limiter.warning(log, "dropped", "recording %s: the writer is behind (%.2f s); dropped %d messages and "
                              "%d frames so far (%s now)", self.dir, self._lag_s, self.dropped, self.frames_dropped, what)

    def write_score(self, msg: Score) -> bool:
        ok = self._offer(("msg", encode(msg, "json")))
        if not ok and not (self.stopped or self.error or self._closed):
            self.dropped += 1
            self._dropped("a message")
        return ok

    write_status = write_score

    def write_frame(self, frame: Frame) -> bool:
        item = ("frame", frame.index, frame.t_capture_ns, float(frame.chroma), frame.label,
                None if frame.roi is None else [int(v) for v in frame.roi], frame.image.copy(),
                None if frame.colour is None else frame.colour.copy())
        ok = self._offer(item)
        if not ok and not (self.stopped or self.error or self._closed):
            self.frames_dropped += 1
            self._dropped("a frame")
        return ok

    def close(self) -> None:
        """Write what is queued (up to 10 s), then end.json. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        try:
            self._q.put(_END, timeout=10.0)
        except queue.Full:
            log.warning("recording %s: writer did not drain in 10 s; closing without the queued items", self.dir)
        self._thread.join(10.0)
        end = {"ended_utc": _utc_now(), "frames": self.frames_written, "messages": self.written,
               "dropped_messages": self.dropped, "dropped_frames": self.frames_dropped,
               "bytes": self.bytes_written, "stopped": self.stopped, "error": self.error}
        try:
            _write_json_atomic(self.dir / "end.json", end)
        except OSError as exc:
            log.error("recording %s: cannot write end.json: %s", self.dir, exc)
        log.info("recording %s closed: %d frames, %d messages, %d+%d dropped%s", self.dir, self.frames_written,
                 self.written, self.dropped, self.frames_dropped, f", stopped: {self.stopped}" if self.stopped else "")

    # --- the writer thread -------------------------------------------------------------------
    def _writer(self) -> None:
        last_flush = time.monotonic()
        try:
            while True:
                try:
                    got = self._q.get(timeout=FLUSH_S)
                except queue.Empty:
                    got, self._lag_s = None, 0.0
                if got is _END:
                    break
                if got is not None:
                    t_put, item = got
                    self._lag_s = time.monotonic() - t_put
                    if not self.stopped:
                        self._write(item)
                now = time.monotonic()
                if now - last_flush >= FLUSH_S or self._q.empty():
                    self._frames_f.flush()
                    self._messages_f.flush()
                    self._note_drops()
                    last_flush = now
        except Exception as exc:  # a full disk, a removed folder: recording stops, the run goes on
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("recording %s stopped: %s", self.dir, self.error)
        finally:
            self._note_drops()
            for f in (self._frames_f, self._messages_f, self._drops_f):
                try:
                    f.close()
                except OSError:
                    log.exception("recording %s: close failed", self.dir)

    def _note_drops(self) -> None:
        """drops.jsonl: the running drop counts, a line whenever they changed (so a killed
        recording still says what its writer dropped, besides the seq gaps in messages.jsonl)."""
        now = (self.dropped, self.frames_dropped)
        if now != self._drops_written:
            self._drops_f.write(json.dumps({"t_ns": time.monotonic_ns(), "dropped_messages": now[0],
                                            "dropped_frames": now[1]}).encode() + b"\n")
            self._drops_f.flush()
            self._drops_written = now

    def _within_bounds(self, extra: int) -> bool:
        now = time.monotonic()
        if self._t_first is None:
            self._t_first = now
        if self.bytes_written + extra > self.max_bytes:
            self.stopped = f"max_size_mb {self.max_bytes / 1e6:g} reached"
        elif now - self._t_first > self.max_duration_s:
            self.stopped = f"max_duration_s {self.max_duration_s:g} reached"
        if self.stopped:
            log.warning("recording %s stopped: %s (the run goes on)", self.dir, self.stopped)
            return False
        return True

    def _write(self, item: tuple) -> None:
        import cv2

        if item[0] == "msg":
            line = item[1] + b"\n"
            if self._within_bounds(len(line)):
                self._messages_f.write(line)
                self.bytes_written += len(line)
                self.written += 1
            return
        _, index, t_ns, chroma, label, roi, image, colour = item
        n = self.frames_written
        rel = f"frames/{n // _FRAMES_PER_DIR:05d}/{n:08d}.png"
        ok, png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, _PNG_LEVEL])
        if not ok:
            raise RecordingError(f"PNG encoding failed for frame {index} ({image.shape} {image.dtype})")
        blobs = [(rel, png.tobytes())]
        colour_rel = None
        if colour is not None:
            colour_rel = rel[:-4] + ".colour.png"
            ok, cpng = cv2.imencode(".png", colour, [cv2.IMWRITE_PNG_COMPRESSION, _PNG_LEVEL])
            if not ok:
                raise RecordingError(f"PNG encoding failed for the colour mask of frame {index}")
            blobs.append((colour_rel, cpng.tobytes()))
        entry = {"n": n, "index": index, "t_capture_ns": t_ns, "chroma": chroma, "label": label, "roi": roi,
                 "file": rel, "colour": colour_rel, "shape": list(image.shape)}
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        if not self._within_bounds(sum(len(b) for _, b in blobs) + len(line)):
            return
        if n % _FRAMES_PER_DIR == 0:
            (self.dir / rel).parent.mkdir(exist_ok=True)
        for r, blob in blobs:
            with open(self.dir / r, "wb") as f:  # complete before its index line is written
                f.write(blob)
        self._frames_f.write(line)
        self.bytes_written += sum(len(b) for _, b in blobs) + len(line)
        self.frames_written += 1


# =============================================================================== reading
@dataclass(frozen=True, slots=True)
class FrameEntry:
    """One line of frames.jsonl."""

    n: int  # position in the recording, from 0
    index: int  # the source's frame index (Score.frame_index)
    t_capture_ns: int
    chroma: float
    label: str | None
    roi: tuple[int, int, int, int] | None
    file: str
    colour: str | None
    shape: tuple[int, int]


def _read_lines(path: Path, what: str) -> list[bytes]:
    """The complete lines of a JSON-lines file: a last line cut short by a kill is skipped (logged)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1]:
        log.warning("%s: the last %s line is incomplete (the recorder was stopped mid-write): skipped", path, what)
    return [ln for ln in lines[:-1] if ln]


class Recording:
    """A recording directory, read back. Raises RecordingError naming the file for anything that
    is not a recording of this format."""

    def __init__(self, directory: str | Path) -> None:
        d = Path(directory).expanduser()
        sp = d / "session.json"
        if not sp.is_file():
            raise RecordingError(f"{d}: not a streamcad recording (no session.json); expected a folder written "
                                 "by `streamcad run --record DIR`")
        try:
            session = json.loads(sp.read_text())
        except (OSError, ValueError) as exc:
            raise RecordingError(f"{sp}: unreadable: {exc}") from exc
        if not isinstance(session, dict) or session.get("format") != FORMAT:
            raise RecordingError(f"{sp}: format {session.get('format') if isinstance(session, dict) else None!r}, "
                                 f"expected {FORMAT!r}")
        if session.get("version") != FORMAT_VERSION:
            raise RecordingError(f"{sp}: recording format version {session.get('version')!r}; this streamcad "
                                 f"reads version {FORMAT_VERSION}")
        self.dir = d
        self.session = session
        ep = d / "end.json"
        self.end: dict | None = json.loads(ep.read_text()) if ep.is_file() else None

    @property
    def complete(self) -> bool:
        """False when the recorder was killed (no end.json): at most the last second is missing."""
        return self.end is not None

    @property
    def drops(self) -> dict:
        """What the writer dropped (queue full or too far behind): end.json's counts, else the
        last line of drops.jsonl (a killed recording), else none."""
        if self.end is not None:
            return {"dropped_messages": self.end["dropped_messages"], "dropped_frames": self.end["dropped_frames"]}
        lines = _read_lines(self.dir / "drops.jsonl", "drops.jsonl")
        last = json.loads(lines[-1]) if lines else {}
        return {"dropped_messages": int(last.get("dropped_messages", 0)),
                "dropped_frames": int(last.get("dropped_frames", 0))}

    @property
    def manifest(self) -> dict | None:
        p = self.dir / "model.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def frames(self) -> list[FrameEntry]:
        out = []
        for i, line in enumerate(_read_lines(self.dir / "frames.jsonl", "frames.jsonl"), 1):
            try:
                e = json.loads(line)
                out.append(FrameEntry(n=int(e["n"]), index=int(e["index"]), t_capture_ns=int(e["t_capture_ns"]),
                                      chroma=float(e["chroma"]), label=e.get("label"),
                                      roi=None if e.get("roi") is None else tuple(e["roi"]), file=str(e["file"]),
                                      colour=e.get("colour"), shape=tuple(e["shape"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise RecordingError(f"{self.dir / 'frames.jsonl'} line {i}: {exc}; expected the recorder's "
                                     "frame entry (n, index, t_capture_ns, chroma, file, shape, ...)") from exc
        return out

    def messages(self) -> list[Message]:
        """Every recorded message, in the order published (decoded strictly, as a subscriber would)."""
        out = []
        for i, line in enumerate(_read_lines(self.dir / "messages.jsonl", "messages.jsonl"), 1):
            try:
                out.append(decode_payload(line))
            except StreamcadError as exc:
                raise RecordingError(f"{self.dir / 'messages.jsonl'} line {i}: {exc}") from exc
        return out

    def load_frame(self, e: FrameEntry, t_capture_ns: int | None = None) -> Frame:
        """The recorded Frame (pixels exactly as delivered), stamped `t_capture_ns` (default: the recorded stamp)."""
        import cv2

        img = cv2.imread(str(self.dir / e.file), cv2.IMREAD_UNCHANGED)
        if img is None or img.shape != tuple(e.shape) or img.dtype != np.uint8:
            raise RecordingError(f"{self.dir / e.file}: unreadable or not the recorded {tuple(e.shape)} uint8 frame")
        colour = None
        if e.colour is not None:
            colour = cv2.imread(str(self.dir / e.colour), cv2.IMREAD_UNCHANGED)
            if colour is None:
                raise RecordingError(f"{self.dir / e.colour}: unreadable colour mask")
        return Frame(img, e.t_capture_ns if t_capture_ns is None else t_capture_ns, e.index, e.chroma, e.label,
                     e.roi, colour)


# =============================================================================== file:DIR
class RecordingSource(ThreadedSource):
    """``file:DIR`` where DIR is a recording: its frames with their source index, chroma, colour
    mask and label. ``pace='native'`` keeps the recorded intervals between frames, ``'none'``
    delivers every frame as fast as the pipeline takes them (lossless); ``loop`` starts over."""

    backend_name = "recording"

    def __init__(self, path: str | Path, *, loop: bool = False, pace: str = "native", **kwargs) -> None:
        from streamcad.errors import ConfigError

        if pace not in ("native", "none"):
            raise ConfigError(f"pace: expected 'native' or 'none', got {pace!r}")
        try:
            self.recording = Recording(path)
            self.entries = self.recording.frames()
        except RecordingError as exc:
            raise SourceError(str(exc)) from exc
        if not self.entries:
            raise SourceError(f"file:{path}: the recording has no frames (recorded with [record] frames = false, "
                              "or killed before the first one); expected at least one")
        super().__init__(f"file:{Path(path).expanduser()}", **kwargs)
        self.loop = bool(loop)
        self.pace = pace
        self.lossless = pace == "none"
        self._pos = 0
        self._t0: float | None = None  # monotonic s when the frame at _pos0 was due
        self._pos0 = 0

    def _fps(self) -> float:
        e = self.entries
        if len(e) < 2:
            return 0.0
        span = (e[-1].t_capture_ns - e[0].t_capture_ns) / 1e9
        return (len(e) - 1) / span if span > 0 else 0.0

    def _open(self) -> SourceInfo:
        h, w = self.entries[min(self._pos, len(self.entries) - 1)].shape
        return SourceInfo(uri=self.uri, width=int(w), height=int(h), fps=self._fps(), fourcc="png",
                          backend="recording", extra={"frames": len(self.entries), "loop": self.loop,
                                                      "pace": self.pace, "complete": self.recording.complete})

    def _grab(self) -> Frame | None:
        if self._pos >= len(self.entries):
            if not self.loop:
                return None
            self._pos, self._t0 = 0, None
        e = self.entries[self._pos]
        if self.pace == "native":
            now = time.monotonic()
            if self._t0 is None:
                self._t0, self._pos0 = now, self._pos
            due = self._t0 + (e.t_capture_ns - self.entries[self._pos0].t_capture_ns) / 1e9
            if due > now and self._stop.wait(due - now):
                return None
        try:
            frame = self.recording.load_frame(e)
        except RecordingError as exc:
            from streamcad.sources.base import SourceFailed

            raise SourceFailed(str(exc)) from exc
        self._pos += 1
        return frame

    def _at_end(self) -> bool:
        return self._pos >= len(self.entries) and not self.loop

    def _release(self) -> None:
        pass


# =============================================================================== replay / rescore
def replay(directory: str | Path, *, endpoint: str, speed: float = 1.0, encoding: str = "json",
           allow_remote: bool = False, wait_subscribers: int = 1, wait_timeout_s: float = 30.0,
           stop: threading.Event | None = None) -> dict:
    """Publish the recorded messages, unchanged (publisher id, seq, stamps as recorded), on a
    bound ZeroMQ endpoint with their recorded timing divided by `speed`. Waits up to
    `wait_timeout_s` for `wait_subscribers` subscriptions first (0: start at once). Returns counts."""
    import math

    from streamcad.transport import Publisher

    if not (isinstance(speed, (int, float)) and 0 < speed < math.inf):
        raise RecordingError(f"--speed: expected a finite number > 0, got {speed!r}")
    rec = Recording(directory)
    msgs = rec.messages()
    if not msgs:
        raise RecordingError(f"{rec.dir}: no recorded messages to replay")
    stop = stop or threading.Event()
    span_s = (msgs[-1].t_publish_ns - msgs[0].t_publish_ns) / 1e9
    rate = max(1.0, len(msgs) / span_s * speed) if span_s > 0 else 1000.0
    with Publisher(endpoint, stream=msgs[0].stream, encoding=encoding, allow_remote=allow_remote, fps=rate) as pub:
        deadline = time.monotonic() + wait_timeout_s
        while wait_subscribers and pub.subscriptions < wait_subscribers and not stop.is_set():
            if time.monotonic() >= deadline:
                log.warning("replay: %d of %d subscriber(s) after %.0f s: starting anyway",
                            pub.subscriptions, wait_subscribers, wait_timeout_s)
                break
            pub.poll()
            stop.wait(0.02)
        log.info("replaying %d messages of %s on %s at %gx (%.1f s)", len(msgs), rec.dir, pub.endpoint, speed,
                 span_s / speed)
        t0, first_ns = time.monotonic(), msgs[0].t_publish_ns
        sent = 0
        for msg in msgs:
            due = t0 + (msg.t_publish_ns - first_ns) / 1e9 / speed
            delay = due - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
            ok = pub.write_score(msg) if isinstance(msg, Score) else pub.write_status(msg) \
                if isinstance(msg, Status) else False
            sent += bool(ok)
            pub.poll()
        return {"messages": len(msgs), "sent": sent, "dropped": pub.dropped, "endpoint": pub.endpoint,
                "speed": speed, "recorded_s": span_s}
