"""Sinks: the pipeline's outputs. ``Sink`` (the interface, and how to add one: see
streamcad.sinks.base), ``MemorySink`` (the shipped fake), and ``open_sinks(config, scores)``,
the one factory that builds the configured outputs:

    zmq      streamcad.transport.Publisher    always ([publish]: the wire protocol)
    record   streamcad.recording.Recorder     when [record] dir is set (CLI: run --record DIR)
    preview  streamcad.sinks.preview          when [preview] enabled (CLI: run --preview): the
                                              'preview' topic, sent through the zmq sink
    igtl     streamcad.sinks.igtl             when [igtl] enabled (CLI: run --igtl [HOST:]PORT):
                                              an OpenIGTLink server for 3D Slicer (the igtl extra)

Each builder is imported when used, so a runtime without pyzmq can still record, and the
interface itself imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable

from streamcad.errors import StreamcadError
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


def _preview(config, scores, context) -> Sink | None:
    if not config.preview.enabled:
        return None
    publisher = context.get("zmq")
    if publisher is None:
        raise StreamcadError("preview.enabled: previews go out through the ZeroMQ publisher, and this run has none")
    from streamcad.sinks.preview import PreviewSink

    model = context.get("model")
    manifest = getattr(model, "manifest", None)
    p = config.preview
    return PreviewSink(publisher, fps=p.fps, max_side=p.max_side, quality=p.quality,
                       saliency_kind=getattr(manifest, "saliency_kind", None) or "attention",
                       input_size=model.spec.size if model is not None else 160)


def _igtl(config, scores, context) -> Sink | None:
    if not config.igtl.enabled:
        return None
    from streamcad.sinks.igtl import IgtlSink

    return IgtlSink.from_config(config)


# name -> builder(config, scores, context) -> Sink | None (None: not configured). Order = the
# order messages are written: the wire first, so a slow disk never delays a subscriber.
SINKS: dict[str, Callable] = {"zmq": _zmq, "record": _record, "preview": _preview, "igtl": _igtl}


def open_sinks(config, scores, context: dict | None = None, only=None) -> list[Sink]:
    """Build every configured sink (or those named in `only`), in SINKS order. If one fails, the
    ones built are closed and the error propagates (it names what was wrong). `context`: what the
    run knows that the config does not (the model, the source) for sinks that keep it (the recorder)."""
    unknown = sorted(set(only or ()) - set(SINKS))
    if unknown:
        raise StreamcadError(f"unknown sink(s) {unknown}: expected some of {sorted(SINKS)}")
    built: list[Sink] = []
    context = {} if context is None else context  # a builder finds the sinks built before it by name
    try:
        for name, build in SINKS.items():
            if only is not None and name not in only:
                continue
            sink = build(config, scores, context)
            if sink is not None:
                built.append(sink)
                context[name] = sink
                sink.open()
    except BaseException:
        for sink in built:
            sink.close()
        raise
    return built
