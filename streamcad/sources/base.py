"""Frame sources: the contract, and the threaded latest-frame reader every source builds on.

Data flow::

    capture (file / device / network / sweep)
      -> reader thread: _grab() -> validate -> chroma -> gray uint8 -> Frame(t_capture_ns, index)
      -> one-slot mailbox: only the newest frame is kept; an unread frame that gets replaced is
         counted in stats.frames_overwritten, never queued (live sources). A ``lossless``
         source (recorded media read with pace='none') instead waits until the slot is taken:
         every frame is delivered and no CPU goes to decoding frames nobody reads
      -> read(timeout) in the consumer (pipeline) thread
    watchdog thread: LIVE -> STALE when frames stop arriving; a reader stuck inside _grab() (hung
    device or network) is abandoned (it is a daemon thread) and a fresh reader reconnects.

A subclass implements three hooks, all called from the reader thread (``_open`` also from
``start()``): ``_open() -> SourceInfo`` (open a *fresh* capture; may raise), ``_grab() ->
np.ndarray | Frame | None`` (BGR/BGRA/gray uint8; None = end of stream or read failure),
``_release()`` (idempotent). ``_at_end()`` tells a finite end (a file without loop) from a failure.

A hook raises ``SourceFailed`` for a failure that re-opening cannot cure (a file broken at the
same frame twice, a sweep folder with no decodable image): the source goes to ERROR with that
reason at once instead of reconnecting forever. An unexpected exception anywhere in the reader
thread does the same (the source never dies silently). Repeated warnings (read failures,
reconnect attempts, rejected frames) are rate-limited: the first at once, then one line per
10 s per kind with the number held back.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import enum
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamcad.errors import ConfigError, FrameError, SourceError
from streamcad.ratelimit import LogLimiter

__all__ = [
    "Frame",
    "SourceInfo",
    "SourceState",
    "SourceStats",
    "ReconnectPolicy",
    "FrameSource",
    "ThreadedSource",
    "SourceFailed",
    "Pacer",
    "to_gray",
    "frame_from_grab",
    "colourfulness",
    "colour_flow_mask",
]

log = logging.getLogger(__name__)

_MIN_SIDE = 8  # a frame narrower than this is a torn/corrupt buffer, not an image


class SourceFailed(SourceError):
    """Raised by a hook for a failure re-opening cannot cure: the source goes to ERROR with this
    message (stats.error) instead of reconnecting."""


@dataclass(slots=True)
class Frame:
    """One captured frame, converted once to grayscale."""

    image: np.ndarray  # (H, W) uint8 grayscale
    t_capture_ns: int  # time.monotonic_ns() right after the grab
    index: int  # source frame index (monotonic; gaps mean frames the source skipped)
    chroma: float = 0.0  # colourfulness of the original frame before gray conversion (0 for gray)
    label: str | None = None  # ground-truth class (sweep frames only)
    roi: tuple[int, int, int, int] | None = None  # true sector box (x, y, w, h) (sweep frames only)
    # colour-flow pixels of a colour frame (colour_flow_mask: uint8 0/1 on a strided grid; the
    # stride is ceil(H / rows)); None for gray frames. The quality check's 'doppler' flag.
    colour: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What the source *granted* (read back after opening), not what was requested."""

    uri: str
    width: int
    height: int
    fps: float  # nominal frames per second; 0.0 when the backend does not know
    fourcc: str
    backend: str
    extra: dict[str, Any] = field(default_factory=dict)


class SourceState(enum.StrEnum):
    CONNECTING = "connecting"  # opened, no frame yet
    LIVE = "live"  # frames arriving
    STALE = "stale"  # no new frame for max(3 frame intervals, 0.5 s)
    RECONNECTING = "reconnecting"  # read failed or reader hung; reopening with back-off
    ERROR = "error"  # gave up (reconnect attempts exhausted); stats.error says why
    ENDED = "ended"  # finite stream finished, or closed


@dataclass(frozen=True, slots=True)
class SourceStats:
    """A snapshot. Invariant: frames_grabbed == frames_rejected + frames_delivered +
    frames_overwritten + (1 if a frame is waiting in the slot else 0)."""

    frames_grabbed: int = 0  # _grab() calls that returned something
    frames_delivered: int = 0  # returned by read()
    frames_overwritten: int = 0  # replaced in the slot before anyone read them
    frames_rejected: int = 0  # empty / wrong dtype / wrong shape / corrupt
    reconnects: int = 0  # successful re-opens after a failure or a hang
    reconnect_attempts: int = 0  # all re-open attempts, failed ones included
    resolution_changes: int = 0
    readers_abandoned: int = 0  # reader threads left blocked in _grab() by the watchdog
    state: SourceState = SourceState.CONNECTING
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Exponential back-off between re-open attempts: initial_s * factor**k, capped at max_s."""

    initial_s: float = 0.1  # first retry soon: most drops (USB hiccup, RTSP keyframe) are short
    factor: float = 2.0
    max_s: float = 2.0  # a recovered probe should be seen within ~2 s
    max_attempts: int | None = None  # None = retry forever (a scanner feed is expected to return)

    def __post_init__(self) -> None:
        import math

        if not all(math.isfinite(v) for v in (self.initial_s, self.max_s, self.factor)):
            raise ConfigError(
                "ReconnectPolicy: expected finite initial_s, max_s and factor (an infinite back-off "
                f"never retries), got initial_s={self.initial_s}, max_s={self.max_s}, factor={self.factor}"
            )
        if not (self.initial_s >= 0 and self.max_s >= self.initial_s and self.factor >= 1):
            raise ConfigError(
                "ReconnectPolicy: expected 0 <= initial_s <= max_s and factor >= 1, got "
                f"initial_s={self.initial_s}, max_s={self.max_s}, factor={self.factor}"
            )
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigError(f"ReconnectPolicy.max_attempts: expected None or >= 1, got {self.max_attempts}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (0-based)."""
        try:
            return min(self.max_s, self.initial_s * self.factor**attempt)
        except OverflowError:  # factor**attempt beyond a float after ~1000 attempts: long capped
            return self.max_s


def colourfulness(img: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) colourfulness of a BGR(A) image on a strided subsample
    (about 64x64 samples, so it costs microseconds). 0 for gray frames (R == G == B)."""
    if img.ndim != 3 or img.shape[2] < 3:
        return 0.0
    step = max(1, min(img.shape[0], img.shape[1]) // 64)
    sub = img[::step, ::step, :3].astype(np.float32)  # (h, w, 3) BGR
    b, g, r = sub[..., 0], sub[..., 1], sub[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def colour_flow_mask(img: np.ndarray) -> np.ndarray | None:
    """Pixels that look like colour-Doppler flow in a BGR(A) frame, on a grid of stride s (short
    side about 256 samples; nearest-neighbour resize): saturated (HSV S >= 115 of 255), not dark
    (V >= 64), with the hue of a flow map (red/orange: H <= 17 or >= 165; blue: 90..130,
    OpenCV's 0..180 scale). Yellow and green are left out: calipers, annotation text, ECG traces
    and overlay boxes use them. -> uint8 (ceil(H / s), ceil(W / s)) of 0/1, or None for a gray frame.

    It runs on the reader thread for every colour frame, so it is all OpenCV (resize, HSV,
    inRange): 0.45 ms for a 1280x960 frame on this 2-core machine, where numpy's strided copy
    and boolean temporaries took 1.1 ms, as long as decoding the frame (benchmarks/ab_code.py)."""
    import cv2

    if img.ndim != 3 or img.shape[2] < 3:
        return None
    h, w = img.shape[:2]
    s = max(1, min(h, w) // 256)
    bgr = img if img.shape[2] == 3 else cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if s > 1:
        bgr = cv2.resize(bgr, (-(-w // s), -(-h // s)), interpolation=cv2.INTER_NEAREST)
    hsv = cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2HSV)
    mask = cv2.inRange(hsv, (0, 115, 64), (17, 255, 255))
    mask |= cv2.inRange(hsv, (165, 115, 64), (255, 255, 255))
    mask |= cv2.inRange(hsv, (90, 115, 64), (130, 255, 255))
    return mask >> 7  # 255 -> 1


def to_gray(img: Any) -> tuple[np.ndarray, float]:
    """Validate a raw grab and convert it once to (H, W) uint8 gray. Returns (gray, chroma).
    Raises FrameError naming what was wrong (empty, dtype, shape, too small)."""
    import cv2

    if not isinstance(img, np.ndarray):
        raise FrameError(f"expected a numpy array, got {type(img).__name__}")
    if img.size == 0:
        raise FrameError(f"empty frame (shape {img.shape})")
    if img.dtype != np.uint8:
        raise FrameError(f"expected uint8 pixels, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        gray, chroma = img, 0.0
    elif img.ndim == 3 and img.shape[2] in (3, 4):
        chroma = colourfulness(img)
        code = cv2.COLOR_BGR2GRAY if img.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        gray = cv2.cvtColor(img, code)
    else:
        raise FrameError(f"expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {img.shape}")
    if min(gray.shape) < _MIN_SIDE:
        raise FrameError(f"frame too small to be an image: {gray.shape}")
    return np.ascontiguousarray(gray), chroma


def frame_from_grab(raw: np.ndarray | Frame, t_ns: int, index: int) -> Frame:
    """What a _grab() returned -> the delivered gray Frame stamped t_ns. A raw array gets
    `index`; a Frame (the sweep: ground truth attached) keeps its own index, label, roi and,
    when set, chroma. Raises FrameError (to_gray) for a bad buffer."""
    meta = raw if isinstance(raw, Frame) else None
    img = meta.image if meta is not None else raw
    gray, chroma = to_gray(img)
    colour = colour_flow_mask(img) if chroma > 0 else None  # gray frames (chroma 0) cost nothing here
    if meta is None:
        return Frame(gray, t_ns, index, chroma, colour=colour)
    return Frame(gray, t_ns, meta.index, chroma if meta.chroma == 0 else meta.chroma, meta.label, meta.roi,
                 colour if colour is not None else meta.colour)


class Pacer:
    """Sleeps so that successive ``wait()`` calls are 1/fps apart on a fixed grid (no drift);
    a caller that falls more than one interval behind restarts the grid instead of bursting."""

    def __init__(self, fps: float, stop: threading.Event):
        self.interval = 1.0 / fps if fps and fps > 0 else 0.0
        self._stop = stop
        self._next: float | None = None

    def wait(self) -> bool:
        """Returns False when the stop event fired while sleeping."""
        if self.interval <= 0:
            return not self._stop.is_set()
        now = time.monotonic()
        if self._next is None or now - self._next > self.interval:
            self._next = now
        delay = self._next - now
        self._next += self.interval
        if delay > 0:
            return not self._stop.wait(delay)
        return not self._stop.is_set()


class FrameSource(abc.ABC):
    """A source of frames. ``start()`` opens it; ``read(timeout)`` returns the newest frame not yet
    consumed (None on timeout or when no more frames will come); ``close()`` stops it."""

    uri: str

    @abc.abstractmethod
    def start(self) -> SourceInfo: ...

    @abc.abstractmethod
    def read(self, timeout: float = 1.0) -> Frame | None: ...

    @property
    @abc.abstractmethod
    def info(self) -> SourceInfo | None: ...

    @property
    @abc.abstractmethod
    def state(self) -> SourceState: ...

    @property
    @abc.abstractmethod
    def stats(self) -> SourceStats: ...

    @property
    def ended(self) -> bool:
        """True when no more frames will ever come (ENDED, or ERROR after giving up)."""
        return self.state in (SourceState.ENDED, SourceState.ERROR)

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> FrameSource:
        if self.info is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ThreadedSource(FrameSource):
    """Latest-frame reader thread + watchdog around the ``_open``/``_grab``/``_release`` hooks.

    Options (all sources): ``reconnect`` (ReconnectPolicy), ``stale_after_s`` (default
    max(3 frame intervals, 0.5 s)), ``hang_timeout_s`` (a _grab() blocked longer than this is
    abandoned and the source reconnects; default 3 s), ``open_timeout_s`` (same for a re-open).

    ``lossless`` (set by recorded sources read with pace='none'): the reader grabs the next frame
    only after the consumer took the previous one, so nothing is overwritten and the reader does
    not compete with the pipeline for the CPU by decoding frames that would be thrown away.
    """

    backend_name = "threaded"
    lossless = False

    def __init__(
        self,
        uri: str,
        *,
        reconnect: ReconnectPolicy | None = None,
        stale_after_s: float | None = None,
        hang_timeout_s: float = 3.0,
        open_timeout_s: float = 15.0,
    ):
        if stale_after_s is not None and stale_after_s <= 0:
            raise ConfigError(f"stale_after_s: expected > 0 or None, got {stale_after_s}")
        if hang_timeout_s <= 0 or open_timeout_s <= 0:
            raise ConfigError(
                f"hang_timeout_s/open_timeout_s: expected > 0, got {hang_timeout_s}/{open_timeout_s}"
            )
        self.uri = uri
        self.reconnect_policy = reconnect or ReconnectPolicy()
        self.stale_after_s = stale_after_s
        self.hang_timeout_s = float(hang_timeout_s)
        self.open_timeout_s = float(open_timeout_s)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._tls = threading.local()
        self._info: SourceInfo | None = None
        self._state = SourceState.CONNECTING
        self._error: str | None = None
        self._history: collections.deque[tuple[int, SourceState]] = collections.deque(maxlen=512)
        self._slot: Frame | None = None
        self._counts = collections.Counter()
        self._gen = 0  # reader generation; bumped when a hung reader is abandoned
        self._busy: tuple[str, float] | None = None  # ("grab" | "open", monotonic start)
        self._last_progress = 0.0
        self._reader_thread: threading.Thread | None = None
        self._watchdog_thread: threading.Thread | None = None
        self._abandoned: list[threading.Thread] = []
        self._started = False
        self._closed = False
        self._limiter = LogLimiter(10.0)

    # ---- hooks -------------------------------------------------------------------------------
    @abc.abstractmethod
    def _open(self) -> SourceInfo: ...

    @abc.abstractmethod
    def _grab(self) -> np.ndarray | Frame | None: ...

    @abc.abstractmethod
    def _release(self) -> None: ...

    def _at_end(self) -> bool:
        """After _grab() returned None: True for a finite end (ENDED), False for a failure."""
        return False

    def _is_abandoned(self) -> bool:
        """For hooks: True when the calling reader thread was abandoned by the watchdog; it must
        then not touch the (new) capture."""
        return getattr(self._tls, "gen", self._gen) != self._gen

    # ---- public API --------------------------------------------------------------------------
    def start(self) -> SourceInfo:
        """Open the capture in the calling thread (errors raise SourceError here), then start the
        reader and the watchdog. Returns what was granted."""
        with self._lock:
            if self._closed:
                raise SourceError(f"{self.uri}: start() after close()")
            if self._started:
                assert self._info is not None
                return self._info
        self._set_state(SourceState.CONNECTING)
        try:
            info = self._open()
        except SourceError as exc:
            self._safe_release()
            self._set_state(SourceState.ERROR, str(exc))
            raise
        except Exception as exc:  # a backend error at the boundary, in our own words
            self._safe_release()
            self._set_state(SourceState.ERROR, str(exc))
            raise SourceError(f"{self.uri}: could not open: {exc}") from exc
        with self._lock:
            self._info = info
            self._started = True
            self._last_progress = time.monotonic()
            gen = self._gen
        log.info(
            "source %s opened: %dx%d @ %.2f fps, fourcc %s, backend %s",
            self.uri, info.width, info.height, info.fps, info.fourcc, info.backend,
        )
        self._reader_thread = self._spawn_reader(gen, needs_open=False)
        self._watchdog_thread = threading.Thread(
            target=self._watchdog, name=f"watchdog[{self.uri}]", daemon=True
        )
        self._watchdog_thread.start()
        return info

    def read(self, timeout: float = 1.0) -> Frame | None:
        """The newest frame not yet consumed; None after ``timeout`` seconds without one, or at
        once when the source has ended. Never blocks on the capture itself."""
        if not self._started:
            raise SourceError(f"{self.uri}: read() before start()")
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._slot is None:
                if self._closed or self._state in (SourceState.ENDED, SourceState.ERROR):
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame, self._slot = self._slot, None
            self._counts["frames_delivered"] += 1
            if self.lossless:
                self._cond.notify_all()  # the reader waits for the empty slot
            return frame

    @property
    def info(self) -> SourceInfo | None:
        return self._info

    @property
    def state(self) -> SourceState:
        return self._state

    @property
    def stats(self) -> SourceStats:
        with self._lock:
            return SourceStats(
                state=self._state, error=self._error,
                **{f.name: self._counts[f.name] for f in dataclasses.fields(SourceStats)
                   if f.name not in ("state", "error")},
            )

    @property
    def state_history(self) -> list[tuple[int, SourceState]]:
        """(time.monotonic_ns(), state) for each transition, oldest first (last 512)."""
        with self._lock:
            return list(self._history)

    def close(self) -> None:
        """Stop within 1 s. A reader blocked inside the capture is left behind as a daemon
        thread (logged); the capture is then not released, as releasing it under a blocked read
        is unsafe in OpenCV."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._stop.set()
        deadline = time.monotonic() + 0.8
        for t in (self._reader_thread, self._watchdog_thread):
            if t is not None and t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        reader = self._reader_thread
        if reader is not None and reader.is_alive():
            log.warning("source %s: reader thread %s still blocked at close; left as a daemon",
                        self.uri, reader.name)
        else:
            self._safe_release()
        stuck = [t.name for t in self._abandoned if t.is_alive()]
        if stuck:
            log.warning("source %s: abandoned reader threads still blocked: %s", self.uri, stuck)
        if self._state is not SourceState.ERROR:
            self._set_state(SourceState.ENDED)

    # ---- internals ---------------------------------------------------------------------------
    def _set_state(self, state: SourceState, error: str | None = None) -> None:
        with self._cond:
            self._set_state_locked(state, error)

    def _set_state_locked(self, state: SourceState, error: str | None = None) -> None:
        if error is not None:
            self._error = error
        if state is self._state and self._history:
            return
        if state is SourceState.CONNECTING or state is SourceState.RECONNECTING:
            self._last_progress = time.monotonic()
        self._state = state
        self._history.append((time.monotonic_ns(), state))
        log.debug("source %s -> %s", self.uri, state.value)
        self._cond.notify_all()

    def _safe_release(self) -> None:
        try:
            self._release()
        except Exception:  # releasing a broken capture must not take the reader down
            log.exception("source %s: release failed", self.uri)

    def _spawn_reader(self, gen: int, *, needs_open: bool) -> threading.Thread:
        t = threading.Thread(
            target=self._reader, args=(gen, needs_open), name=f"reader{gen}[{self.uri}]", daemon=True
        )
        t.start()
        return t

    def _mark_busy(self, gen: int, op: str) -> bool:
        with self._lock:
            if gen != self._gen:
                return False
            self._busy = (op, time.monotonic())
            return True

    def _mark_idle(self, gen: int) -> bool:
        with self._lock:
            if gen != self._gen:
                return False
            self._busy = None
            return True

    def _reader(self, gen: int, needs_open: bool) -> None:
        try:
            self._reader_loop(gen, needs_open)
        except SourceFailed as exc:
            self._fail(gen, str(exc))
        except BaseException as exc:  # never die silently: the state says why frames stopped
            log.exception("source %s: reader thread failed", self.uri)
            self._fail(gen, f"{self.uri}: reader failed: {type(exc).__name__}: {exc}")

    def _fail(self, gen: int, reason: str) -> None:
        if gen != self._gen or self._stop.is_set():
            return
        log.error("source %s: giving up: %s", self.uri, reason)
        self._safe_release()
        self._set_state(SourceState.ERROR, reason)

    def _reader_loop(self, gen: int, needs_open: bool) -> None:
        self._tls.gen = gen
        if needs_open and not self._reconnect(gen):
            return
        while not self._stop.is_set():
            if self.lossless and not self._wait_slot_taken(gen):
                return
            if not self._mark_busy(gen, "grab"):
                return
            try:
                raw = self._grab()
            except SourceFailed:
                raise
            except Exception as exc:  # a capture that raises mid-stream is a read failure
                self._limiter.warning(log, "grab-raised", "source %s: grab raised %s: %s",
                                      self.uri, type(exc).__name__, exc)
                raw = None
            t_ns = time.monotonic_ns()
            if not self._mark_idle(gen):
                log.info("source %s: abandoned reader %d returned; exiting", self.uri, gen)
                return
            if raw is not None:
                self._publish(raw, t_ns)
                continue
            if self._stop.is_set():
                return
            if self._at_end():
                log.info("source %s: end of stream", self.uri)
                self._set_state(SourceState.ENDED)
                return
            self._limiter.warning(log, "read-failed", "source %s: read failed; reconnecting", self.uri)
            self._safe_release()
            if not self._reconnect(gen):
                return

    def _wait_slot_taken(self, gen: int) -> bool:
        """Lossless sources: block until the consumer took the frame in the slot. False when
        stopped or superseded. The source is not stale meanwhile: the consumer is the slow one."""
        with self._cond:
            while self._slot is not None:
                if self._stop.is_set() or self._closed or gen != self._gen:
                    return False
                self._last_progress = time.monotonic()
                self._cond.wait(0.05)
            return not self._stop.is_set() and gen == self._gen

    def _reconnect(self, gen: int) -> bool:
        """Re-open with exponential back-off. True when open again; False when stopped,
        superseded, or out of attempts (state ERROR)."""
        self._set_state(SourceState.RECONNECTING)
        policy = self.reconnect_policy
        attempt = 0
        while not self._stop.is_set():
            if self._stop.wait(policy.delay(attempt)) or gen != self._gen:
                return False
            attempt += 1
            with self._lock:
                self._counts["reconnect_attempts"] += 1
            if not self._mark_busy(gen, "open"):
                return False
            err: Exception | None = None
            try:
                info = self._open()
            except SourceFailed:
                raise
            except Exception as exc:  # any open failure is retried; the last one is reported
                err = exc
            if not self._mark_idle(gen):
                return False
            if err is None:
                with self._cond:
                    self._counts["reconnects"] += 1
                    old, self._info = self._info, info
                    self._last_progress = time.monotonic()
                self._limiter.info(log, "reconnected", "source %s: reconnected after %d attempt(s)",
                                   self.uri, attempt)
                if old is not None and (old.width, old.height) != (info.width, info.height):
                    log.info("source %s: resolution after reconnect %dx%d (was %dx%d)",
                             self.uri, info.width, info.height, old.width, old.height)
                return True
            self._safe_release()
            self._limiter.warning(log, "reconnect-failed", "source %s: reconnect attempt %d failed: %s",
                                  self.uri, attempt, err)
            if policy.max_attempts is not None and attempt >= policy.max_attempts:
                self._set_state(
                    SourceState.ERROR, f"{self.uri}: gave up after {attempt} reconnect attempts: {err}"
                )
                return False
        return False

    def _publish(self, raw: np.ndarray | Frame, t_ns: int) -> None:
        with self._lock:
            index = self._counts["frames_grabbed"]
            self._counts["frames_grabbed"] += 1
        try:
            frame = frame_from_grab(raw, t_ns, index)
        except FrameError as exc:
            with self._lock:
                self._counts["frames_rejected"] += 1
                n = self._counts["frames_rejected"]
            if n <= 5:
                log.warning("source %s: rejected frame %d (%d so far): %s", self.uri, index, n, exc)
            else:
                self._limiter.warning(log, "rejected", "source %s: rejected frame %d (%d so far): %s",
                                      self.uri, index, n, exc)
            return
        h, w = frame.image.shape
        with self._cond:
            info = self._info
            if info is not None and (info.width, info.height) != (w, h):
                if info.width and info.height:
                    self._counts["resolution_changes"] += 1
                    log.info("source %s: resolution changed %dx%d -> %dx%d",
                             self.uri, info.width, info.height, w, h)
                self._info = dataclasses.replace(info, width=w, height=h)
            if self._slot is not None:
                self._counts["frames_overwritten"] += 1
            self._slot = frame
            self._last_progress = time.monotonic()
            if self._state is not SourceState.LIVE and not self._closed:
                self._set_state_locked(SourceState.LIVE)
            self._cond.notify_all()

    def _stale_after(self) -> float:
        if self.stale_after_s is not None:
            return self.stale_after_s
        fps = self._info.fps if self._info is not None else 0.0
        return max(3.0 / fps, 0.5) if fps and fps > 0 else 0.5

    def _watchdog(self) -> None:
        try:
            self._watch()
        except BaseException as exc:  # a dead watchdog would hide hangs: fail loudly instead
            log.exception("source %s: watchdog failed", self.uri)
            self._fail(self._gen, f"{self.uri}: watchdog failed: {type(exc).__name__}: {exc}")

    def _watch(self) -> None:
        while True:
            stale_after = self._stale_after()
            if self._stop.wait(min(0.05, stale_after / 5)):
                return
            now = time.monotonic()
            respawn_gen = None
            with self._cond:
                if self._closed:
                    return
                if (self._state in (SourceState.LIVE, SourceState.CONNECTING)
                        and now - self._last_progress > stale_after):
                    self._limiter.info(log, "stale", "source %s: no frame for %.2f s -> stale",
                                       self.uri, now - self._last_progress)
                    self._set_state_locked(SourceState.STALE)
                busy = self._busy
                if busy is not None:
                    limit = self.hang_timeout_s if busy[0] == "grab" else self.open_timeout_s
                    if now - busy[1] > limit:
                        self._gen += 1
                        respawn_gen = self._gen
                        self._busy = None
                        self._counts["readers_abandoned"] += 1
                        if self._reader_thread is not None:
                            self._abandoned.append(self._reader_thread)
                        log.warning(
                            "source %s: reader blocked in %s for %.1f s (limit %.1f s); abandoning "
                            "it as a daemon thread and reconnecting with a fresh capture",
                            self.uri, busy[0], now - busy[1], limit,
                        )
                        self._set_state_locked(SourceState.RECONNECTING)
            if respawn_gen is not None:
                self._reader_thread = self._spawn_reader(respawn_gen, needs_open=True)
