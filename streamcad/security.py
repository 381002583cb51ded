"""CURVE encryption and an allow-list of client public keys (ZeroMQ CURVE + ZAP).

Data flow::

    streamcad keys --out DIR --name NAME ──► DIR/NAME.key (public, share it)
                                             DIR/NAME.key_secret (secret + public, keep it)
    server (Publisher / Proxy):  ServerCurve(secret_key_file, allowed_clients_dir)
        ──► ThreadAuthenticator on the socket's context, asking _AllowList for every handshake
        ──► a client whose public key file is not in allowed_clients_dir is refused (logged WARNING)
    client (Subscriber):  ClientCurve(secret_key_file, server_public_key_file)

The allow-list directory is re-read at every handshake, so adding a ``*.key`` file takes effect
for the next connection without a restart. Removing one also cuts the clients already connected
with that key (revocation): CURVE has no re-authentication, so the server's owner thread calls
``Revocation.poll()``, which every ``check_s`` (0.5 s) compares the keys admitted since the last
cut with the folder and, when one is gone, unbinds and re-binds the endpoint: every connection
drops, the allowed clients reconnect (their reconnect interval, 0.1 s by default) and handshake
again, the removed key is refused. A malformed ``*.key`` in the folder is skipped with one warning
(the others still work); a secret key file readable by group or others is refused. A plain
(non-CURVE) client fails the handshake (mechanism mismatch); the server logs that through its
socket monitor.

What may be bound is decided here too (check_bind_endpoint, bind_socket: tcp on localhost only
unless allow_remote, ipc owner-only); streamcad.transport re-exports both, and the revocation's
re-bind uses them without importing the transport (imports run one way inside the runtime too).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket as pysocket
import stat
import threading
import time
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
    "Revocation",
    "KEY_NAME_MAX",
    "check_bind_endpoint",
    "bind_socket",
]

log = logging.getLogger(__name__)


KEY_NAME_MAX = 64
_KEY_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{KEY_NAME_MAX - 1}}}")
_DENIAL_LOG_EVERY_S = 60.0  # a refused client retries every 0.1 s: one warning per key per minute


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
    if secret:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:  # like ssh: a secret others can read is no longer a secret
            raise ConfigError(
                f"CURVE secret key file {path} is readable by others (mode {mode:04o}); expected 0600: chmod 600 {path}"
            )
    return public, secret


def load_keypair(secret_key_file: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a NAME.key_secret file."""
    public, secret = _load(Path(secret_key_file), need_secret=True)
    return public, secret  # type: ignore[return-value]


def generate_keypair(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write OUT/NAME.key (public) and OUT/NAME.key_secret (0600). Refuses to overwrite."""
    if not isinstance(name, str) or not _KEY_NAME.fullmatch(name):
        shown = name if not isinstance(name, str) or len(name) <= 40 else f"{name[:40]}... ({len(name)} characters)"
        raise ConfigError(
            f"invalid key name {shown!r}: expected a plain file stem of 1-{KEY_NAME_MAX} letters, digits, '_', '-' or '.', "
            "not starting with '.' or '-', like 'ui1'"
        )
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the key directory {out}: {exc.strerror}") from exc
    pub, sec = out / f"{name}.key", out / f"{name}.key_secret"
    for p in (pub, sec):
        if p.exists():
            raise ConfigError(f"{p} already exists: choose another --name or remove it first")
    try:
        public_file, secret_file = zmq.auth.create_certificates(out, name)
    except OSError as exc:
        raise ConfigError(f"cannot write the key pair into {out}: {exc.strerror}") from exc
    Path(secret_file).chmod(0o600)
    log.info("wrote CURVE key pair %s / %s", public_file, secret_file)
    return Path(public_file), Path(secret_file)


# ----------------------------------------------------------------------------- what may be bound

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def check_bind_endpoint(endpoint: str, allow_remote: bool = False) -> tuple[str, str]:
    """Split and vet an endpoint to bind. Returns (scheme, rest).

    tcp binds only to 127.0.0.1 / localhost / ::1 unless allow_remote=True (the scores are
    patient data); ipc:// and inproc:// are local by nature.
    """
    if not isinstance(endpoint, str) or "://" not in endpoint:
        raise TransportError(f"bad endpoint {endpoint!r}: expected tcp://HOST:PORT, ipc://PATH or inproc://NAME")
    scheme, rest = endpoint.split("://", 1)
    if scheme in ("ipc", "inproc"):
        if not rest:
            raise TransportError(f"bad endpoint {endpoint!r}: empty {scheme} path")
        return scheme, rest
    if scheme != "tcp":
        if not allow_remote:
            raise TransportError(f"refusing to bind {endpoint}: only tcp/ipc/inproc are allowed without allow_remote=True")
        return scheme, rest
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port:
        raise TransportError(f"bad endpoint {endpoint!r}: expected tcp://HOST:PORT")
    if port != "*" and not (port.isdigit() and 0 < int(port) < 65536):
        raise TransportError(f"bad endpoint {endpoint!r}: port must be 1-65535 or '*'")
    if host not in _LOCAL_HOSTS and not allow_remote:
        raise TransportError(
            f"refusing to bind {endpoint}: binding beyond 127.0.0.1/localhost/ipc exposes the stream "
            "to the network; pass allow_remote=True (CLI: --allow-remote) and consider CURVE"
        )
    return scheme, rest


def _prepare_ipc(endpoint: str, path: str) -> Path | None:
    """Refuse a path a live process listens on; remove a stale socket file of a dead one."""
    if path.startswith("@"):  # Linux abstract namespace: no file
        return None
    p = Path(path)
    if not (p.exists() or p.is_symlink()):
        return p
    if not stat.S_ISSOCK(p.lstat().st_mode):
        raise TransportError(f"cannot bind {endpoint}: {p} exists and is not a socket")
    probe = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(p))
    except (ConnectionRefusedError, FileNotFoundError):
        log.warning("removing stale ipc socket file %s (no process listens on it)", p)
        p.unlink(missing_ok=True)
        return p
    except OSError as exc:
        raise TransportError(f"cannot bind {endpoint}: cannot probe {p}: {exc}") from exc
    finally:
        probe.close()
    raise TransportError(f"cannot bind {endpoint}: another live process is already bound to {p}")


def bind_socket(sock: zmq.Socket, endpoint: str, allow_remote: bool = False) -> str:
    """Bind with the checks above; returns the resolved endpoint (LAST_ENDPOINT)."""
    scheme, rest = check_bind_endpoint(endpoint, allow_remote)
    ipc_path = _prepare_ipc(endpoint, rest) if scheme == "ipc" else None
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise TransportError(f"cannot bind {endpoint}: address already in use (another process holds it)") from exc
        raise TransportError(f"cannot bind {endpoint}: {exc}") from exc
    if ipc_path is not None:
        # owner-only: other local users must not read the stream. (A umask change would be
        # process-wide and racy with other threads, so chmod right after bind.)
        os.chmod(ipc_path, 0o600)
    last = sock.getsockopt(zmq.LAST_ENDPOINT)
    return last.decode() if isinstance(last, bytes) and last else endpoint


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
    """ZAP credentials provider: allow a client iff its public key is in the directory.

    Each ``*.key`` is read on its own, so one malformed file is skipped (one warning per file
    version) instead of locking everyone out. The keys admitted since the last cut are remembered
    for Revocation.
    """

    def __init__(self, directory: Path, role: str = "client") -> None:
        self.directory = directory
        self.role = role
        self._lock = threading.Lock()
        self._admitted: set[bytes] = set()
        self._bad_files: dict[Path, float] = {}  # malformed file -> the mtime already warned about
        self._denied_at: dict[bytes, float] = {}

    def keys(self) -> set[bytes]:
        try:
            files = sorted(self.directory.glob("*.key"))
        except OSError as exc:
            log.error("cannot read CURVE allow-list %s: %s; refusing every %s", self.directory, exc, self.role)
            return set()
        out = set()
        for f in files:
            try:
                public, _ = zmq.auth.load_certificate(f)
                mtime = f.stat().st_mtime
            except (OSError, ValueError) as exc:
                try:
                    mtime = f.stat().st_mtime
                except OSError:  # removed meanwhile
                    continue
                if self._bad_files.get(f) != mtime:
                    self._bad_files[f] = mtime
                    log.warning("CURVE allow-list %s: ignoring malformed key file %s (%s); the other keys still work",
                                self.directory, f.name, exc)
                continue
            self._bad_files.pop(f, None)
            if public:
                out.add(public)
        return out

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.keys()
        shown = key.decode("ascii", "replace")
        if ok:
            with self._lock:
                self._admitted.add(key)
            log.info("CURVE %s allowed: public key %s", self.role, shown)
        else:
            now = time.monotonic()
            last = self._denied_at.get(key)
            if last is None or now - last >= _DENIAL_LOG_EVERY_S:
                if len(self._denied_at) >= 1024:  # a client making new key pairs must not grow this
                    self._denied_at.clear()
                self._denied_at[key] = now
                log.warning("CURVE %s DENIED: public key %s is not in the allow-list %s (repeats of this denial "
                            "are not logged for %.0f s)", self.role, shown, self.directory, _DENIAL_LOG_EVERY_S)
        return ok

    def revoked(self) -> set[bytes]:
        """Keys admitted since the last cut that are no longer in the folder."""
        current = self.keys()
        with self._lock:
            return self._admitted - current

    def forget_admitted(self) -> None:
        with self._lock:
            self._admitted.clear()


class _AllowAny:
    """ZAP credentials provider for CURVE without an allow-list: any key pair may connect."""

    def callback(self, domain: str, key: bytes) -> bool:
        return True


class _Authenticator(ThreadAuthenticator):
    """ThreadAuthenticator that keeps the allow-list of each ZAP domain it serves."""

    def __init__(self, context: zmq.Context) -> None:
        super().__init__(context, log=logging.getLogger("streamcad.security.zap"))
        self.allow_lists: dict[str, _AllowList] = {}

    def add(self, curve: ServerCurve, domain: str = "*", role: str = "client") -> None:
        if curve.allowed_clients_dir is None:
            # not configure_curve(CURVE_ALLOW_ANY): pyzmq keeps that flag for ALL domains, so
            # it would also open a domain that has an allow-list (the proxy's publishers)
            self.configure_curve_callback(domain=domain, credentials_provider=_AllowAny())
        else:
            allow = self.allow_lists[domain] = _AllowList(curve.allowed_clients_dir, role)
            self.configure_curve_callback(domain=domain, credentials_provider=allow)


def start_authenticator(context: zmq.Context, curve: ServerCurve, domain: str = "*", role: str = "client") -> _Authenticator:
    """One authenticator per context (ZAP is per context). Stop it before terminating the context.
    More domains (one per socket, set with ZAP_DOMAIN before bind): ``auth.add(curve, domain)``."""
    auth = _Authenticator(context)
    auth.start()
    auth.add(curve, domain, role)
    return auth


class Revocation:
    """Cut the connections of a key removed from the allow-list (see the module docstring).

    Call ``poll(sock, endpoint)`` from the thread that owns ``sock``; it costs one folder read
    every ``check_s``. When an admitted key is gone it unbinds and re-binds ``endpoint`` (all
    connections on it drop; allowed clients reconnect and handshake again) and returns the number
    of revoked keys. Worst-case cut-off: check_s + the time between two polls.
    """

    def __init__(self, auth: _Authenticator, domain: str = "*", check_s: float = 0.5) -> None:
        self.allow = auth.allow_lists.get(domain)
        self.check_s = float(check_s)
        self._next = time.monotonic() + self.check_s
        self.cuts = 0

    def due(self, now: float | None = None) -> set[bytes]:
        """The revoked keys if a check is due and found some, else an empty set."""
        if self.allow is None:
            return set()
        now = time.monotonic() if now is None else now
        if now < self._next:
            return set()
        self._next = now + self.check_s
        return self.allow.revoked()

    def cut(self, sock: zmq.Socket, endpoint: str, revoked: set[bytes]) -> None:
        self.allow.forget_admitted()  # before the re-bind: every handshake after it is recorded again
        try:
            sock.unbind(endpoint)
        except zmq.ZMQError as exc:
            raise TransportError(f"revocation: cannot unbind {endpoint}: {exc}") from exc
        # zmq_unbind closes the listener asynchronously (in libzmq's I/O thread): the port can be
        # busy for a few ms more. Retry briefly; past that it is someone else's, and an error.
        deadline = time.monotonic() + 2.0
        while True:
            try:
                bind_socket(sock, endpoint, allow_remote=True)  # the endpoint was vetted at the first bind
                break
            except TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        self.cuts += 1
        log.warning("CURVE key(s) %s removed from %s: cut every connection on %s (allowed %ss reconnect)",
                    ", ".join(k.decode("ascii", "replace") for k in sorted(revoked)), self.allow.directory,
                    endpoint, self.allow.role)

    def poll(self, sock: zmq.Socket, endpoint: str) -> int:
        revoked = self.due()
        if revoked:
            self.cut(sock, endpoint, revoked)
        return len(revoked)


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
