"""`streamcad proxy --frontend ADDR --backend ADDR`: XSUB/XPUB proxy until Ctrl-C.

Pipelines publish to the frontend (`streamcad run --endpoint ADDR` with connect mode, or
Publisher(connect=True)); UIs subscribe to the backend. See docs/PROTOCOL.md.

Access control (docs/RELIABILITY.md): --curve-secret is the proxy's key pair; --curve-allow lists
the UIs' public keys (backend), --curve-allow-publishers the pipelines' (frontend). Each needs
--curve-secret; without --curve-allow-publishers any local process can publish (warned at start).
"""

from __future__ import annotations

import argparse

from streamcad.errors import ConfigError
from streamcad.proxy import DEFAULT_BACKEND, DEFAULT_FRONTEND, MAX_MESSAGE_BYTES, Proxy
from streamcad.security import ServerCurve

HELP = "XSUB/XPUB proxy: many scanners to many UIs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frontend", default=DEFAULT_FRONTEND, help=f"XSUB bind, publishers connect (default {DEFAULT_FRONTEND})")
    p.add_argument("--backend", default=DEFAULT_BACKEND, help=f"XPUB bind, subscribers connect (default {DEFAULT_BACKEND})")
    p.add_argument("--allow-remote", action="store_true", help="allow binding beyond 127.0.0.1/localhost")
    p.add_argument("--curve-secret", help="CURVE: the proxy's NAME.key_secret file (encrypts the backend; "
                   "and the frontend with --curve-allow-publishers)")
    p.add_argument("--curve-allow", help="CURVE: directory of allowed UI public keys (*.key), backend")
    p.add_argument("--curve-allow-publishers", help="CURVE: directory of allowed pipeline public keys (*.key), frontend")
    p.add_argument("--max-message-bytes", type=int, default=MAX_MESSAGE_BYTES,
                   help=f"a peer sending a bigger message is disconnected (default {MAX_MESSAGE_BYTES})")


def run(args: argparse.Namespace) -> int:
    for flag, value in (("--curve-allow", args.curve_allow), ("--curve-allow-publishers", args.curve_allow_publishers)):
        if value and not args.curve_secret:  # an allow-list without CURVE would run in plaintext
            raise ConfigError(f"{flag} needs --curve-secret (the proxy's NAME.key_secret): an allow-list only works with CURVE")
    curve = publisher_curve = None
    if args.curve_secret:
        curve = ServerCurve(args.curve_secret, args.curve_allow)
        if args.curve_allow_publishers:
            publisher_curve = ServerCurve(args.curve_secret, args.curve_allow_publishers)
    proxy = Proxy(args.frontend, args.backend, allow_remote=args.allow_remote, curve=curve,
                  publisher_curve=publisher_curve, max_message_bytes=args.max_message_bytes).start()
    print(f"proxy: publishers -> {proxy.frontend}   subscribers -> {proxy.backend}   (Ctrl-C stops)")
    try:
        while proxy.running:
            proxy.join(0.5)
    finally:
        proxy.stop()
    return 0
