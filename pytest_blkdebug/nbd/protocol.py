"""The NBD wire protocol: constants, message layouts, errno mapping, parsers.

Numbers and layouts follow the NBD protocol document (NetworkBlockDevice/nbd,
``doc/proto.md``), fixed newstyle negotiation with the INFO, STRUCTURED_REPLY
and BLOCK_STATUS extensions; real clients (qemu-io, qemu-img, nbdinfo,
nbdcopy) are the final word and the tests run them. Kept apart from the code
that speaks it (``handshake``, ``connection``) so that the test client
(``tests/nbd_client.py``) and the fuzz tests share the very same numbers and
layouts as the server without importing any of the server.
"""

from __future__ import annotations

import errno
import socket
import struct

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


# -- parsing and refusing -----------------------------------------------------------


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
