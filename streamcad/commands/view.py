"""`streamcad view`: a web page that shows the live streams (the `viewer` extra: aiohttp).

    streamcad run --preview ...            # in one terminal (previews: the picture)
    streamcad view [--endpoint tcp://127.0.0.1:5555 ...] [--http 127.0.0.1:8080]

Then open http://127.0.0.1:8080/. It subscribes like any UI (score, status and preview topics of
every stream at the endpoints; CURVE keys as for `listen`) and serves one page: per stream the
frame with the sector box, the saliency heat-map and the lesion box as toggles, the state and
flags in words, the smoothed score over the last --trace-s seconds, per-stage latency and fps.
The HTTP server binds loopback only unless --allow-remote (the same rule as the publisher).
"""

from __future__ import annotations

import argparse
import signal
import sys

from streamcad.errors import TransportError

HELP = "web page of the live streams: picture + overlays, state, score trace, latency (viewer extra)"
HANDLES_SIGINT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", action="append", help="endpoint to subscribe to (repeatable; default tcp://127.0.0.1:5555)")
    p.add_argument("--http", default="127.0.0.1:8080", help="HOST:PORT to serve the page on (default 127.0.0.1:8080)")
    p.add_argument("--allow-remote", action="store_true", help="permit serving beyond loopback")
    p.add_argument("--trace-s", type=float, default=30.0, help="seconds of smoothed score in the trace (default 30)")
    p.add_argument("--heartbeat", type=float, default=1.0, help="expected status interval in s (staleness = 3x)")
    p.add_argument("--curve-secret", help="CURVE: this client's NAME.key_secret file")
    p.add_argument("--curve-server-key", help="CURVE: the server's public NAME.key file")


def parse_http(text: str, allow_remote: bool) -> tuple[str, int]:
    """'HOST:PORT' (or '[::1]:PORT', or 'PORT') -> (host, port), loopback unless allow_remote."""
    from streamcad.transport import check_bind_endpoint

    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise TransportError(f"--http {text!r}: expected HOST:PORT with a port 0-65535 (e.g. 127.0.0.1:8080)")
    check_bind_endpoint(f"tcp://{host}:{port if int(port) else '*'}", allow_remote)
    return host.strip("[]"), int(port)


def run(args: argparse.Namespace) -> int:
    from streamcad.security import ClientCurve

    host, port = parse_http(args.http, args.allow_remote)
    curve = None
    if args.curve_secret or args.curve_server_key:
        if not (args.curve_secret and args.curve_server_key):
            raise TransportError("CURVE needs both --curve-secret and --curve-server-key")
        curve = ClientCurve.from_files(args.curve_secret, args.curve_server_key)
    from streamcad.viewer.server import ViewerServer

    server = ViewerServer(args.endpoint or ["tcp://127.0.0.1:5555"], host=host, port=port, curve=curve,
                          heartbeat_s=args.heartbeat, trace_s=args.trace_s)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.stop())
    from streamcad.cli import startup_interrupted

    if startup_interrupted():
        return 130
    import threading

    def announce() -> None:
        if server.ready.wait(30):
            print(f"streamcad view: open {server.url} (subscribed to {', '.join(server.endpoints)})",
                  file=sys.stderr)

    threading.Thread(target=announce, daemon=True).start()
    server.run()
    return 0
