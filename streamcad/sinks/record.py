"""The recording sink: its options (the [record] section) and its factory in the sink registry.

    [record] --RecordConfig (strict)--> build --> streamcad.recording.Recorder (a session on
    disk; replay: streamcad replay DIR)

streamcad.recording is imported when the sink is built (it imports this package's base).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from streamcad.sinks.base import Sink, SinkOptions, register_sink

__all__ = ["RecordConfig"]


class RecordConfig(SinkOptions):
    # Session recording (streamcad.recording; CLI: run --record DIR): the delivered frames as
    # lossless PNG files, every published message as JSON lines, the run config, the model
    # manifest and versions; written as it happens (a kill loses at most the last second).
    # Reaching a bound stops the recording, never the run. Replay: streamcad replay DIR.
    dir: Annotated[str, msgspec.Meta(min_length=1)] | None = None  # None = no recording; must not exist or be empty
    max_size_mb: Annotated[float, msgspec.Meta(gt=0, le=10_000_000)] = 4096.0  # ~10 min of 1280x960 PNGs at 30 fps (223 KB each)
    max_duration_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 3600.0  # an hour: a long exam
    frames: bool = True  # false: messages only (no pixels on disk; --rescore then has nothing to score)


@register_sink("record", RecordConfig, section="record")
def build(options: RecordConfig, context: dict) -> Sink | None:
    """A Recorder of `options` when a dir is set; context: 'config' (written into the session),
    'model', 'model_path', 'source'."""
    if options.dir is None:
        return None
    from streamcad.recording import Recorder

    config = context.get("config")
    if config is None:  # built by code, not from a run: a session without the run's config
        return Recorder(options.dir, max_size_mb=options.max_size_mb, max_duration_s=options.max_duration_s,
                        frames=options.frames, lossless=bool(getattr(context.get("source"), "lossless", False)))
    # the session records the run config with these options as its [record] section
    return Recorder.from_config(msgspec.structs.replace(config, record=options), context)
