"""The server side of the NBD handshake (fixed newstyle negotiation).

Apart from transmission (``connection``) because the two phases share
nothing but the socket: negotiation is a short, strictly sequential
exchange of options under one deadline, where a hostile or slow client is
the main risk; transmission is the long-lived, throughput-bound request
loop. ``docs/nbd.md`` lists the options and their answers.

Why a deadline and not a timeout per receive: a client that sends one byte
just before each receive times out would keep its connection slot forever
(issue 12: 64 such clients kept every normal client out). Every receive and
send here is given only the time left until ``deadline``, so a negotiation
ends ``handshake_timeout`` seconds after it began, whatever the client does.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

from .protocol import (
    BASE_ALLOCATION,
    CLIENT_FLAGS,
    EXPORT_NAME_REPLY,
    FLAG_C_FIXED_NEWSTYLE,
    FLAG_C_NO_ZEROES,
    FLAG_FIXED_NEWSTYLE,
    FLAG_NO_ZEROES,
    IHAVEOPT,
    INFO_BLOCK_SIZE,
    INFO_BLOCK_SIZE_DATA,
    INFO_DESCRIPTION,
    INFO_EXPORT,
    INFO_EXPORT_DATA,
    INFO_NAME,
    MAX_OPTION,
    MAX_OPTION_DISCARD,
    MAX_OPTIONS,
    MAX_PAYLOAD,
    MAX_STRING,
    NBDMAGIC,
    OPT_ABORT,
    OPT_EXPORT_NAME,
    OPT_GO,
    OPT_INFO,
    OPT_LIST,
    OPT_LIST_META_CONTEXT,
    OPT_REPLY_MAGIC,
    OPT_SET_META_CONTEXT,
    OPT_STRUCTURED_REPLY,
    OPTION,
    OPTION_REPLY,
    REP_ACK,
    REP_ERR_INVALID,
    REP_ERR_SHUTDOWN,
    REP_ERR_TOO_BIG,
    REP_ERR_UNKNOWN,
    REP_ERR_UNSUP,
    REP_INFO,
    REP_META_CONTEXT,
    REP_SERVER,
    SERVER_GREETING,
    ProtocolError,
    Refused,
    decode_string,
    parse_meta_request,
)

__all__ = ["Negotiation"]


class Negotiation:
    """The server side of fixed newstyle negotiation, for one export.

    ``flags(structured)`` gives the transmission flags (they depend on whether
    structured replies were negotiated); ``closing()`` says the server is
    shutting down; ``deadline`` (a ``time.monotonic()`` value) is when the
    whole negotiation must be over; ``entering()`` is called just before the
    reply that starts transmission (so the server stops counting the client
    as negotiating before the client can know it is in). After ``run()`` returned True the client
    is in transmission and ``structured``/``meta`` say what it negotiated.
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
        deadline: float,
        entering: Callable[[], None] = lambda: None,
    ) -> None:
        self.sock = sock
        self.deadline = deadline
        self.entering = entering
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
        self.send(SERVER_GREETING.pack(NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (cflags,) = CLIENT_FLAGS.unpack(self.recv(4))
        if cflags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
            raise ProtocolError(f"unknown client flags {cflags:#x}")
        self.no_zeroes = bool(cflags & FLAG_C_NO_ZEROES)
        for _ in range(MAX_OPTIONS):
            magic, option, length = OPTION.unpack(self.recv(OPTION.size))
            if magic != IHAVEOPT:
                raise ProtocolError(f"bad option magic {magic:#x}")
            if length > MAX_OPTION:
                if option == OPT_EXPORT_NAME or length > MAX_OPTION_DISCARD:
                    raise ProtocolError(f"option {option} of {length} bytes is too big")
                self.discard(length)
                self.reply(option, REP_ERR_TOO_BIG, f"option data over {MAX_OPTION} bytes".encode())
                continue
            data = self.recv(length)
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

    # -- the deadline: every receive and send gets only the time that is left

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ProtocolError("the handshake took too long (handshake_timeout)")
        return left

    def recv(self, n: int) -> bytes:
        """Exactly ``n`` bytes, before the deadline (a trickle does not extend it)."""
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        sock = self.sock
        while got < n:
            sock.settimeout(self._left())
            k = sock.recv_into(view[got:], n - got)
            if k == 0:
                raise ProtocolError(f"connection closed after {got} of {n} bytes")
            got += k
        return bytes(buf)

    def discard(self, n: int) -> None:
        """Read and drop ``n`` bytes in bounded chunks, before the deadline."""
        scratch = memoryview(bytearray(min(n, 1 << 20)))
        sock = self.sock
        while n:
            sock.settimeout(self._left())
            k = sock.recv_into(scratch, min(n, len(scratch)))
            if k == 0:
                raise ProtocolError("connection closed inside an option")
            n -= k

    def send(self, data: bytes) -> None:
        """Send it all before the deadline (a client that never reads stalls us)."""
        self.sock.settimeout(self._left())
        self.sock.sendall(data)

    def reply(self, option: int, rtype: int, data: bytes = b"") -> None:
        self.send(OPTION_REPLY.pack(OPT_REPLY_MAGIC, option, rtype, len(data)) + data)

    def option(self, option: int, data: bytes) -> bool | None:
        """Handle one option; True: transmission starts, False: end, None: go on."""
        if option == OPT_EXPORT_NAME:
            if not self.known(decode_string(data, "export name", fatal=True)):
                return False  # cannot refuse with a message: the protocol says close
            reply = EXPORT_NAME_REPLY.pack(self.size, self.flags(self.structured))
            self.entering()
            self.send(reply if self.no_zeroes else reply + bytes(124))
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
        if option == OPT_GO:
            self.entering()
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
