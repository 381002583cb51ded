"""The project's own errors. Third-party failures are translated into these at the boundary."""

from __future__ import annotations

__all__ = [
    "StreamcadError",
    "ConfigError",
    "SourceError",
    "FrameError",
    "BackendError",
    "ArtifactError",
    "MessageError",
    "TransportError",
]


class StreamcadError(Exception):
    """Base class: every error the project raises on purpose. The CLI prints these as one line."""


class ConfigError(StreamcadError):
    """A config file, key, type or value is wrong. The message names the key."""


class SourceError(StreamcadError):
    """A frame source cannot be opened, or its URI is malformed or has an unknown scheme."""


class FrameError(StreamcadError):
    """A frame is empty, wrongly sized, of the wrong dtype, or corrupt."""


class BackendError(StreamcadError):
    """An inference backend is unknown, unavailable, or fails at run time."""


class ArtifactError(StreamcadError):
    """A model or engine file fails a check: sha256, size, version, input contract, GPU."""


class MessageError(StreamcadError):
    """A wire message is malformed, too large or of an unknown schema."""


class TransportError(StreamcadError):
    """A ZeroMQ endpoint cannot be bound or connected (busy port, bad address, ipc path in use)."""
