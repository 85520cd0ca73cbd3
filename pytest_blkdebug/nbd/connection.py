"""One NBD client connection: the handshake's outcome, then transmission.

Every request goes through one table (``_commands``: command -> handler,
allowed flags, length bounds, range, refusal) and one check in the request
loop; a request that fails it goes to ``_refuse``, the one place that says
why and replies with the error. The handlers only run valid requests. This
is nbdkit's shape: the protocol layer validates, the backend only serves.

Threading model ("leader/follower"), chosen because it is both simple and
fast in CPython: the connection has one *leader* thread that reads a
request and runs it inline through the backend handle, then reads the next.
No thread hand-off, no queue, no per-request allocation beyond the data.
When a request is about to be held at a breakpoint, the handle calls
``_on_hold`` in the leader's thread before it blocks; the connection then
starts a new leader, so it keeps serving other requests while the held one
waits, and the held thread sends its own reply when it is resumed and then
ends. Replies can therefore leave out of order, which NBD allows (they
carry the request's handle).
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from . import protocol as P
from .backend import Extent, Handle
from .handshake import Negotiation
from .protocol import (
    CHUNK,
    CMD_FLAG_DF,
    CMD_FLAG_FUA,
    CMD_FLAG_NO_HOLE,
    CMD_FLAG_REQ_ONE,
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

if TYPE_CHECKING:
    from .server import NBDExport

__all__ = ["Connection"]

log = logging.getLogger("pytest_blkdebug.nbd")

_MSG_WAITALL = socket.MSG_WAITALL
META_ID = 1  # the id we give base:allocation
#: Write buffers up to this size are kept by the leader and reused.
_KEEP_BUFFER = 4 << 20
CLOSE_TIMEOUT = 5.0
_NO_BUFFER = memoryview(bytearray(0))
# Short names for the hot paths.
_FUA = CMD_FLAG_FUA
_SIMPLE, _STRUCT = SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC
_DONE, _DATA = REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA
_ANY_LENGTH = 0xFFFFFFFF
_ANYWHERE = 1 << 65  # past any offset + length a request header can hold


class Hangup(ProtocolError):
    """The connection must end (the client asked, or cannot be kept in step)."""


class Command(NamedTuple):
    """How one command is checked and run on this connection.

    A request is valid when it sets no flag outside ``flags``, ``refusal`` is
    None (e.g. a write to a read-only export), ``min_length <= length <=
    max_length`` and ``offset + length <= limit`` (the export's size; 0 for
    flush, whose offset and length must be 0).
    """

    name: str
    run: Callable[[int, int, int, int], None]  # (handle, flags, offset, length)
    flags: int
    refusal: Refused | None = None
    min_length: int = 0
    max_length: int = _ANY_LENGTH
    limit: int = _ANYWHERE
    too_long: int = P.NBD_EINVAL  # the error for length > max_length
    beyond: int = P.NBD_EINVAL  # the error for offset + length > limit
    payload: bool = False  # the request carries ``length`` bytes of data


def _now() -> float:
    return time.monotonic()


class Connection:
    """One client: the handshake, then the leader loop (see the module doc)."""

    def __init__(self, export: NBDExport, sock: socket.socket) -> None:
        self.export = export
        self.sock = sock
        self.backend = export.backend
        self.size = export.backend.size
        self.readonly = export.readonly
        self.structured = False
        self.meta = False  # base:allocation selected
        self.handle: Handle = export.backend.connect(self._on_hold)
        self._commands: dict[int, Command] = {}
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._followers = 0  # held requests whose threads have handed over
        self._reading = True
        self._closed = False
        self._leader: int | None = None  # the leader thread's ident
        self._leader_thread: threading.Thread | None = None
        self._wbuf = _NO_BUFFER  # the leader's kept write buffer
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
        """Server shutdown or eviction: wake the leader and any blocked send."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _run(self) -> None:
        export = self.export
        try:
            negotiation = Negotiation(
                self.sock,
                name=export.name,
                size=self.size,
                description=export.description,
                flags=export.transmission_flags,
                closing=lambda: export.closed,
                meta_id=META_ID,
                deadline=_now() + export.handshake_timeout,
                entering=lambda: export._negotiated(self),
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
        export._negotiated(self)  # (again, if it entered: harmless)
        if not entered:
            self._end_reading()
            return
        self.sock.settimeout(None)
        self._commands = self._command_table()
        self._lead()

    # -- leadership -----------------------------------------------------------

    def _lead(self) -> None:
        me = self._leader = threading.get_ident()
        try:
            self._loop(me)
        except (OSError, ProtocolError) as exc:
            log.debug("nbd: connection ended: %s", exc)
        except Exception:
            log.exception("nbd: connection failed")
        finally:
            if self._leader == me:
                self._leader = None
                self._end_reading()
            else:  # handed over during the last request, which is done now
                self._follower_done()

    def _on_hold(self, hold: object) -> None:
        """The handle's callback: the request running in this thread is about
        to be held. If this thread is the leader, a new one takes over."""
        if self._leader != threading.get_ident():
            return  # a follower's request (held again after a resume)
        self._leader = None
        self._wbuf = _NO_BUFFER  # the held write keeps its buffer
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
        locked = self._send_lock.acquire(timeout=CLOSE_TIMEOUT)
        try:
            self.sock.close()
        finally:
            if locked:
                self._send_lock.release()
        self.export._forget(self)

    # -- the request loop: one check, one dispatch ------------------------------

    def _loop(self, me: int) -> None:
        """Read a request, check it against the table, run or refuse it; until
        EOF, DISC or a hand-over (then the new leader reads on)."""
        recv_into = self.sock.recv_into
        header = bytearray(28)
        hview = memoryview(header)
        unpack = REQUEST.unpack_from
        commands = self._commands.get
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
            spec = commands(cmd)
            if (
                spec is not None
                and not flags & ~spec.flags
                and spec.refusal is None
                and spec.min_length <= length <= spec.max_length
                and offset + length <= spec.limit
            ):
                spec.run(handle, flags, offset, length)
            else:
                self._refuse(spec, cmd, flags, handle, offset, length)
            if self._leader != me:
                return  # this request was held and handed over

    def _refuse(
        self, spec: Command | None, cmd: int, flags: int, handle: int, offset: int, length: int
    ) -> None:
        """Reply to a request that failed the check, saying which part failed
        (in the table's order: command, flags, refusal, length, range)."""
        if spec is not None and spec.payload:
            if length > spec.max_length:  # cannot stay in step: reply and hang up
                self._send_error(
                    handle,
                    P.NBD_EINVAL,
                    f"{spec.name} of {length} bytes is over the {spec.max_length}-byte "
                    f"maximum; disconnecting",
                )
                raise Hangup(f"{spec.name} of {length} bytes")
            if length:  # consume the payload we refuse, so the stream stays in step
                P.discard(self.sock, length)
        if spec is None:
            name = P.CMD_NAMES.get(cmd) or f"command {cmd}"
            error, message = P.NBD_EINVAL, f"{name} is not supported"
        elif flags & ~spec.flags:
            error, message = P.NBD_EINVAL, f"{spec.name}: unsupported flags {flags:#x}"
        elif spec.refusal is not None:
            error, message = spec.refusal.code, spec.refusal.message
        elif length > spec.max_length:
            error = spec.too_long
            message = f"{spec.name} of {length} bytes is over the {spec.max_length}-byte maximum"
        elif length < spec.min_length:
            error, message = P.NBD_EINVAL, f"{spec.name}: length {length}"
        elif spec.limit == 0:
            error, message = P.NBD_EINVAL, f"{spec.name}: offset and length must be 0"
        else:
            error = spec.beyond
            message = (
                f"{spec.name} of {length} bytes at offset {offset} is beyond the "
                f"end of the {spec.limit}-byte export"
            )
        self._send_error(handle, error, message)

    def _command_table(self) -> dict[int, Command]:
        """What this connection serves, given what it negotiated."""
        size = self.size

        def refused(name: str) -> Refused | None:
            return (
                Refused(P.NBD_EPERM, f"{name}: the export is read-only") if self.readonly else None
            )

        no_meta = Refused(P.NBD_EINVAL, "block_status: no metadata context was negotiated")
        return {
            P.CMD_READ: Command(
                "read",
                self._read,
                _FUA | CMD_FLAG_DF if self.structured else _FUA,  # DF: structured only
                max_length=MAX_PAYLOAD,
                too_long=P.NBD_EOVERFLOW,
                limit=size,
            ),
            P.CMD_WRITE: Command(
                "write",
                self._write,
                _FUA,
                refused("write"),
                max_length=MAX_PAYLOAD,
                beyond=P.NBD_ENOSPC,
                payload=True,
                limit=size,
            ),
            P.CMD_DISC: Command("disc", self._disc, 0xFFFF),
            P.CMD_FLUSH: Command("flush", self._flush, _FUA, limit=0),
            P.CMD_TRIM: Command("trim", self._trim, _FUA, refused("trim"), limit=size),
            P.CMD_WRITE_ZEROES: Command(
                "write_zeroes",
                self._write_zeroes,
                _FUA | CMD_FLAG_NO_HOLE,
                refused("write_zeroes"),
                beyond=P.NBD_ENOSPC,
                limit=size,
            ),
            P.CMD_BLOCK_STATUS: Command(
                "block_status",
                self._block_status,
                _FUA | CMD_FLAG_REQ_ONE,
                None if self.meta else no_meta,
                min_length=1,
                limit=size,
            ),
        }

    def _recv_rest(self, view: memoryview, got: int) -> bool:
        """Fill ``view`` from byte ``got`` on; False if the peer closed first."""
        n = len(view)
        while got < n:
            k = self.sock.recv_into(view[got:], n - got, _MSG_WAITALL)
            if k == 0:
                return False
            got += k
        return True

    # -- the handlers (valid requests only) --------------------------------------

    def _read(self, handle: int, flags: int, offset: int, length: int) -> None:
        try:
            data = self.handle.read(offset, length)
        except Exception as exc:
            self._fail(handle, exc)
            return
        if not self.structured:
            self._send([SIMPLE_REPLY.pack(_SIMPLE, 0, handle), data], 16 + length)
        elif length:
            head = DATA_CHUNK.pack(_STRUCT, _DONE, _DATA, handle, length + 8, offset)
            self._send([head, data], 28 + length)
        else:
            self._send([CHUNK.pack(_STRUCT, _DONE, REPLY_TYPE_NONE, handle, 0)], 20)

    def _write(self, handle: int, flags: int, offset: int, length: int) -> None:
        wbuf = self._wbuf
        if length > len(wbuf):
            buf = memoryview(bytearray(length))
            if length <= _KEEP_BUFFER:
                self._wbuf = buf
            view = buf[:length]
        else:
            view = wbuf[:length]
        try:
            if length and not self._recv_rest(view, 0):
                raise Hangup("connection closed inside a write payload")
            self._run_then_ok(handle, lambda: self.handle.write(offset, view), flags)
        finally:
            view.release()

    def _disc(self, handle: int, flags: int, offset: int, length: int) -> None:
        raise Hangup("the client disconnected")

    def _flush(self, handle: int, flags: int, offset: int, length: int) -> None:
        self._run_then_ok(handle, self.handle.flush)

    def _trim(self, handle: int, flags: int, offset: int, length: int) -> None:
        self._run_then_ok(handle, lambda: self.handle.discard(offset, length), flags)

    def _write_zeroes(self, handle: int, flags: int, offset: int, length: int) -> None:
        unmap = not flags & CMD_FLAG_NO_HOLE
        self._run_then_ok(
            handle, lambda: self.handle.write_zeroes(offset, length, unmap=unmap), flags
        )

    def _block_status(self, handle: int, flags: int, offset: int, length: int) -> None:
        try:
            extents = self.handle.block_status(offset, length)
        except Exception as exc:
            self._fail(handle, exc)
        else:
            self._send_extents(handle, extents, bool(flags & CMD_FLAG_REQ_ONE))

    def _run_then_ok(self, handle: int, run: Callable[[], None], flags: int = 0) -> None:
        """Run a request with no data to return (a write's payload is in
        already); FUA flushes after it."""
        try:
            run()
            if flags & _FUA:
                self.handle.flush()
        except Exception as exc:
            self._fail(handle, exc)
        else:
            self._send([SIMPLE_REPLY.pack(_SIMPLE, 0, handle)], 16)

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
        """Reply to a request the backend refused (injected error or otherwise)."""
        if isinstance(exc, OSError):
            error = P.nbd_error(exc.errno)
        elif isinstance(exc, ValueError) and self.backend.closed:
            error = P.NBD_ESHUTDOWN
        else:
            log.error("nbd: request failed unexpectedly", exc_info=exc)
            error = P.NBD_EIO
        self._send_error(handle, error, str(exc))

    def _send_extents(self, handle: int, extents: Sequence[Extent], one: bool) -> None:
        words: list[int] = []
        for _, length, data in extents:
            status = 0 if data else P.STATE_HOLE | P.STATE_ZERO
            if words and words[-1] == status:
                words[-2] += length  # merge runs with the same status
            elif len(words) // 2 >= (1 if one else P.MAX_EXTENTS):
                break
            else:
                words += (length, status)
        if not words:  # cannot happen for length > 0, but never send an empty list
            words = [1, 0]
        body = struct.pack(f">I{len(words)}I", META_ID, *words)
        head = CHUNK.pack(
            STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, P.REPLY_TYPE_BLOCK_STATUS, handle, len(body)
        )
        self._send([head, body], len(head) + len(body))
