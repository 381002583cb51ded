"""The ZeroMQ sink: its options (the [publish] section) and its factory in the sink registry.

    [publish] --PublishConfig (strict)--> build --> streamcad.transport.Publisher (XPUB, the wire
    protocol of docs/PROTOCOL.md; CURVE keys read here)

``build`` is the one factory; publisher_from_config(config) builds it from a whole RunConfig (it
lives here, not in streamcad.transport, which this module imports: no import cycle).

pyzmq is imported when the sink is built, not when this module is (streamcad.config imports
PublishConfig from here).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from streamcad.sinks.base import Sink, SinkOptions, register_sink

__all__ = ["PublishConfig", "publisher_from_config"]


class PublishConfig(SinkOptions):
    endpoint: str = "tcp://127.0.0.1:5555"  # loopback by default: binding wider must be explicit
    allow_remote: bool = False
    stream: str = "probe0"
    encoding: Literal["json", "msgpack"] = "json"
    heartbeat_s: Annotated[float, msgspec.Meta(gt=0, le=1.0)] = 1.0  # the contract: >= 1 status per second
    # a slow UI may lag this long (at the stream's real rate) before IT loses messages (its seq gaps)
    hwm_seconds: Annotated[float, msgspec.Meta(gt=0, le=300.0)] = 4.0
    connect: bool = False  # connect to a proxy's XSUB instead of binding
    # recorded media at pace = "none" wait for this many subscribers before the first frame, so
    # a UI started first sees every score (0: start at once; a late UI sees the seq it joined at)
    wait_subscribers: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0
    wait_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600.0)] = 30.0  # then start anyway, with a warning
    # CURVE. Bind mode: this is the server's .key_secret and curve_allowed_dir the allowed UI keys.
    # Connect mode (a proxy frontend): this is the pipeline's own .key_secret, curve_server_key the
    # proxy's public .key, and the proxy lists the pipeline's public key in --curve-allow-publishers.
    curve_secret_key: str | None = None
    curve_allowed_dir: str | None = None  # bind mode: directory of allowed client .key files
    curve_server_key: str | None = None  # connect mode: the proxy's public NAME.key

    def __post_init__(self) -> None:
        # an allow-list without a secret key would run in plaintext: refuse, never fall back
        if self.curve_allowed_dir and not self.curve_secret_key:
            raise ValueError("curve_allowed_dir is set but curve_secret_key is not: an allow-list needs CURVE; "
                             "set curve_secret_key to the server's NAME.key_secret")
        if self.connect:
            if self.curve_allowed_dir:
                raise ValueError("curve_allowed_dir applies to a bound publisher; with connect = true the proxy "
                                 "keeps the allow-list (streamcad proxy --curve-allow-publishers DIR)")
            if bool(self.curve_secret_key) != bool(self.curve_server_key):
                raise ValueError("connect = true with CURVE needs both curve_secret_key (this pipeline's "
                                 "NAME.key_secret) and curve_server_key (the proxy's public NAME.key)")
        elif self.curve_server_key:
            raise ValueError("curve_server_key applies to connect = true (a proxy frontend); a bound publisher is "
                             "the CURVE server: set curve_secret_key and curve_allowed_dir")


@register_sink("zmq", PublishConfig, section="publish")
def build(options: PublishConfig, context: dict) -> Sink:
    """The Publisher of `options`; context: 'scores' (the run's ScoreStream) and 'config' (its
    [source] sizes the queues: streamcad.sources.capture.expected_rate)."""
    from streamcad.messages import ScoreStream
    from streamcad.transport import ClientCurve, Publisher, ServerCurve

    p = options
    curve = None
    if p.curve_secret_key:
        if p.connect:  # a CURVE client of the proxy's frontend (the options checked both keys are set)
            curve = ClientCurve.from_files(p.curve_secret_key, p.curve_server_key)
        else:
            curve = ServerCurve.from_files(p.curve_secret_key, p.curve_allowed_dir)
    scores = context.get("scores") or ScoreStream(p.stream, heartbeat_s=p.heartbeat_s)
    config = context.get("config")
    kw = {}
    if config is not None:
        from streamcad.sources.capture import expected_rate

        kw["fps"] = expected_rate(config.source.uri, config.source.pace, config.source.fps)
    return Publisher(p.endpoint, encoding=p.encoding, hwm_seconds=p.hwm_seconds, connect=p.connect,
                     allow_remote=p.allow_remote, curve=curve, scores=scores, **kw)


def publisher_from_config(config, scores=None) -> Sink:
    """The ZeroMQ sink (a streamcad.transport.Publisher) of a RunConfig's [publish] section, with
    the run's ScoreStream `scores` (None: its own): build's context from the whole config (CURVE
    keys read in build, queues sized from [source])."""
    return build(config.publish, {"config": config, "scores": scores})
