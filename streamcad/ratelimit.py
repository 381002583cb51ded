"""Rate-limited log lines: a fault that repeats (a dead feed, a stalled link) logs its first line
at once, then at most one line per interval per key, saying how many were held back.

    limiter = LogLimiter(interval_s=10.0)
    limiter.warning(log, "read-failed", "source %s: read failed; reconnecting", uri)
    # -> first call logs; calls within the next 10 s are counted, not logged; the next line
    #    after that ends in "(12 similar lines suppressed in the last 10.0 s)"

Thread-safe (the reader thread and the watchdog both log through one limiter).
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["LogLimiter"]


class LogLimiter:
    """At most one log line per ``interval_s`` for each key; suppressed lines are counted."""

    def __init__(self, interval_s: float = 10.0, clock=time.monotonic) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s: expected > 0, got {interval_s}")
        self.interval_s = float(interval_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self.suppressed = 0  # lines held back in total

    def allow(self, key: str) -> tuple[bool, int]:
        """(log now?, lines suppressed since the last logged one for this key)."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                self.suppressed += 1
                return False, 0
            self._last[key] = now
            return True, self._held.pop(key, 0)

    def log(self, logger: logging.Logger, level: int, key: str, msg: str, *args) -> bool:
        """Log `msg % args` at `level` unless this key logged within interval_s. True if logged."""
        ok, held = self.allow(key)
        if ok:
            if held:
                msg = f"{msg} ({held} similar lines suppressed in the last {self.interval_s:g} s)"
            logger.log(level, msg, *args)
        return ok

    def warning(self, logger: logging.Logger, key: str, msg: str, *args) -> bool:
        return self.log(logger, logging.WARNING, key, msg, *args)

    def info(self, logger: logging.Logger, key: str, msg: str, *args) -> bool:
        return self.log(logger, logging.INFO, key, msg, *args)
