"""Sinks: the pipeline's outputs. ``Sink`` (the interface, and how to add one: see
streamcad.sinks.base), ``MemorySink`` (the shipped fake), and ``open_sinks(config, scores)``,
the one factory that builds the configured outputs:

    zmq      streamcad.transport.Publisher    always ([publish]: the wire protocol)
    record   streamcad.recording.Recorder     when [record] dir is set (CLI: run --record DIR)

Each builder is imported when used, so a runtime without pyzmq can still record, and the
interface itself imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable

from streamcad.sinks.base import Sink
from streamcad.sinks.memory import MemorySink

__all__ = ["Sink", "MemorySink", "SINKS", "open_sinks"]


def _zmq(config, scores, context) -> Sink | None:
    from streamcad.transport import publisher_from_config

    return publisher_from_config(config, scores)


def _record(config, scores, context) -> Sink | None:
    if config.record.dir is None:
        return None
    from streamcad.recording import Recorder

    return Recorder.from_config(config, context)


# name -> builder(config, scores, context) -> Sink | None (None: not configured). Order = the
# order messages are written: the wire first, so a slow disk never delays a subscriber.
SINKS: dict[str, Callable] = {"zmq": _zmq, "record": _record}


def open_sinks(config, scores, context: dict | None = None) -> list[Sink]:
    """Build every configured sink, in SINKS order. If one fails, the ones built are closed and
    the error propagates (it names what was wrong). `context`: what the run knows that the
    config does not (the model manifest, versions) for sinks that keep it (the recorder)."""
    built: list[Sink] = []
    try:
        for build in SINKS.values():
            sink = build(config, scores, context or {})
            if sink is not None:
                built.append(sink)
                sink.open()
    except BaseException:
        for sink in built:
            sink.close()
        raise
    return built
