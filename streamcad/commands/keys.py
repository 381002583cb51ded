"""`streamcad keys --out DIR --name NAME`: a CURVE key pair for access control.

Writes DIR/NAME.key (public: give it to the other side) and DIR/NAME.key_secret (0600: keep it).
A server admits a client when the client's NAME.key is in its --curve-allow directory.
"""

from __future__ import annotations

import argparse

import zmq.auth

from streamcad.security import generate_keypair

HELP = "generate CURVE key pairs for access control"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="directory for the key files")
    p.add_argument("--name", required=True, help="file stem, e.g. server or ui-ward3")


def run(args: argparse.Namespace) -> int:
    public, secret = generate_keypair(args.out, args.name)
    key, _ = zmq.auth.load_certificate(public)
    print(f"public key  {public}  ({key.decode()})")
    print(f"secret key  {secret}  (keep private)")
    return 0
