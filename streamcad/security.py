"""CURVE encryption and an allow-list of client public keys (ZeroMQ CURVE + ZAP).

Data flow::

    streamcad keys --out DIR --name NAME ──► DIR/NAME.key (public, share it)
                                             DIR/NAME.key_secret (secret + public, keep it)
    server (Publisher / Proxy):  ServerCurve(secret_key_file, allowed_clients_dir)
        ──► ThreadAuthenticator on the socket's context, asking _AllowList for every handshake
        ──► a client whose public key file is not in allowed_clients_dir is refused (logged WARNING)
    client (Subscriber):  ClientCurve(secret_key_file, server_public_key_file)

The allow-list directory is re-read at every handshake, so adding or removing a ``*.key`` file
takes effect for the next connection without a restart. A plain (non-CURVE) client fails the
handshake (mechanism mismatch); the server logs that through its socket monitor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from streamcad.errors import ConfigError, TransportError

__all__ = [
    "ServerCurve",
    "ClientCurve",
    "generate_keypair",
    "load_keypair",
    "start_authenticator",
    "apply_server",
    "apply_client",
    "curve_available",
]

log = logging.getLogger(__name__)


def curve_available() -> bool:
    return bool(zmq.has("curve"))


def _load(path: Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"CURVE key file not found: {path}")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"CURVE key file {path} is not a ZeroMQ certificate: {exc}") from exc
    if need_secret and not secret:
        raise ConfigError(f"CURVE key file {path} has no secret key: expected the NAME.key_secret file")
    return public, secret


def load_keypair(secret_key_file: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a NAME.key_secret file."""
    public, secret = _load(Path(secret_key_file), need_secret=True)
    return public, secret  # type: ignore[return-value]


def generate_keypair(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write OUT/NAME.key (public) and OUT/NAME.key_secret (0600). Refuses to overwrite."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"invalid key name {name!r}: expected a plain file stem like 'ui1'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pub, sec = out / f"{name}.key", out / f"{name}.key_secret"
    for p in (pub, sec):
        if p.exists():
            raise ConfigError(f"{p} already exists: choose another --name or remove it first")
    public_file, secret_file = zmq.auth.create_certificates(out, name)
    Path(secret_file).chmod(0o600)
    log.info("wrote CURVE key pair %s / %s", public_file, secret_file)
    return Path(public_file), Path(secret_file)


@dataclass(frozen=True)
class ServerCurve:
    """Server side: its own secret key file and the directory of allowed client public keys.

    allowed_clients_dir=None accepts any client that speaks CURVE (encryption without an
    allow-list); give a directory to restrict access.
    """

    secret_key_file: Path
    allowed_clients_dir: Path | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "secret_key_file", Path(self.secret_key_file))
        if self.allowed_clients_dir is not None:
            d = Path(self.allowed_clients_dir)
            if not d.is_dir():
                raise ConfigError(f"CURVE allow-list directory not found: {d}")
            object.__setattr__(self, "allowed_clients_dir", d)
        load_keypair(self.secret_key_file)  # fail now, not at bind

    @classmethod
    def from_files(cls, secret_key_file: str | Path, allowed_clients_dir: str | Path | None = None) -> ServerCurve:
        return cls(Path(secret_key_file), None if allowed_clients_dir is None else Path(allowed_clients_dir))


@dataclass(frozen=True)
class ClientCurve:
    """Client side: its own secret key file and the server's public key file."""

    secret_key_file: Path
    server_public_key_file: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "secret_key_file", Path(self.secret_key_file))
        object.__setattr__(self, "server_public_key_file", Path(self.server_public_key_file))
        load_keypair(self.secret_key_file)
        _load(self.server_public_key_file, need_secret=False)

    @classmethod
    def from_files(cls, secret_key_file: str | Path, server_public_key_file: str | Path) -> ClientCurve:
        return cls(Path(secret_key_file), Path(server_public_key_file))


class _AllowList:
    """ZAP credentials provider: allow a client iff its public key is in the directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def callback(self, domain: str, key: bytes) -> bool:
        try:
            allowed = zmq.auth.load_certificates(self.directory)
        except (OSError, ValueError) as exc:
            log.error("cannot read CURVE allow-list %s: %s; refusing client", self.directory, exc)
            return False
        ok = key in allowed
        if ok:
            log.info("CURVE client allowed: public key %s", key.decode("ascii", "replace"))
        else:
            log.warning(
                "CURVE client DENIED: public key %s is not in the allow-list %s",
                key.decode("ascii", "replace"),
                self.directory,
            )
        return ok


def start_authenticator(context: zmq.Context, curve: ServerCurve) -> ThreadAuthenticator:
    """One authenticator per context (ZAP is per context). Stop it before terminating the context."""
    auth = ThreadAuthenticator(context, log=logging.getLogger("streamcad.security.zap"))
    auth.start()
    if curve.allowed_clients_dir is None:
        auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
    else:
        auth.configure_curve_callback(domain="*", credentials_provider=_AllowList(curve.allowed_clients_dir))
    return auth


def apply_server(sock: zmq.Socket, curve: ServerCurve) -> None:
    """Make `sock` a CURVE server (call before bind)."""
    if not curve_available():
        raise TransportError("this libzmq was built without CURVE support")
    public, secret = load_keypair(curve.secret_key_file)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def apply_client(sock: zmq.Socket, curve: ClientCurve) -> None:
    """Make `sock` a CURVE client of the server whose public key is given (call before connect)."""
    if not curve_available():
        raise TransportError("this libzmq was built without CURVE support")
    public, secret = load_keypair(curve.secret_key_file)
    server_public, _ = _load(curve.server_public_key_file, need_secret=False)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public
