"""OpenCV-backed sources: video files, V4L2 devices, network URLs and GStreamer pipelines.

    file:PATH            cv2.VideoCapture(path)               loop, pace='native'|'none'
    device:N | device:/dev/videoN   CAP_V4L2                  fourcc (MJPG), width, height, fps
    url:rtsp://... | url:http://... CAP_FFMPEG                open/read timeouts
    gst:PIPELINE         CAP_GSTREAMER (appsink drop=true max-buffers=1 sync=false)

Each is a ThreadedSource: the reader thread calls _grab(); read() hands out the newest frame.

Frame size changes inside one file: OpenCV's FFmpeg backend scales every decoded frame to the
size of the first one (and CAP_PROP_FRAME_WIDTH/HEIGHT keep reporting it), so a file whose
resolution or aspect changes midway would arrive silently rescaled. A file whose packets are
JPEG images (MJPEG, the capture-card format) is therefore read as raw packets and each one
decoded by cv2.imdecode at its real size: a change is seen, counted (resolution_changes) and
reported. For other codecs (H.264, HEVC, ...) OpenCV gives no way to see the coded size, so the
source says it cannot: ``info.extra["size_changes"] == "undetectable"`` and a log line at open.
"""

from __future__ import annotations

import abc
import logging
import math
import re
from pathlib import Path

import numpy as np

from streamcad.errors import ConfigError, SourceError
from streamcad.sources.base import Frame, Pacer, SourceFailed, SourceInfo, ThreadedSource

__all__ = ["CaptureSource", "FileSource", "DeviceSource", "UrlSource", "GstSource", "fix_appsink",
           "expected_rate", "UNPACED_MAX_FPS"]

# Unpaced recorded media go as fast as the pipeline scores: no faster than this (the config's
# fps ceiling; the CPU pipeline reaches ~250 fps). The publisher sizes its queues for it.
UNPACED_MAX_FPS = 1000.0

log = logging.getLogger(__name__)


def _fourcc_str(code: float) -> str:
    c = int(code)
    if c <= 0:
        return ""
    s = "".join(chr((c >> (8 * i)) & 0xFF) for i in range(4))
    return s if s.isprintable() else f"0x{c:08x}"


class CaptureSource(ThreadedSource):
    """Common cv2.VideoCapture plumbing: each _open() creates a fresh capture (the watchdog may
    have abandoned the previous one inside a blocked read, so it is never reused)."""

    backend_name = "opencv"

    def __init__(self, uri: str, **kwargs):
        super().__init__(uri, **kwargs)
        self._cap = None

    @abc.abstractmethod
    def _new_capture(self):  # -> cv2.VideoCapture
        ...

    def _describe(self) -> str:
        return self.uri

    def _open(self) -> SourceInfo:
        import cv2

        try:
            cap = self._new_capture()
        except cv2.error as exc:
            raise SourceError(f"{self._describe()}: OpenCV could not open it: {exc}") from exc
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self._describe()}: OpenCV could not open it (isOpened() is False)")
        self._cap = cap
        self._configure(cap)
        return SourceInfo(
            uri=self.uri,
            width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            fps=_finite(cap.get(cv2.CAP_PROP_FPS)),
            fourcc=_fourcc_str(cap.get(cv2.CAP_PROP_FOURCC)),
            backend=f"opencv:{cap.getBackendName()}",
            extra=self._extra(cap),
        )

    def _configure(self, cap) -> None:
        """Apply options after opening (devices set and read back their format here)."""

    def _extra(self, cap) -> dict:
        return {}

    def _grab(self) -> np.ndarray | Frame | None:
        cap = self._cap  # local: a hung read keeps its own capture even if a new one is opened
        if cap is None:
            return None
        ok, img = cap.read()
        return img if ok else None

    def _release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


def _finite(x: float) -> float:
    return float(x) if x is not None and math.isfinite(x) and x > 0 else 0.0


class FileSource(CaptureSource):
    """``file:PATH``: a video file. ``loop`` restarts at the end (else the source ENDS);
    ``pace='native'`` delivers at the file's own fps, ``'none'`` as fast as it decodes.
    After a read failure the file is reopened at the frame where it stopped."""

    def __init__(self, path: str | Path, *, loop: bool = False, pace: str = "native", **kwargs):
        path = Path(path).expanduser()
        if not path.is_file():
            raise SourceError(f"file:{path}: no such video file")
        if pace not in ("native", "none"):
            raise ConfigError(f"pace: expected 'native' or 'none', got {pace!r}")
        super().__init__(f"file:{path}", **kwargs)
        self.path = path
        self.loop = bool(loop)
        self.pace = pace
        self.lossless = pace == "none"  # a recorded file read as fast as possible: every frame, none skipped
        self._pos = 0  # next frame position inside the file
        self._count = 0  # frames read in total (loops included): the Frame.index
        self._eof = False
        self._pacer: Pacer | None = None
        self._failed_at: int | None = None  # position of the last read failure
        self._jpeg: bool | None = None  # packets are JPEG images: decode each at its own size
        self._warned_short = False

    def _new_capture(self):
        import cv2

        if self._jpeg is None:
            self._jpeg = _packets_are_jpeg(self.path)
            if not self._jpeg:
                log.info("%s: a mid-file change of frame size cannot be detected for this codec "
                         "(OpenCV scales every frame to the first frame's size)", self.uri)
        if self._jpeg:
            return cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1])
        return cv2.VideoCapture(str(self.path))

    def _read(self, cap) -> tuple[bool, np.ndarray | None]:
        """One frame: decoded by OpenCV, or (JPEG packets) decoded here at its own size. A
        packet that does not decode comes back as an empty array: a rejected (counted) frame."""
        import cv2

        ok, img = cap.read()
        if not ok or not self._jpeg:
            return ok, img
        dec = cv2.imdecode(img, cv2.IMREAD_COLOR)
        return True, dec if dec is not None else np.empty((0, 0, 3), np.uint8)

    def _configure(self, cap) -> None:
        import cv2

        if self._pos > 0:  # re-open after a failure: resume where we were
            if self._jpeg:
                # raw packets: FFmpeg's seek is not reliable here (a truncated AVI without its
                # index seeks to 0), so skip packets, which costs no decoding
                skipped = 0
                while skipped < self._pos and cap.grab():
                    skipped += 1
            else:
                cap.set(cv2.CAP_PROP_POS_FRAMES, self._pos)
        if self._pacer is None:
            fps = _finite(cap.get(cv2.CAP_PROP_FPS))
            if self.pace == "native" and fps == 0:
                log.warning("%s: file reports no fps; pacing at 30 fps", self.uri)
                fps = 30.0
            self._pacer = Pacer(fps if self.pace == "native" else 0.0, self._stop)

    def _extra(self, cap) -> dict:
        import cv2

        return {"frame_count": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), "loop": self.loop,
                "pace": self.pace, "size_changes": "detected" if self._jpeg else "undetectable"}

    def _grab(self) -> np.ndarray | Frame | None:
        import cv2

        assert self._pacer is not None
        if not self._pacer.wait():
            return None
        cap = self._cap
        if cap is None:
            return None
        ok, img = self._read(cap)
        if not ok and self.loop and self._pos > 0 and not self._is_abandoned():
            total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            if total > 0 and self._pos < total - 1 and not self._warned_short:
                self._warned_short = True
                log.warning("%s: the file breaks at frame %d of the %d its header lists; looping "
                            "over the frames before it", self.uri, self._pos, total)
            cap.release()
            self._pos = 0
            cap = self._cap = self._new_capture()
            ok, img = self._read(cap)
        if not ok:
            # a file that fails where it ended is finished; elsewhere it is a read failure,
            # retried once from a fresh capture; failing again at the same frame, it is broken
            total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self._eof = not self.loop and (total <= 0 or self._pos >= total - 1)
            if not self._eof:
                if self._failed_at == self._pos:
                    raise SourceFailed(
                        f"{self.uri}: cannot read frame {self._pos} of the {total} its header lists, again "
                        "after re-opening: the file is truncated or corrupt there"
                    )
                self._failed_at = self._pos
            return None
        self._failed_at = None
        self._pos += 1
        self._count += 1
        return Frame(img, 0, self._count - 1)

    def _at_end(self) -> bool:
        return self._eof


def expected_rate(uri: str, pace: str = "native", fps: float | None = None) -> float:
    """Frames per second a source URI will deliver, known before it is opened, for sizing the
    publisher's queues (hwm_seconds as time): unpaced recorded media (file:/sweep: with pace
    'none') UNPACED_MAX_FPS; a file its own fps (read from the file); otherwise the requested
    ``fps`` or 30 (sweep default; devices and streams rarely run faster)."""
    import cv2

    scheme, _, rest = str(uri).partition(":")
    if scheme in ("file", "sweep") and pace == "none":
        return UNPACED_MAX_FPS
    if fps:
        return float(fps)
    if scheme == "file" and Path(rest).expanduser().is_file():
        cap = cv2.VideoCapture(str(Path(rest).expanduser()))
        try:
            found = _finite(cap.get(cv2.CAP_PROP_FPS)) if cap.isOpened() else 0.0
        finally:
            cap.release()
        if found:
            return min(found, UNPACED_MAX_FPS)
    return 30.0


def _packets_are_jpeg(path: Path) -> bool:
    """True when the file's first packet is a JPEG image that cv2.imdecode can decode (MJPEG in
    AVI/MOV/MKV): such files are read packet by packet, each frame at its real size."""
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1])
    try:
        if not cap.isOpened() or cap.get(cv2.CAP_PROP_FORMAT) != -1:
            return False
        ok, pkt = cap.read()
        if not ok or pkt is None or pkt.size < 4 or bytes(pkt.ravel()[:2]) != b"\xff\xd8":
            return False
        return cv2.imdecode(pkt, cv2.IMREAD_COLOR) is not None
    finally:
        cap.release()


def _parse_device(spec: str) -> tuple[int | str, str]:
    spec = spec.strip()
    if re.fullmatch(r"\d+", spec):
        return int(spec), f"/dev/video{spec}"
    if spec.startswith("/dev/"):
        return spec, spec
    raise SourceError(f"device:{spec}: expected device:N or device:/dev/videoN")


class DeviceSource(CaptureSource):
    """``device:N`` or ``device:/dev/videoN`` via V4L2 (capture cards, USB frame grabbers).
    Requested ``fourcc`` (default MJPG), ``width``, ``height``, ``fps`` are set, read back, and
    what was granted goes into SourceInfo (logged when it differs from the request)."""

    def __init__(self, spec: str, *, fourcc: str = "MJPG", width: int | None = None,
                 height: int | None = None, fps: float | None = None, **kwargs):
        self.device, self.path = _parse_device(spec)
        if fourcc is not None and len(fourcc) != 4:
            raise ConfigError(f"fourcc: expected 4 characters such as 'MJPG' or 'YUYV', got {fourcc!r}")
        super().__init__(f"device:{spec}", **kwargs)
        self.requested = {"fourcc": fourcc, "width": width, "height": height, "fps": fps}

    def _describe(self) -> str:
        return f"{self.uri} ({self.path}, V4L2)"

    def _new_capture(self):
        import cv2

        if isinstance(self.device, str) and not Path(self.device).exists():
            raise SourceError(f"{self._describe()}: no such device")
        return cv2.VideoCapture(self.device, cv2.CAP_V4L2)

    def _configure(self, cap) -> None:
        import cv2

        req = self.requested
        if req["fourcc"]:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*req["fourcc"]))
        if req["width"]:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, req["width"])
        if req["height"]:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, req["height"])
        if req["fps"]:
            cap.set(cv2.CAP_PROP_FPS, req["fps"])
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # latency: do not let the driver queue old frames
        granted = {
            "fourcc": _fourcc_str(cap.get(cv2.CAP_PROP_FOURCC)),
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "fps": _finite(cap.get(cv2.CAP_PROP_FPS)),
        }
        diff = {k: (req[k], granted[k]) for k in req if req[k] and req[k] != granted[k]}
        if diff:
            log.warning("%s: device granted a different format than requested (requested, granted): %s",
                        self._describe(), diff)

    def _extra(self, cap) -> dict:
        return {"requested": dict(self.requested), "path": self.path}


class UrlSource(CaptureSource):
    """``url:rtsp://...`` / ``url:http(s)://...`` through FFmpeg, with open/read timeouts so a dead
    network peer fails a read instead of hanging it (the watchdog covers what slips through)."""

    def __init__(self, url: str, *, open_timeout_ms: int = 5000, read_timeout_ms: int = 5000, **kwargs):
        if not re.match(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp|srt)://\S+$", url):
            raise SourceError(f"url:{url}: expected url:rtsp://HOST/... or url:http(s)://HOST/...")
        super().__init__(f"url:{url}", **kwargs)
        self.url = url
        self.open_timeout_ms = int(open_timeout_ms)
        self.read_timeout_ms = int(read_timeout_ms)

    def _new_capture(self):
        import cv2

        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.open_timeout_ms,
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.read_timeout_ms]
        return cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)

    def _extra(self, cap) -> dict:
        # decoded by OpenCV's FFmpeg backend: a stream that changes resolution arrives scaled to
        # its first size, and nothing in OpenCV shows the coded size (module docstring)
        return {"size_changes": "undetectable"}


_APPSINK_DEFAULTS = {"drop": "true", "max-buffers": "1", "sync": "false"}


def fix_appsink(pipeline: str) -> str:
    """Make the final appsink latest-frame: add ``drop=true max-buffers=1 sync=false`` where the
    user did not set them. A pipeline that does not end in an appsink gets one (after a
    videoconvert to BGR). Pure string function."""
    parts = [p.strip() for p in pipeline.strip().split("!")]
    if not parts or not parts[0]:
        raise SourceError("gst: empty pipeline; expected e.g. gst:v4l2src ! videoconvert ! appsink")
    last = parts[-1].split()
    if not last or last[0] != "appsink":
        log.info("gst pipeline does not end in an appsink; appending videoconvert ! appsink")
        parts += ["videoconvert", "video/x-raw,format=BGR", "appsink"]
        last = ["appsink"]
    present = {tok.split("=", 1)[0] for tok in last[1:] if "=" in tok}
    last += [f"{k}={v}" for k, v in _APPSINK_DEFAULTS.items() if k not in present]
    parts[-1] = " ".join(last)
    return " ! ".join(parts)


def gstreamer_available() -> bool:
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1]
    return False


class GstSource(CaptureSource):
    """``gst:PIPELINE`` through OpenCV's GStreamer backend."""

    def __init__(self, pipeline: str, **kwargs):
        if not gstreamer_available():
            raise SourceError(
                "gst: this OpenCV build has no GStreamer support (cv2.getBuildInformation() says "
                "GStreamer: NO); use url:/device:/file:, or install an OpenCV built with GStreamer"
            )
        self.pipeline = fix_appsink(pipeline)
        super().__init__(f"gst:{self.pipeline}", **kwargs)

    def _new_capture(self):
        import cv2

        return cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)
