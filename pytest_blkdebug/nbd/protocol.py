"""The NBD wire protocol: constants, message layouts, errno mapping, a small client.

Shared by the server (``nbd.py``), the tests and the benchmark. Numbers and
layouts follow the NBD protocol document (NetworkBlockDevice/nbd,
``doc/proto.md``), fixed newstyle negotiation with the INFO, STRUCTURED_REPLY
and BLOCK_STATUS extensions; real clients (qemu-io, qemu-img, nbdinfo,
nbdcopy) are the final word and the tests run them.

``NBDClient`` is deliberately minimal and blocking: one request at a time
unless you use ``send_request``/``recv_reply`` yourself. It exists so tests
can speak the protocol byte by byte (and break it on purpose), which no real
client lets you do.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

# -- handshake -----------------------------------------------------------------

NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
OPT_REPLY_MAGIC = 0x3E889045565A9

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
_REP_ERR = 1 << 31
REP_ERR_UNSUP = _REP_ERR + 1
REP_ERR_POLICY = _REP_ERR + 2
REP_ERR_INVALID = _REP_ERR + 3
REP_ERR_PLATFORM = _REP_ERR + 4
REP_ERR_TLS_REQD = _REP_ERR + 5
REP_ERR_UNKNOWN = _REP_ERR + 6
REP_ERR_SHUTDOWN = _REP_ERR + 7
REP_ERR_BLOCK_SIZE_REQD = _REP_ERR + 8
REP_ERR_TOO_BIG = _REP_ERR + 9

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# -- transmission flags (per export) ---------------------------------------------

TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_ROTATIONAL = 1 << 4
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8
TF_SEND_RESIZE = 1 << 9
TF_SEND_CACHE = 1 << 10
TF_SEND_FAST_ZERO = 1 << 11

# -- requests and replies --------------------------------------------------------

REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7
CMD_RESIZE = 8
CMD_NAMES = {
    CMD_READ: "read",
    CMD_WRITE: "write",
    CMD_DISC: "disc",
    CMD_FLUSH: "flush",
    CMD_TRIM: "trim",
    CMD_CACHE: "cache",
    CMD_WRITE_ZEROES: "write_zeroes",
    CMD_BLOCK_STATUS: "block_status",
    CMD_RESIZE: "resize",
}

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1
REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2

STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1
BASE_ALLOCATION = "base:allocation"

# -- layouts (network byte order) ------------------------------------------------

SERVER_GREETING = struct.Struct(">QQH")  # NBDMAGIC, IHAVEOPT, handshake flags
CLIENT_FLAGS = struct.Struct(">I")
OPTION = struct.Struct(">QII")  # IHAVEOPT, option, length
OPTION_REPLY = struct.Struct(">QIII")  # magic, option, reply type, length
EXPORT_NAME_REPLY = struct.Struct(">QH")  # size, transmission flags (+124 zeroes)
INFO_EXPORT_DATA = struct.Struct(">HQH")  # INFO_EXPORT, size, flags
INFO_BLOCK_SIZE_DATA = struct.Struct(">HIII")  # INFO_BLOCK_SIZE, min, preferred, max
REQUEST = struct.Struct(">IHHQQI")  # magic, flags, type, handle, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, handle
CHUNK = struct.Struct(">IHHQI")  # magic, flags, type, handle, payload length
DATA_CHUNK = struct.Struct(">IHHQIQ")  # CHUNK + the data's offset
ERROR_PAYLOAD = struct.Struct(">IH")  # error, message length

# -- limits ----------------------------------------------------------------------

#: Largest read or write payload the server accepts (qemu-nbd's limit too).
#: Advertised as the maximum block size; bigger requests get an error.
MAX_PAYLOAD = 32 << 20
#: Largest option payload kept in memory; a bigger one is skipped and refused
#: with NBD_REP_ERR_TOO_BIG (up to MAX_OPTION_DISCARD) or the connection closed.
MAX_OPTION = 64 << 10
MAX_OPTION_DISCARD = 16 << 20
#: Options one connection may send before it must pick an export.
MAX_OPTIONS = 256
MAX_STRING = 4096  # names, queries, messages (the protocol's limit)
#: Descriptors in one block-status reply (the protocol lets a server return fewer).
MAX_EXTENTS = 4096

# -- errno mapping ---------------------------------------------------------------

#: The NBD protocol's error values. They equal Linux errno numbers, but the
#: protocol fixes them, so they are spelled out rather than taken from ``errno``.
NBD_EPERM, NBD_EIO, NBD_ENOMEM, NBD_EINVAL = 1, 5, 12, 22
NBD_ENOSPC, NBD_EOVERFLOW, NBD_ENOTSUP, NBD_ESHUTDOWN = 28, 75, 95, 108

_ERRNO_TO_NBD = {
    errno.EPERM: NBD_EPERM,
    errno.EROFS: NBD_EPERM,
    errno.EIO: NBD_EIO,
    errno.ENOMEM: NBD_ENOMEM,
    errno.EINVAL: NBD_EINVAL,
    errno.ENOSPC: NBD_ENOSPC,
    errno.EDQUOT: NBD_ENOSPC,
    errno.EFBIG: NBD_ENOSPC,
    errno.EOVERFLOW: NBD_EOVERFLOW,
    errno.ENOTSUP: NBD_ENOTSUP,
    errno.EOPNOTSUPP: NBD_ENOTSUP,
    errno.ESHUTDOWN: NBD_ESHUTDOWN,
}


def nbd_error(err: int | None) -> int:
    """The NBD error value for a host errno (anything the protocol lacks is EIO).

    EROFS becomes EPERM and EDQUOT/EFBIG become ENOSPC, as the protocol
    recommends; everything else without an NBD value (EACCES, ENOENT, a
    breakpoint timeout, ...) becomes EIO, the one error every client treats
    as "the device failed".
    """
    if not err:
        return NBD_EIO
    return _ERRNO_TO_NBD.get(err, NBD_EIO)


class ProtocolError(Exception):
    """The peer broke the protocol (bad magic, impossible length, ...)."""


class NBDError(OSError):
    """An NBD request or option failed; ``errno`` is the NBD error value."""


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes; ``ProtocolError`` on a short read (peer closed)."""
    if n == 0:
        return b""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ProtocolError(f"connection closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


# -- server-side negotiation -------------------------------------------------------


class Refused(Exception):
    """An option or request the server refuses, with the code to send back (an
    option reply type during negotiation, an NBD error value in transmission)
    and a message for the client's user."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def discard(sock: socket.socket, n: int) -> None:
    """Read and drop ``n`` bytes in bounded chunks (memory stays at 1 MiB)."""
    scratch = memoryview(bytearray(min(n, 1 << 20)))
    while n:
        k = sock.recv_into(scratch, min(n, len(scratch)))
        if k == 0:
            raise ProtocolError("connection closed inside a payload")
        n -= k


def decode_string(raw: bytes, what: str, *, fatal: bool = False) -> str:
    """A protocol string: UTF-8, no NUL, at most MAX_STRING bytes.

    A bad one is ``Refused`` (NBD_REP_ERR_INVALID), or a ``ProtocolError``
    with ``fatal`` (where the protocol has no way to refuse but closing).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text or len(raw) > MAX_STRING:
        if fatal:
            raise ProtocolError(f"invalid {what}")
        raise Refused(
            REP_ERR_INVALID, f"invalid {what} (UTF-8, no NUL, at most {MAX_STRING} bytes)"
        )
    return text


def parse_meta_request(data: bytes) -> tuple[str, list[str]]:
    """Export name and queries of NBD_OPT_{LIST,SET}_META_CONTEXT."""

    def bad(why: str) -> Refused:
        return Refused(REP_ERR_INVALID, f"meta context option: {why}")

    if len(data) < 8:
        raise bad("data too short")
    (nlen,) = struct.unpack_from(">I", data)
    if nlen > len(data) - 8:
        raise bad("export name length past the option's end")
    name = decode_string(data[4 : 4 + nlen], "export name")
    pos = 4 + nlen
    (count,) = struct.unpack_from(">I", data, pos)
    pos += 4
    if count > (len(data) - pos) // 4:
        raise bad("query count does not match length")
    queries = []
    for _ in range(count):
        (qlen,) = struct.unpack_from(">I", data, pos)
        pos += 4
        if qlen > len(data) - pos:
            raise bad("query length past the option's end")
        queries.append(decode_string(data[pos : pos + qlen], "query"))
        pos += qlen
    if pos != len(data):
        raise bad("trailing bytes")
    return name, queries


class Negotiation:
    """The server side of fixed newstyle negotiation, for one export.

    ``flags(structured)`` gives the transmission flags (they depend on whether
    structured replies were negotiated); ``closing()`` says the server is
    shutting down. After ``run()`` returned True the client is in
    transmission and ``structured``/``meta`` say what it negotiated.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        name: str,
        size: int,
        description: str | None,
        flags: Callable[[bool], int],
        closing: Callable[[], bool],
        meta_id: int = 1,
    ) -> None:
        self.sock = sock
        self.name = name
        self.size = size
        self.description = description
        self.flags = flags
        self.closing = closing
        self.meta_id = meta_id
        self.structured = False
        self.meta = False  # base:allocation selected
        self.no_zeroes = False

    def run(self) -> bool:
        """Negotiate; True once the client entered transmission, False if it
        left (ABORT, unknown export with EXPORT_NAME). ``ProtocolError`` or
        ``OSError`` when it broke the protocol or the connection."""
        sock = self.sock
        sock.sendall(SERVER_GREETING.pack(NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (cflags,) = CLIENT_FLAGS.unpack(recv_exact(sock, 4))
        if cflags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
            raise ProtocolError(f"unknown client flags {cflags:#x}")
        self.no_zeroes = bool(cflags & FLAG_C_NO_ZEROES)
        for _ in range(MAX_OPTIONS):
            magic, option, length = OPTION.unpack(recv_exact(sock, OPTION.size))
            if magic != IHAVEOPT:
                raise ProtocolError(f"bad option magic {magic:#x}")
            if length > MAX_OPTION:
                if option == OPT_EXPORT_NAME or length > MAX_OPTION_DISCARD:
                    raise ProtocolError(f"option {option} of {length} bytes is too big")
                discard(sock, length)
                self.reply(option, REP_ERR_TOO_BIG, f"option data over {MAX_OPTION} bytes".encode())
                continue
            data = recv_exact(sock, length)
            if self.closing() and option != OPT_ABORT:
                self.reply(option, REP_ERR_SHUTDOWN, b"server is shutting down")
                continue
            try:
                result = self.option(option, data)
            except Refused as exc:
                self.reply(option, exc.code, exc.message.encode("utf-8", "replace"))
                continue
            if result is not None:
                return result
        raise ProtocolError(f"more than {MAX_OPTIONS} options without choosing an export")

    def reply(self, option: int, rtype: int, data: bytes = b"") -> None:
        self.sock.sendall(OPTION_REPLY.pack(OPT_REPLY_MAGIC, option, rtype, len(data)) + data)

    def option(self, option: int, data: bytes) -> bool | None:
        """Handle one option; True: transmission starts, False: end, None: go on."""
        if option == OPT_EXPORT_NAME:
            if not self.known(decode_string(data, "export name", fatal=True)):
                return False  # cannot refuse with a message: the protocol says close
            reply = EXPORT_NAME_REPLY.pack(self.size, self.flags(self.structured))
            self.sock.sendall(reply if self.no_zeroes else reply + bytes(124))
            return True
        if option == OPT_ABORT:
            try:
                self.reply(option, REP_ACK)
            except OSError:
                pass
            return False
        if option == OPT_LIST:
            if data:
                raise Refused(REP_ERR_INVALID, "NBD_OPT_LIST takes no data")
            name = self.name.encode()
            self.reply(option, REP_SERVER, struct.pack(">I", len(name)) + name)
            self.reply(option, REP_ACK)
            return None
        if option == OPT_STRUCTURED_REPLY:
            if data:
                raise Refused(REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data")
            self.structured = True
            self.reply(option, REP_ACK)
            return None
        if option in (OPT_INFO, OPT_GO):
            self.info(option, data)
            return True if option == OPT_GO else None
        if option in (OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT):
            self.meta_context(option, data)
            return None
        raise Refused(REP_ERR_UNSUP, f"option {option} is not supported")

    def known(self, name: str) -> bool:
        """The export's own name, or "" (the default export) for it too."""
        return name in (self.name, "")

    def info(self, option: int, data: bytes) -> None:
        if len(data) < 6:
            raise Refused(REP_ERR_INVALID, "NBD_OPT_INFO/GO data too short")
        (nlen,) = struct.unpack_from(">I", data)
        if nlen > len(data) - 6:
            raise Refused(REP_ERR_INVALID, "export name length past the option's end")
        name = decode_string(data[4 : 4 + nlen], "export name")
        (count,) = struct.unpack_from(">H", data, 4 + nlen)
        if 6 + nlen + 2 * count != len(data):
            raise Refused(REP_ERR_INVALID, "information request count does not match length")
        if not self.known(name):
            raise Refused(REP_ERR_UNKNOWN, f"no export named {name!r}")
        wanted = struct.unpack_from(f">{count}H", data, 6 + nlen)
        flags = self.flags(self.structured)
        self.reply(option, REP_INFO, INFO_EXPORT_DATA.pack(INFO_EXPORT, self.size, flags))
        for kind in dict.fromkeys(wanted):
            if kind == INFO_NAME:
                self.reply(option, REP_INFO, struct.pack(">H", kind) + self.name.encode())
            elif kind == INFO_DESCRIPTION and self.description:
                text = self.description.encode()[:MAX_STRING]
                self.reply(option, REP_INFO, struct.pack(">H", kind) + text)
            elif kind == INFO_BLOCK_SIZE:
                block = INFO_BLOCK_SIZE_DATA.pack(kind, 1, 4096, MAX_PAYLOAD)
                self.reply(option, REP_INFO, block)
        self.reply(option, REP_ACK)

    def meta_context(self, option: int, data: bytes) -> None:
        if not self.structured:
            raise Refused(REP_ERR_INVALID, "negotiate structured replies first")
        name, queries = parse_meta_request(data)
        if not self.known(name):
            raise Refused(REP_ERR_UNKNOWN, f"no export named {name!r}")
        base = BASE_ALLOCATION.encode()
        if option == OPT_LIST_META_CONTEXT:
            if not queries or any(q in ("base:", BASE_ALLOCATION) for q in queries):
                self.reply(option, REP_META_CONTEXT, struct.pack(">I", 0) + base)
        else:
            self.meta = BASE_ALLOCATION in queries
            if self.meta:
                self.reply(option, REP_META_CONTEXT, struct.pack(">I", self.meta_id) + base)
        self.reply(option, REP_ACK)


# -- a small client --------------------------------------------------------------


@dataclass
class Reply:
    """A transmission-phase reply, simple or structured (chunks gathered).

    ``error`` is the NBD error (0 = success), ``message`` the server's text,
    ``data`` what a read returned, ``extents`` (length, flags) pairs for block
    status.
    """

    handle: int
    error: int = 0
    message: str = ""
    data: bytes = b""
    extents: list[tuple[int, int]] | None = None


class NBDClient:
    """A blocking NBD client for tests and scripts (not built for speed).

    ``address`` is a Unix socket path or a ``(host, port)`` pair. The
    handshake negotiates structured replies and ``base:allocation`` unless
    told not to, then enters transmission with NBD_OPT_GO.
    """

    def __init__(
        self,
        address: str | tuple[str, int],
        *,
        name: str = "",
        structured: bool = True,
        meta: bool = True,
        timeout: float = 10.0,
        connect: bool = True,
    ) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.name = name
        self.structured = False
        self.meta_id: int | None = None
        self.size = 0
        self.flags = 0
        self.block_size: tuple[int, int, int] | None = None
        self._handle = 0
        if connect:
            self.handshake(structured=structured, meta=meta)

    # -- handshake -------------------------------------------------------------

    def greeting(self, client_flags: int = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) -> int:
        magic, opt, flags = SERVER_GREETING.unpack(recv_exact(self.sock, SERVER_GREETING.size))
        if magic != NBDMAGIC or opt != IHAVEOPT:
            raise ProtocolError(f"bad greeting {magic:#x} {opt:#x}")
        self.sock.sendall(CLIENT_FLAGS.pack(client_flags))
        return flags

    def option(self, option: int, data: bytes = b"") -> list[tuple[int, bytes]]:
        """Send an option; return every (reply type, data) up to the final one."""
        self.sock.sendall(OPTION.pack(IHAVEOPT, option, len(data)) + data)
        replies = []
        while True:
            magic, opt, rtype, length = OPTION_REPLY.unpack(
                recv_exact(self.sock, OPTION_REPLY.size)
            )
            if magic != OPT_REPLY_MAGIC or opt != option:
                raise ProtocolError(f"bad option reply {magic:#x} for option {opt}")
            replies.append((rtype, recv_exact(self.sock, length)))
            if rtype not in (REP_SERVER, REP_INFO, REP_META_CONTEXT):
                return replies

    def handshake(self, *, structured: bool = True, meta: bool = True) -> None:
        self.greeting()
        if structured:
            ((rtype, _),) = self.option(OPT_STRUCTURED_REPLY)
            self.structured = rtype == REP_ACK
        if structured and meta:
            for rtype, data in self.option(
                OPT_SET_META_CONTEXT, meta_query(self.name, [BASE_ALLOCATION])
            ):
                if rtype == REP_META_CONTEXT:
                    self.meta_id = struct.unpack_from(">I", data)[0]
        self.go()

    def go(self) -> None:
        name = self.name.encode()
        data = struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, INFO_BLOCK_SIZE)
        for rtype, payload in self.option(OPT_GO, data):
            if rtype == REP_INFO:
                (kind,) = struct.unpack_from(">H", payload)
                if kind == INFO_EXPORT:
                    _, self.size, self.flags = INFO_EXPORT_DATA.unpack(payload)
                elif kind == INFO_BLOCK_SIZE:
                    self.block_size = INFO_BLOCK_SIZE_DATA.unpack(payload)[1:]
            elif rtype != REP_ACK:
                raise NBDError(errno.EIO, f"NBD_OPT_GO refused: reply {rtype:#x} {payload!r}")

    # -- transmission ------------------------------------------------------------

    def send_request(
        self,
        cmd: int,
        offset: int = 0,
        length: int = 0,
        *,
        flags: int = 0,
        payload: bytes = b"",
        handle: int | None = None,
    ) -> int:
        if handle is None:
            self._handle += 1
            handle = self._handle
        self.sock.sendall(REQUEST.pack(REQUEST_MAGIC, flags, cmd, handle, offset, length) + payload)
        return handle

    def recv_reply(self, read_length: int = 0) -> Reply:
        """Read one whole reply (all chunks of a structured one).

        A simple reply to a read carries ``read_length`` bytes on success,
        which only the caller knows.
        """
        (magic,) = struct.unpack(">I", recv_exact(self.sock, 4))
        if magic == SIMPLE_REPLY_MAGIC:
            err, handle = struct.unpack(">IQ", recv_exact(self.sock, 12))
            data = recv_exact(self.sock, read_length) if not err and read_length else b""
            return Reply(handle, err, data=data)
        if magic != STRUCTURED_REPLY_MAGIC:
            raise ProtocolError(f"bad reply magic {magic:#x}")
        reply: Reply | None = None
        parts: list[tuple[int, bytes]] = []
        while True:
            if reply is not None:
                (magic,) = struct.unpack(">I", recv_exact(self.sock, 4))
                if magic != STRUCTURED_REPLY_MAGIC:
                    raise ProtocolError(f"bad chunk magic {magic:#x}")
            flags, rtype, handle, length = struct.unpack(">HHQI", recv_exact(self.sock, 16))
            payload = recv_exact(self.sock, length)
            if reply is None:
                reply = Reply(handle)
            if rtype == REPLY_TYPE_OFFSET_DATA:
                parts.append((struct.unpack_from(">Q", payload)[0], payload[8:]))
            elif rtype == REPLY_TYPE_OFFSET_HOLE:
                off, n = struct.unpack(">QI", payload)
                parts.append((off, bytes(n)))
            elif rtype == REPLY_TYPE_BLOCK_STATUS:
                words = struct.unpack(f">I{(length - 4) // 4}I", payload)
                reply.extents = list(zip(words[1::2], words[2::2], strict=True))
            elif rtype & (1 << 15):
                err, mlen = ERROR_PAYLOAD.unpack_from(payload)
                reply.error = err
                reply.message = payload[6 : 6 + mlen].decode("utf-8", "replace")
            if flags & REPLY_FLAG_DONE:
                break
        parts.sort()
        reply.data = b"".join(p for _, p in parts)
        return reply

    def request(
        self, cmd: int, offset: int = 0, length: int = 0, *, flags: int = 0, payload: bytes = b""
    ) -> Reply:
        self.send_request(cmd, offset, length, flags=flags, payload=payload)
        reply = self.recv_reply(length if cmd == CMD_READ else 0)
        if reply.error:
            raise NBDError(reply.error, f"{os.strerror(reply.error)}: {reply.message}")
        return reply

    def read(self, offset: int, length: int, *, flags: int = 0) -> bytes:
        return self.request(CMD_READ, offset, length, flags=flags).data

    def write(self, offset: int, data: bytes, *, flags: int = 0) -> None:
        self.request(CMD_WRITE, offset, len(data), flags=flags, payload=data)

    def flush(self) -> None:
        self.request(CMD_FLUSH)

    def trim(self, offset: int, length: int, *, flags: int = 0) -> None:
        self.request(CMD_TRIM, offset, length, flags=flags)

    def write_zeroes(self, offset: int, length: int, *, flags: int = 0) -> None:
        self.request(CMD_WRITE_ZEROES, offset, length, flags=flags)

    def block_status(self, offset: int, length: int, *, flags: int = 0) -> list[tuple[int, int]]:
        return self.request(CMD_BLOCK_STATUS, offset, length, flags=flags).extents or []

    def close(self) -> None:
        """Send NBD_CMD_DISC (if still possible) and close the socket."""
        try:
            self.send_request(CMD_DISC)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> NBDClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def meta_query(name: str, queries: list[str]) -> bytes:
    """The payload of NBD_OPT_{LIST,SET}_META_CONTEXT."""
    raw = name.encode()
    out = struct.pack(">I", len(raw)) + raw + struct.pack(">I", len(queries))
    for q in queries:
        qb = q.encode()
        out += struct.pack(">I", len(qb)) + qb
    return out
