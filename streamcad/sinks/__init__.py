"""Sinks: the pipeline's outputs, one registry of name -> (factory, options type, config section).

``Sink`` (the interface), ``MemorySink`` (the shipped fake), the registry (``register_sink``,
``build_sink``, ``sink_options``, ``sink_names``: streamcad.sinks.base) and ``open_sinks(config,
scores)``, which builds every configured output from its own section, in write order:

    zmq      [publish]  streamcad.sinks.zmq -> transport.Publisher   always: the wire protocol
    record   [record]   streamcad.sinks.record -> recording.Recorder  when dir is set (run --record DIR)
    preview  [preview]  streamcad.sinks.preview                       when enabled (run --preview): the
                                                                      'preview' topic, through the zmq sink
    igtl     [igtl]     streamcad.sinks.igtl                          when enabled (run --igtl [HOST:]PORT):
                                                                      OpenIGTLink for 3D Slicer (the igtl extra)
    memory   (none)     streamcad.sinks.memory                        by code only: build_sink("memory", {...})

Each section is the sink's own options Struct (declared in its module, strict: an unknown key is
an error naming the key, the sink and the keys it accepts); streamcad.config names them as
RunConfig's sections. How to add a sink (one module: the class, its options, one register call):
see streamcad.sinks.base. The heavy libraries (pyzmq, cv2, pyigtl) are imported when a sink is
built, so a runtime without pyzmq can still record and importing this package stays light.
"""

from __future__ import annotations

import importlib

from streamcad.errors import ConfigError, StreamcadError
from streamcad.sinks.base import (
    Sink,
    SinkOptions,
    build_sink,
    register_sink,
    sink_names,
    sink_options,
)

# the built-in sink modules, imported for their register_sink calls in this order = the order
# messages are written: the wire first, so a slow disk never delays a subscriber
_BUILTIN = ("zmq", "record", "preview", "igtl", "memory")
for _name in _BUILTIN:
    importlib.import_module(f"streamcad.sinks.{_name}")
from streamcad.sinks.memory import MemorySink  # noqa: E402 (after the loop: registration order)

__all__ = ["Sink", "SinkOptions", "MemorySink", "register_sink", "build_sink", "sink_options", "sink_names",
           "open_sinks"]


def open_sinks(config, scores, context: dict | None = None, only=None) -> list[Sink]:
    """Build every configured sink (or those named in `only`) from its RunConfig section, in
    registration order, and open it. If one fails, the ones built are closed and the error
    propagates (it names what was wrong). `context`: what the run knows that the options do not
    (the model, the source) for sinks that keep it; 'config' and 'scores' are added."""
    from streamcad.sinks.base import _SINKS

    names = sink_names(configured=True)
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise StreamcadError(f"unknown sink(s) {unknown}: expected some of {sorted(names)}")
    built: list[Sink] = []
    context = {} if context is None else context  # a factory finds the sinks built before it by name
    context.setdefault("config", config)
    context.setdefault("scores", scores)
    try:
        for name in names:
            if only is not None and name not in only:
                continue
            entry = _SINKS[name]
            options = getattr(config, entry.section, None)
            if not isinstance(options, entry.options):
                raise ConfigError(f"[{entry.section}]: sink {name!r} expects {entry.options.__name__} options; "
                                  f"got {type(options).__name__}")
            sink = build_sink(name, options, context)
            if sink is not None:
                built.append(sink)
                context[name] = sink
                sink.open()
    except BaseException:
        for sink in built:
            sink.close()
        raise
    return built
