"""`streamcad proxy --frontend ADDR --backend ADDR`: XSUB/XPUB proxy until Ctrl-C.

Pipelines publish to the frontend (`streamcad run --endpoint ADDR` with connect mode, or
Publisher(connect=True)); UIs subscribe to the backend. See docs/PROTOCOL.md.
"""

from __future__ import annotations

import argparse

from streamcad.proxy import DEFAULT_BACKEND, DEFAULT_FRONTEND, Proxy
from streamcad.security import ServerCurve

HELP = "XSUB/XPUB proxy: many scanners to many UIs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frontend", default=DEFAULT_FRONTEND, help=f"XSUB bind, publishers connect (default {DEFAULT_FRONTEND})")
    p.add_argument("--backend", default=DEFAULT_BACKEND, help=f"XPUB bind, subscribers connect (default {DEFAULT_BACKEND})")
    p.add_argument("--allow-remote", action="store_true", help="allow binding beyond 127.0.0.1/localhost")
    p.add_argument("--curve-secret", help="CURVE on the backend: the proxy's NAME.key_secret file")
    p.add_argument("--curve-allow", help="CURVE: directory of allowed client public keys (*.key)")


def run(args: argparse.Namespace) -> int:
    curve = None
    if args.curve_secret:
        curve = ServerCurve(args.curve_secret, args.curve_allow)
    proxy = Proxy(args.frontend, args.backend, allow_remote=args.allow_remote, curve=curve).start()
    print(f"proxy: publishers -> {proxy.frontend}   subscribers -> {proxy.backend}   (Ctrl-C stops)")
    try:
        while proxy.running:
            proxy.join(0.5)
    finally:
        proxy.stop()
    return 0
