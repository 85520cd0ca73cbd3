"""Serve a Disk over NBD, so other programs (qemu-img, qemu-io, nbdcopy,
nbdinfo, nbdfuse, the kernel's nbd client) meet the injected faults.

Every request a remote client sends goes through the ``Disk``: its events,
rules, counters and breakpoints apply exactly as to a Python caller. The
wire protocol (constants, layouts, errno mapping) lives in ``nbd_protocol``,
the ``blkdebug-nbd`` command line in ``nbd_cli``; ``docs/nbd.md`` describes
what is supported and how errors map.

Threading model ("leader/follower"), chosen because it is both simple and
fast in CPython: each connection has one *leader* thread that reads a
request and runs it inline through the Disk, then reads the next. No thread
hand-off, no queue, no per-request allocation beyond the data. When a request
is suspended at a breakpoint, the engine tells its observer (in the thread
that is about to block); if that thread is a connection's leader, it hands
the leadership to a fresh thread before blocking, so the connection keeps
serving other requests while the held one waits, and the held thread sends
its own reply when it is resumed and then ends. Several connections are
several leaders. Replies can therefore leave out of order, which NBD allows
(they carry the request's handle).

Why one module of ~700 lines: the export (listening, accepting, closing) and
its connections share this leadership hand-over and the shutdown state; split
apart, each half would need the other's internals.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import struct
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from urllib.parse import quote

from ..core.disk import Disk, Extent
from ..core.engine import Engine
from . import protocol as P
from .protocol import (
    CHUNK,
    CMD_FLAG_DF,
    CMD_FLAG_FUA,
    CMD_FLAG_NO_HOLE,
    CMD_FLAG_REQ_ONE,
    CMD_READ,
    CMD_WRITE,
    DATA_CHUNK,
    MAX_PAYLOAD,
    REPLY_FLAG_DONE,
    REPLY_TYPE_NONE,
    REPLY_TYPE_OFFSET_DATA,
    REQUEST,
    REQUEST_MAGIC,
    SIMPLE_REPLY,
    SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC,
    ProtocolError,
    Refused,
)

__all__ = ["NBDExport"]

log = logging.getLogger("pytest_blkdebug.nbd")

_MSG_WAITALL = socket.MSG_WAITALL
_META_ID = 1  # the id we give base:allocation
#: Write buffers up to this size are kept by the leader thread and reused.
_KEEP_BUFFER = 4 << 20
_CLOSE_TIMEOUT = 5.0
#: The commands served and the flags each accepts (every request that is not
#: a plain READ or WRITE is checked against this).
_ALLOWED_FLAGS = {
    CMD_READ: CMD_FLAG_FUA | CMD_FLAG_DF,
    CMD_WRITE: CMD_FLAG_FUA,
    P.CMD_FLUSH: CMD_FLAG_FUA,
    P.CMD_TRIM: CMD_FLAG_FUA,
    P.CMD_WRITE_ZEROES: CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
    P.CMD_BLOCK_STATUS: CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
}
# Short names for the hot loop.
_MAX = MAX_PAYLOAD
_FUA = CMD_FLAG_FUA
_SIMPLE, _STRUCT = SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC
_DONE, _DATA = REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA
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


# -- breakpoint hand-over -------------------------------------------------------

_local = threading.local()
_watched: weakref.WeakSet[Engine] = weakref.WeakSet()
_watched_lock = threading.Lock()


def _on_engine(what: str, detail: object) -> None:
    """Engine observer: a connection leader about to be suspended hands over."""
    if what != "suspend":
        return
    conn = getattr(_local, "leader", None)
    if conn is not None:
        _local.leader = None
        conn._hand_over()


def _watch(engine: Engine) -> None:
    with _watched_lock:
        if engine not in _watched:
            engine.add_observer(_on_engine)
            _watched.add(engine)


# -- the export -------------------------------------------------------------------


class NBDExport:
    """A Disk exported over NBD until ``close()`` (or the ``with`` block ends).

    By default it listens on a Unix socket in a fresh temporary directory;
    ``tcp=True`` listens on ``host`` (127.0.0.1) at ``port`` (0: any free
    port). ``uri`` is the NBD URI clients take; ``url_for("qemu")`` the
    filename qemu-img and qemu-io accept. ``readonly`` (or a read-only Disk)
    refuses writes with EPERM and says so in the export flags.

    The export never closes the Disk: the caller owns it.
    """

    def __init__(
        self,
        disk: Disk,
        *,
        socket_path: str | os.PathLike[str] | None = None,
        tcp: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "",
        readonly: bool = False,
        description: str | None = None,
        max_connections: int = 64,
        handshake_timeout: float = 30.0,
    ) -> None:
        if disk.closed:
            raise ValueError(f"cannot export closed disk {disk.path}")
        if len(name.encode()) > P.MAX_STRING:
            raise ValueError(f"export name is longer than {P.MAX_STRING} bytes")
        if tcp and socket_path is not None:
            raise ValueError("serve_nbd: give socket_path or tcp=True, not both")
        self.disk = disk
        self.name = name
        self.readonly = readonly or disk.readonly
        self.description = description
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self._closed = False
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._tmpdir: str | None = None
        self.host: str | None = None
        self.port: int | None = None
        self.socket: str | None = None
        if tcp:
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
            except OSError:
                listener.close()
                self._remove_tmpdir()
                raise
            self.socket = path
        listener.listen(64)
        self._listener = listener
        _watch(disk.engine)
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
            return f"nbd:{self.host}:{self.port}{tail}"
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
            with self._lock:
                refuse = self._closed or len(self._connections) >= self.max_connections
                if not refuse:
                    conn = _Connection(self, sock)
                    self._connections.add(conn)
            if refuse:
                log.warning(
                    "nbd: refusing a connection (closed or %d clients already)",
                    self.max_connections,
                )
                sock.close()
                continue
            conn.start()

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.discard(conn)

    def close(self, timeout: float = _CLOSE_TIMEOUT) -> None:
        """Stop accepting, disconnect every client, remove the socket.

        Waits at most ``timeout`` seconds for connection threads to finish. A
        request still held at a breakpoint stays held (the test owns it); its
        reply is dropped when it resumes.
        """
        if self._closed:
            return
        self._closed = True
        for op in (lambda: self._listener.shutdown(socket.SHUT_RDWR), self._listener.close):
            try:
                op()
            except OSError:
                pass
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
        return f"<NBDExport {self.uri} of {self.disk.path} ({state})>"


def _now() -> float:
    return time.monotonic()


# -- one client connection ------------------------------------------------------


class _Connection:
    """One client: the handshake, then the leader loop (see the module doc)."""

    def __init__(self, export: NBDExport, sock: socket.socket) -> None:
        self.export = export
        self.sock = sock
        self.disk = export.disk
        self.readonly = export.readonly
        self.structured = False
        self.meta = False  # base:allocation selected
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._followers = 0  # held requests whose threads have handed over
        self._reading = True
        self._closed = False
        self._leader_thread: threading.Thread | None = None
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def start(self) -> None:
        self._spawn(self._run)

    def _spawn(self, target: Callable[[], None]) -> None:
        """Start a thread that becomes this connection's leader."""
        thread = threading.Thread(target=target, daemon=True, name="nbd-conn")
        thread.start()
        self._leader_thread = thread

    def join(self, timeout: float) -> None:
        """Wait for the current leader (threads held at breakpoints are the
        test's business: they end when it resumes them)."""
        deadline = _now() + timeout
        while True:
            thread = self._leader_thread
            if thread is None or thread is threading.current_thread():
                return
            thread.join(max(0.0, deadline - _now()))
            if self._leader_thread is thread or _now() >= deadline:
                return

    def abort(self) -> None:
        """Server shutdown: wake the leader and any blocked send."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _run(self) -> None:
        try:
            self.sock.settimeout(self.export.handshake_timeout)
            export = self.export
            negotiation = P.Negotiation(
                self.sock,
                name=export.name,
                size=self.disk.size,
                description=export.description,
                flags=export.transmission_flags,
                closing=lambda: export.closed,
                meta_id=_META_ID,
            )
            entered = negotiation.run()
            self.structured = negotiation.structured
            self.meta = negotiation.meta
        except (OSError, ProtocolError) as exc:
            log.debug("nbd: handshake ended: %s", exc)
            entered = False
        except Exception:  # a bug: log it, drop this client, keep serving others
            log.exception("nbd: handshake failed")
            entered = False
        if not entered:
            self._end_reading()
            return
        self.sock.settimeout(None)
        self._lead()

    # -- leadership -----------------------------------------------------------

    def _lead(self) -> None:
        _local.leader = self
        try:
            self._loop()
        except (OSError, ProtocolError) as exc:
            log.debug("nbd: connection ended: %s", exc)
        except Exception:
            log.exception("nbd: connection failed")
        finally:
            if getattr(_local, "leader", None) is self:
                _local.leader = None
                self._end_reading()
            else:  # handed over during the last request, which is done now
                self._follower_done()

    def _hand_over(self) -> None:
        """Called in the leader's thread just before a breakpoint suspends it."""
        with self._state_lock:
            self._followers += 1
            if not self._reading:
                return
        self._spawn(self._lead)

    def _end_reading(self) -> None:
        with self._state_lock:
            self._reading = False
            done = self._followers == 0
        if done:
            self._close()

    def _follower_done(self) -> None:
        with self._state_lock:
            self._followers -= 1
            done = self._followers == 0 and not self._reading
        if done:
            self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        locked = self._send_lock.acquire(timeout=_CLOSE_TIMEOUT)
        try:
            self.sock.close()
        finally:
            if locked:
                self._send_lock.release()
        self.export._forget(self)

    # -- sending ----------------------------------------------------------------

    def _send(self, parts: list[bytes | bytearray | memoryview], total: int) -> None:
        with self._send_lock:
            try:
                sent = self.sock.sendmsg(parts)
                if sent != total:
                    self._send_rest(parts, sent)
            except OSError as exc:  # the client went away; the leader will see EOF
                log.debug("nbd: send failed: %s", exc)

    def _send_rest(self, parts: list[bytes | bytearray | memoryview], sent: int) -> None:
        for part in parts:
            view = memoryview(part).cast("B")
            if sent >= len(view):
                sent -= len(view)
                continue
            self.sock.sendall(view[sent:])
            sent = 0

    def _send_ok(self, handle: int) -> None:
        self._send([SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, handle)], 16)

    def _send_error(self, handle: int, error: int, message: str) -> None:
        if self.structured:
            text = message.encode("utf-8", "replace")[: P.MAX_STRING]
            head = CHUNK.pack(
                STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, P.REPLY_TYPE_ERROR, handle, 6 + len(text)
            )
            self._send([head, P.ERROR_PAYLOAD.pack(error, len(text)), text], 26 + len(text))
        else:
            self._send([SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, handle)], 16)

    def _fail(self, handle: int, exc: BaseException) -> None:
        """Reply to a request the Disk refused (injected error or otherwise)."""
        if isinstance(exc, OSError):
            error = P.nbd_error(exc.errno)
        elif isinstance(exc, ValueError) and self.disk.closed:
            error = P.NBD_ESHUTDOWN
        else:
            log.error("nbd: request failed unexpectedly", exc_info=exc)
            error = P.NBD_EIO
        self._send_error(handle, error, str(exc))

    # -- transmission -----------------------------------------------------------

    def _loop(self) -> None:
        """The leader loop: read a request, run it, reply; until EOF or DISC.

        READ and WRITE that need no checking beyond the fast tests run here;
        everything else (and every invalid request) goes to ``_command``.
        """
        sock = self.sock
        recv_into = sock.recv_into
        header = bytearray(28)
        hview = memoryview(header)
        unpack = REQUEST.unpack_from
        disk = self.disk
        size = disk.size
        structured = self.structured
        read_flags = _FUA | CMD_FLAG_DF if structured else _FUA
        write_ok = not self.readonly
        send = self._send
        simple = SIMPLE_REPLY.pack
        chunk = DATA_CHUNK.pack
        local = _local
        wbuf = memoryview(bytearray(0))  # the kept write buffer, viewed once
        while True:
            got = recv_into(hview, 28, _MSG_WAITALL)
            if got != 28:
                if got == 0 or not self._recv_rest(hview, got):
                    if got:
                        log.debug("nbd: truncated request header (%d bytes)", got)
                    return
            magic, flags, cmd, handle, offset, length = unpack(header)
            if magic != REQUEST_MAGIC:
                log.info("nbd: bad request magic %#x; disconnecting", magic)
                return
            end = offset + length
            if cmd == CMD_READ and not flags & ~read_flags and length <= _MAX and end <= size:
                try:
                    data = disk.read(offset, length)
                except Exception as exc:
                    self._fail(handle, exc)
                else:
                    if not structured:
                        send([simple(_SIMPLE, 0, handle), data], 16 + length)
                    elif length:
                        head = chunk(_STRUCT, _DONE, _DATA, handle, length + 8, offset)
                        send([head, data], 28 + length)
                    else:
                        send([CHUNK.pack(_STRUCT, _DONE, REPLY_TYPE_NONE, handle, 0)], 20)
            elif (
                cmd == CMD_WRITE
                and write_ok
                and not flags & ~_FUA
                and length <= _MAX
                and end <= size
            ):
                if length > len(wbuf):
                    buf = memoryview(bytearray(length))
                    if length <= _KEEP_BUFFER:
                        wbuf = buf
                    view = buf[:length]
                else:
                    view = wbuf[:length]
                if length and not self._recv_rest(view, 0):
                    log.debug("nbd: connection closed inside a write payload")
                    return
                try:
                    disk.write(offset, view)
                    if flags & _FUA:
                        disk.flush()
                except Exception as exc:
                    self._fail(handle, exc)
                else:
                    send([simple(_SIMPLE, 0, handle)], 16)
                finally:
                    view.release()
            elif not self._command(cmd, flags, handle, offset, length):
                return
            if local.leader is not self:
                return  # this request was held and handed over; the new leader reads on

    def _recv_rest(self, view: memoryview, got: int) -> bool:
        """Fill ``view`` from byte ``got`` on; False if the peer closed first."""
        n = len(view)
        while got < n:
            k = self.sock.recv_into(view[got:], n - got, _MSG_WAITALL)
            if k == 0:
                return False
            got += k
        return True

    def _command(self, cmd: int, flags: int, handle: int, offset: int, length: int) -> bool:
        """Every request the fast path did not take; False ends the connection."""
        if cmd == P.CMD_DISC:
            return False
        if cmd == CMD_WRITE:
            if length > MAX_PAYLOAD:
                self._send_error(
                    handle,
                    P.NBD_EINVAL,
                    f"write of {length} bytes is over the {MAX_PAYLOAD}-byte "
                    f"maximum; disconnecting",
                )
                return False
            if length:  # consume the payload we refuse, so the stream stays in step
                P.discard(self.sock, length)
        try:
            self._validate(cmd, flags, offset, length)
            self._execute(cmd, flags, handle, offset, length)
        except Refused as exc:
            self._send_error(handle, exc.code, exc.message)
        except Exception as exc:
            self._fail(handle, exc)
        return True

    def _validate(self, cmd: int, flags: int, offset: int, length: int) -> None:
        name = P.CMD_NAMES.get(cmd) or f"command {cmd}"
        allowed = _ALLOWED_FLAGS.get(cmd)
        if allowed is None:
            raise Refused(P.NBD_EINVAL, f"{name} is not supported")
        if cmd == CMD_READ and not self.structured:
            allowed &= ~CMD_FLAG_DF  # DF means something only with structured replies
        if flags & ~allowed:
            raise Refused(P.NBD_EINVAL, f"{name}: unsupported flags {flags:#x}")
        writes = cmd in (CMD_WRITE, P.CMD_TRIM, P.CMD_WRITE_ZEROES)
        if writes and self.readonly:
            raise Refused(P.NBD_EPERM, f"{name}: the export is read-only")
        if cmd == P.CMD_FLUSH:
            if offset or length:
                raise Refused(P.NBD_EINVAL, "flush: offset and length must be 0")
            return
        if cmd == P.CMD_BLOCK_STATUS:
            if not self.meta:
                raise Refused(P.NBD_EINVAL, "block_status: no metadata context was negotiated")
            if length == 0:
                raise Refused(P.NBD_EINVAL, "block_status: length 0")
        if cmd == CMD_READ and length > MAX_PAYLOAD:
            raise Refused(
                P.NBD_EOVERFLOW, f"read of {length} bytes is over the {MAX_PAYLOAD}-byte maximum"
            )
        size = self.disk.size
        if offset > size or length > size - offset:
            code = P.NBD_ENOSPC if cmd in (CMD_WRITE, P.CMD_WRITE_ZEROES) else P.NBD_EINVAL
            raise Refused(
                code,
                f"{name} of {length} bytes at offset {offset} is beyond the "
                f"end of the {size}-byte export",
            )

    def _execute(self, cmd: int, flags: int, handle: int, offset: int, length: int) -> None:
        """Run a validated request (not READ or WRITE: the fast path takes
        every valid one of those) through the Disk and reply."""
        disk = self.disk
        if cmd == P.CMD_FLUSH:
            disk.flush()
        elif cmd == P.CMD_TRIM:
            disk.discard(offset, length)
            if flags & CMD_FLAG_FUA:
                disk.flush()
        elif cmd == P.CMD_WRITE_ZEROES:
            disk.write_zeroes(offset, length, unmap=not flags & CMD_FLAG_NO_HOLE)
            if flags & CMD_FLAG_FUA:
                disk.flush()
        elif cmd == P.CMD_BLOCK_STATUS:
            extents = disk.block_status(offset, length)
            self._send_extents(handle, extents, bool(flags & CMD_FLAG_REQ_ONE))
            return
        else:  # only reached for requests the fast path should have taken
            raise Refused(P.NBD_EINVAL, f"{P.CMD_NAMES.get(cmd, cmd)}: invalid request")
        self._send_ok(handle)

    def _send_extents(self, handle: int, extents: list[Extent], one: bool) -> None:
        words: list[int] = []
        for extent in extents:
            status = 0 if extent.data else P.STATE_HOLE | P.STATE_ZERO
            if words and words[-1] == status:
                words[-2] += extent.length  # merge runs with the same status
            elif len(words) // 2 >= (1 if one else P.MAX_EXTENTS):
                break
            else:
                words += (extent.length, status)
        if not words:  # cannot happen for length > 0, but never send an empty list
            words = [1, 0]
        body = struct.pack(f">I{len(words)}I", _META_ID, *words)
        head = CHUNK.pack(
            STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, P.REPLY_TYPE_BLOCK_STATUS, handle, len(body)
        )
        self._send([head, body], len(head) + len(body))
