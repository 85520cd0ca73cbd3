"""A small blocking NBD client for the tests and scripts (not built for speed).

It lives with the tests, not in the package: nothing the product ships needs
a client, and a test client must be free to speak the protocol byte by byte
and to break it on purpose, which no real client (qemu-io, nbdinfo, libnbd)
lets you do. One request at a time unless you use ``send_request`` /
``recv_reply`` yourself.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

from pytest_blkdebug.nbd.protocol import (
    BASE_ALLOCATION,
    CLIENT_FLAGS,
    CMD_BLOCK_STATUS,
    CMD_DISC,
    CMD_FLUSH,
    CMD_READ,
    CMD_TRIM,
    CMD_WRITE,
    CMD_WRITE_ZEROES,
    ERROR_PAYLOAD,
    FLAG_C_FIXED_NEWSTYLE,
    FLAG_C_NO_ZEROES,
    IHAVEOPT,
    INFO_BLOCK_SIZE,
    INFO_BLOCK_SIZE_DATA,
    INFO_EXPORT,
    INFO_EXPORT_DATA,
    NBDMAGIC,
    OPT_GO,
    OPT_REPLY_MAGIC,
    OPT_SET_META_CONTEXT,
    OPT_STRUCTURED_REPLY,
    OPTION,
    OPTION_REPLY,
    REP_ACK,
    REP_INFO,
    REP_META_CONTEXT,
    REP_SERVER,
    REPLY_FLAG_DONE,
    REPLY_TYPE_BLOCK_STATUS,
    REPLY_TYPE_OFFSET_DATA,
    REPLY_TYPE_OFFSET_HOLE,
    REQUEST,
    REQUEST_MAGIC,
    SERVER_GREETING,
    SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC,
    ProtocolError,
    recv_exact,
)

__all__ = ["NBDClient", "NBDError", "Reply", "meta_query"]


class NBDError(OSError):
    """An NBD request or option failed; ``errno`` is the NBD error value."""


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
        return int(flags)

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
