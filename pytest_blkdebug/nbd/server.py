"""Export a backend (a ``Disk``: ``Disk.serve_nbd``) over NBD: listening,
admission and shutdown.

So other programs (qemu-img, qemu-io, nbdcopy, nbdinfo, nbdfuse, the
kernel's nbd client) meet the injected faults: every request a remote client
sends goes through the backend, so a Disk's events, rules, counters and
breakpoints apply exactly as to a Python caller. ``handshake`` negotiates,
``connection`` serves one client; this module owns the listening socket,
which clients get a slot, and closing. ``docs/nbd.md`` describes what is
supported and how errors map.

Admission: at most ``max_connections`` clients hold a slot (a thread each).
When every slot is taken, the client that has been negotiating longest
gives its slot to the newcomer; only when every client is past its handshake
is the newcomer refused. With the handshake under one deadline
(``handshake_timeout``), slow or flooding clients can neither keep a slot
for long nor keep a well-behaved client out, whose handshake takes
milliseconds (issue 12). The default cap, 512, is high because nbdkit has
none and a cap only needs to bound threads and descriptors: it stays well
under the usual 1024 open files.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
import warnings
from urllib.parse import quote

from . import protocol as P
from .backend import Backend
from .connection import CLOSE_TIMEOUT, Connection

__all__ = ["DEFAULT_MAX_CONNECTIONS", "NBDExport", "is_loopback"]

log = logging.getLogger("pytest_blkdebug.nbd")

#: Clients served at once unless told otherwise (see the module doc).
DEFAULT_MAX_CONNECTIONS = 512
_URI_CLIENTS = frozenset(
    [
        "qemu",
        "qemu-img",
        "qemu-io",
        "uri",
        "nbd",
        "libnbd",
        "nbdinfo",
        "nbdcopy",
        "nbdsh",
        "nbdfuse",
    ]
)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` ("" and wildcards cannot)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class NBDExport:
    """A backend (a Disk) exported over NBD until ``close()`` (or the ``with``
    block ends). ``Disk.serve_nbd(...)`` makes one for a Disk.

    By default it listens on a Unix socket in a fresh temporary directory;
    ``tcp=True`` listens on ``host`` (127.0.0.1) at ``port`` (0: any free
    port); a host beyond loopback ("", "0.0.0.0", "::", a LAN address) warns
    (``UserWarning``), since anyone who can reach it can read and write the
    image. ``uri`` is the NBD URI clients take; ``url_for("qemu")`` the
    filename qemu-img and qemu-io accept. ``readonly`` (or a read-only
    backend) refuses writes with EPERM and says so in the export flags.
    ``max_connections`` and ``handshake_timeout`` (a deadline for the whole
    negotiation) bound what clients can hold: see the module doc.

    The export never closes the backend: the caller owns it.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        socket_path: str | os.PathLike[str] | None = None,
        tcp: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "",
        readonly: bool = False,
        description: str | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        handshake_timeout: float = 30.0,
    ) -> None:
        if backend.closed:
            raise ValueError(f"cannot export closed disk {backend.name}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise TypeError(f"max_connections must be an int, not {max_connections!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        if not (math.isfinite(handshake_timeout) and handshake_timeout > 0):
            raise ValueError(
                f"handshake_timeout must be a finite number of seconds > 0, "
                f"not {handshake_timeout!r}"
            )
        if len(name.encode()) > P.MAX_STRING:
            raise ValueError(f"export name is longer than {P.MAX_STRING} bytes")
        if tcp and socket_path is not None:
            raise ValueError("serve_nbd: give socket_path or tcp=True, not both")
        self.backend = backend
        self.name = name
        self.readonly = readonly or backend.readonly
        self.description = description
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self._closed = False
        self._lock = threading.Lock()
        self._connections: set[Connection] = set()
        # Clients still negotiating, oldest first: the first gives way when full.
        self._negotiating: dict[Connection, None] = {}
        self._tmpdir: str | None = None
        self.host: str | None = None
        self.port: int | None = None
        self.socket: str | None = None
        if tcp:
            host = host or "0.0.0.0"  # what socket.bind makes of "": every interface
            if not is_loopback(host):
                warnings.warn(
                    f"NBD export listening on {host}, beyond loopback: anyone who can "
                    f"reach it can read and write {backend.name}",
                    UserWarning,
                    stacklevel=3,
                )
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind((host, port))
            except OSError as exc:
                listener.close()
                raise OSError(
                    exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}"
                ) from None
            self.host, self.port = host, listener.getsockname()[1]
        else:
            if socket_path is None:
                self._tmpdir = tempfile.mkdtemp(prefix="blkdebug-nbd-")
                path = os.path.join(self._tmpdir, "nbd.sock")
            else:
                path = os.fspath(socket_path)
                if len(os.fsencode(path)) > 107:
                    raise ValueError(
                        f"socket path is too long for a Unix socket (max 107 bytes): {path}"
                    )
                if os.path.lexists(path):
                    if not stat.S_ISSOCK(os.lstat(path).st_mode):
                        raise FileExistsError(f"{path} exists and is not a socket")
                    os.unlink(path)  # a stale socket from an earlier run
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                listener.bind(path)
            except OSError as exc:
                listener.close()
                self._remove_tmpdir()
                raise OSError(exc.errno, f"cannot listen on {path}: {exc.strerror}") from None
            self.socket = path
        listener.listen(64)
        self._listener = listener
        self._acceptor = threading.Thread(
            target=self._accept_loop, daemon=True, name=f"nbd-accept {self.uri}"
        )
        self._acceptor.start()

    # -- addresses -------------------------------------------------------------

    @property
    def uri(self) -> str:
        """``nbd+unix:///NAME?socket=PATH`` or ``nbd://HOST:PORT/NAME``."""
        name = quote(self.name, safe="")
        if self.socket is not None:
            return f"nbd+unix:///{name}?socket={quote(self.socket, safe='/')}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"nbd://{host}:{self.port}/{name}"

    def url_for(self, client: str = "qemu") -> str:
        """The address to give a particular client program.

        ``"qemu"`` (qemu-img, qemu-io, qemu-nbd -c), ``"libnbd"`` (nbdinfo,
        nbdcopy, nbdsh, nbdfuse) and ``"uri"`` all take the NBD URI;
        ``"qemu-legacy"`` gives qemu's older ``nbd:unix:PATH`` /
        ``nbd:HOST:PORT`` syntax.
        """
        if client in _URI_CLIENTS:
            return self.uri
        if client == "qemu-legacy":
            tail = f":exportname={self.name}" if self.name else ""
            if self.socket is not None:
                return f"nbd:unix:{self.socket}{tail}"
            host = f"[{self.host}]" if self.host and ":" in self.host else self.host  # IPv6
            return f"nbd:{host}:{self.port}{tail}"
        raise ValueError(
            f"url_for: unknown client {client!r} (use 'qemu', 'libnbd', 'uri' or 'qemu-legacy')"
        )

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def connections(self) -> int:
        """How many clients are connected right now."""
        with self._lock:
            return len(self._connections)

    def transmission_flags(self, structured: bool) -> int:
        """The export flags a client is told (they tell the truth: see docs/nbd.md)."""
        flags = P.TF_HAS_FLAGS | P.TF_SEND_FLUSH | P.TF_CAN_MULTI_CONN
        if self.readonly:
            flags |= P.TF_READ_ONLY
        else:
            flags |= P.TF_SEND_FUA | P.TF_SEND_TRIM | P.TF_SEND_WRITE_ZEROES
        if structured:
            flags |= P.TF_SEND_DF  # reads are always one chunk
        return flags

    # -- serving ---------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError as exc:
                if self._closed:
                    return
                log.warning("nbd: accept failed: %s", exc)
                time.sleep(0.05)  # EMFILE and friends: do not spin
                continue
            victim = None
            with self._lock:
                admit = not self._closed
                if admit and len(self._connections) >= self.max_connections:
                    victim = next(iter(self._negotiating), None)
                    if victim is None:
                        admit = False
                    else:  # the longest negotiation gives way (see the module doc)
                        del self._negotiating[victim]
                        self._connections.discard(victim)
                if admit:
                    conn = Connection(self, sock)
                    self._connections.add(conn)
                    self._negotiating[conn] = None
            if victim is not None:
                log.info(
                    "nbd: all %d slots taken; dropping the oldest handshake", self.max_connections
                )
                victim.abort()
            if not admit:
                log.warning(
                    "nbd: refusing a connection (closed or %d clients already)",
                    self.max_connections,
                )
                sock.close()
                continue
            conn.start()

    def _negotiated(self, conn: Connection) -> None:
        """``conn``'s handshake is over (either way): it no longer gives way."""
        with self._lock:
            self._negotiating.pop(conn, None)

    def _forget(self, conn: Connection) -> None:
        with self._lock:
            self._connections.discard(conn)
            self._negotiating.pop(conn, None)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop accepting, disconnect every client, remove the socket.

        Waits at most ``timeout`` seconds for connection threads to finish. A
        request still held at a breakpoint stays held (the test owns it); its
        reply is dropped when it resumes.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept loop
        except OSError:
            pass
        self._listener.close()
        self._acceptor.join(timeout)
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            conn.abort()
        deadline = _now() + timeout
        for conn in conns:
            conn.join(max(0.0, deadline - _now()))
        if self.socket is not None:
            try:
                os.unlink(self.socket)
            except OSError:
                pass
        self._remove_tmpdir()

    def _remove_tmpdir(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> NBDExport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.connections} clients"
        return f"<NBDExport {self.uri} of {self.backend.name} ({state})>"


def _now() -> float:
    return time.monotonic()
