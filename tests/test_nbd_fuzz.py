"""Malformed input on raw sockets against the NBD export.

Hypothesis drives two streams:

* the handshake: valid negotiations (flags, options, GO/EXPORT_NAME) with
  bytes flipped, cut, inserted and truncated;
* the command stream after a valid handshake: requests with arbitrary
  commands, flags, offsets and lengths (in range, at the edge, beyond it,
  over the payload limit), under injected errors, optionally ending in a
  bad magic, a truncated header, a truncated payload or a disconnect.

The invariants: the server never crashes (a well-formed client, and qemu-io,
still work afterwards); every reply is well formed and answers the request
it names; a read returns exactly what the model of the image holds; and the
image changes only through requests the server acknowledged, which the test
replays on its model, so a rejected request that touched the image shows up
as a difference.

Part of the hostile suite: tests/test_hostile.py indexes every attack.
"""

from __future__ import annotations

import errno
import shutil
import socket
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from nbd_client import NBDClient, meta_query

import pytest_blkdebug as bd
from pytest_blkdebug.nbd import protocol as P
from pytest_blkdebug.nbd.protocol import ProtocolError

SIZE = 1 << 20
SETTINGS = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


class World:
    """The export under fuzz plus a model of what its image must contain."""

    def __init__(self, tmp: Path) -> None:
        rules = [
            # armed by every write: fails writes (and, the active list being
            # what it is, any other request) touching sector 64 or 65
            bd.InjectError("write_aio", errno=errno.ENOSPC, sector=64, name="full"),
            bd.InjectError("write_aio", errno=errno.EIO, sector=65, name="bad"),
            bd.InjectError("pwritev_zero", errno=errno.EIO, sector=300, once=True, name="z"),
        ]
        seed = bytes(range(256)) * (SIZE // 256)
        (tmp / "fuzz.img").write_bytes(seed)
        self.disk = bd.Disk.open(tmp / "fuzz.img", rules=rules)
        self.export = self.disk.serve_nbd()
        self.model = bytearray(seed)

    def image(self) -> bytes:
        return Path(self.disk.path).read_bytes()

    def check_alive(self) -> None:
        with NBDClient(self.export.socket) as c:
            assert c.read(0, 4096) == bytes(self.model[:4096])
        assert self.image() == bytes(self.model)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("nbd-fuzz"))
    yield w
    w.export.close()
    w.disk.close()


def _drain(sock: socket.socket) -> bytes:
    """Read until the server closes (or goes quiet for the timeout)."""
    out = bytearray()
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return bytes(out)


# -- handshake -----------------------------------------------------------------------


def _opt(option: int, data: bytes = b"") -> bytes:
    return P.OPTION.pack(P.IHAVEOPT, option, len(data)) + data


_HANDSHAKE_PARTS = [
    _opt(P.OPT_STRUCTURED_REPLY),
    _opt(P.OPT_LIST),
    _opt(P.OPT_SET_META_CONTEXT, meta_query("", [P.BASE_ALLOCATION])),
    _opt(P.OPT_LIST_META_CONTEXT, meta_query("", ["base:"])),
    _opt(P.OPT_INFO, struct.pack(">IHH", 0, 1, P.INFO_BLOCK_SIZE)),
    _opt(P.OPT_STARTTLS),
    _opt(P.OPT_ABORT),
]
_ENDINGS = [_opt(P.OPT_GO, struct.pack(">IH", 0, 0)), _opt(P.OPT_EXPORT_NAME), b""]


@st.composite
def handshakes(draw: st.DrawFn) -> bytes:
    flags = draw(st.sampled_from([3, 1, 0, 2, 4, 0xFFFFFFFF]))
    parts = draw(st.lists(st.sampled_from(_HANDSHAKE_PARTS), max_size=6))
    stream = bytearray(struct.pack(">I", flags) + b"".join(parts) + draw(st.sampled_from(_ENDINGS)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "truncate", "length"]))
        pos = draw(st.integers(0, max(0, len(stream) - 1)))
        if kind == "flip" and stream:
            stream[pos] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del stream[pos : pos + draw(st.integers(1, 16))]
        elif kind == "insert":
            stream[pos:pos] = draw(st.binary(min_size=1, max_size=24))
        elif kind == "truncate":
            del stream[pos:]
        elif kind == "length" and len(stream) >= pos + 4:
            stream[pos : pos + 4] = struct.pack(
                ">I",
                draw(
                    st.sampled_from(
                        [0, 1, 7, 4097, P.MAX_OPTION + 1, P.MAX_OPTION_DISCARD + 1, 0xFFFFFFFF]
                    )
                ),
            )
    return bytes(stream)


@SETTINGS
@given(stream=handshakes())
def test_fuzzed_handshakes(world, stream):
    before = world.image()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(world.export.socket)
        greeting = P.recv_exact(sock, P.SERVER_GREETING.size)
        assert greeting[:16] == b"NBDMAGICIHAVEOPT"
        try:
            sock.sendall(stream)
            sock.shutdown(socket.SHUT_WR)  # the server sees EOF after our bytes
        except OSError:
            pass  # it already hung up on us
        _drain(sock)
    assert world.image() == before
    world.check_alive()


# -- command stream ----------------------------------------------------------------

_CMDS = [
    P.CMD_READ,
    P.CMD_WRITE,
    P.CMD_FLUSH,
    P.CMD_TRIM,
    P.CMD_WRITE_ZEROES,
    P.CMD_BLOCK_STATUS,
    P.CMD_CACHE,
    P.CMD_RESIZE,
    9,
    0x7FFF,
    0xFFFF,
]
_GOOD_FLAGS = [
    P.CMD_FLAG_FUA,
    P.CMD_FLAG_NO_HOLE,
    P.CMD_FLAG_DF,
    P.CMD_FLAG_REQ_ONE,
    P.CMD_FLAG_FAST_ZERO,
    P.CMD_FLAG_FUA | P.CMD_FLAG_NO_HOLE,
]
_EDGE_OFFSETS = [0, 512 * 64, 512 * 65 - 1, 512 * 300, SIZE - 1, SIZE, SIZE + 1, 2**63, 2**64 - 1]
_EDGE_LENGTHS = [0, 1, 512, 4096, SIZE, SIZE + 1, P.MAX_PAYLOAD, P.MAX_PAYLOAD + 1, 2**32 - 1]
_TAILS = [None, "magic", "header", "payload", "close", "disc"]


@st.composite
def requests(draw: st.DrawFn) -> tuple[int, int, int, int]:
    """Mostly plausible requests (so that many are accepted and change the
    image), with edge values and plain noise mixed in."""
    mix = draw(st.integers(0, 9))
    cmd = draw(st.sampled_from(_CMDS[:6] if mix < 8 else _CMDS))
    flags = (
        0 if mix < 5 else draw(st.sampled_from(_GOOD_FLAGS) if mix < 8 else st.integers(0, 0xFFFF))
    )
    mix = draw(st.integers(0, 9))
    offset = draw(st.integers(0, SIZE - 1) if mix < 7 else st.sampled_from(_EDGE_OFFSETS))
    mix = draw(st.integers(0, 9))
    length = draw(st.integers(0, 65536) if mix < 7 else st.sampled_from(_EDGE_LENGTHS))
    if cmd == P.CMD_WRITE and 70000 < length <= P.MAX_PAYLOAD:
        length = 70000  # keep payloads small; oversize ones are still drawn
    if cmd == P.CMD_FLUSH and mix < 7:
        offset = length = 0
    return cmd, flags, offset, length


@SETTINGS
@given(
    structured=st.booleans(),
    meta=st.booleans(),
    reqs=st.lists(requests(), min_size=1, max_size=12),
    tail=st.sampled_from(_TAILS),
    seed=st.integers(0, 255),
)
def test_fuzzed_command_stream(structured, meta, reqs, tail, seed):
    # A fresh image and export per example, so a failure replays exactly.
    with tempfile.TemporaryDirectory(prefix="nbd-fuzz-") as tmp:
        world = World(Path(tmp))
        try:
            _command_stream(world, structured, meta, reqs, tail, seed)
            world.check_alive()  # the server still serves a well-formed client
        finally:
            world.export.close()
            world.disk.close()


def _command_stream(
    world: World,
    structured: bool,
    meta: bool,
    reqs: list[tuple[int, int, int, int]],
    tail: str | None,
    seed: int,
) -> None:
    model = world.model
    c = NBDClient(world.export.socket, structured=structured, meta=meta)
    alive = True
    try:
        for handle, (cmd, flags, offset, length) in enumerate(reqs, start=1):
            payload = b""
            if cmd == P.CMD_WRITE and length <= P.MAX_PAYLOAD:
                payload = bytes((seed + handle + i) & 0xFF for i in range(min(length, 251)))
                payload = (payload * (length // max(1, len(payload)) + 1))[:length]
            c.send_request(cmd, offset, length, flags=flags, payload=payload, handle=handle)
            try:
                reply = c.recv_reply(length if cmd == P.CMD_READ and length <= SIZE else 0)
            except ProtocolError:  # the server hung up: only for an oversized write
                assert cmd == P.CMD_WRITE and length > P.MAX_PAYLOAD
                alive = False
                break
            assert reply.handle == handle
            if cmd == P.CMD_WRITE and length > P.MAX_PAYLOAD:
                assert reply.error == P.NBD_EINVAL
                assert c.sock.recv(1) == b""
                alive = False
                break
            in_range = offset + length <= SIZE
            event(f"{P.CMD_NAMES.get(cmd, 'unknown')} -> error {reply.error}")
            if reply.error:
                assert reply.error in (
                    P.NBD_EINVAL,
                    P.NBD_ENOSPC,
                    P.NBD_EIO,
                    P.NBD_EPERM,
                    P.NBD_EOVERFLOW,
                )
                continue
            # accepted: it must have been valid, and it tells the model what changed
            assert in_range and cmd in _CMDS[:6], (cmd, flags, offset, length)
            if cmd == P.CMD_READ:
                assert reply.data == bytes(model[offset : offset + length])
            elif cmd == P.CMD_WRITE:
                model[offset : offset + length] = payload
            elif cmd in (P.CMD_TRIM, P.CMD_WRITE_ZEROES):
                model[offset : offset + length] = bytes(length)
            elif cmd == P.CMD_BLOCK_STATUS:
                assert reply.extents and sum(n for n, _ in reply.extents) <= length
                pos = offset
                for n, state in reply.extents:
                    if state & P.STATE_ZERO:
                        assert model[pos : pos + n] == bytes(n)
                    pos += n
        event(f"tail {tail if alive else 'hung up'}")
        if alive and tail is not None:
            if tail == "magic":
                c.sock.sendall(P.REQUEST.pack(0xDEADBEEF, 0, P.CMD_READ, 99, 0, 512))
            elif tail == "header":
                c.sock.sendall(P.REQUEST.pack(P.REQUEST_MAGIC, 0, P.CMD_READ, 99, 0, 512)[:17])
                c.sock.shutdown(socket.SHUT_WR)
            elif tail == "payload":
                c.sock.sendall(
                    P.REQUEST.pack(P.REQUEST_MAGIC, 0, P.CMD_WRITE, 99, 0, 4096) + b"\x42" * 1000
                )
                c.sock.shutdown(socket.SHUT_WR)
            elif tail == "disc":
                c.send_request(P.CMD_DISC)
            if tail != "close":
                assert _drain(c.sock) == b""  # nothing answers a broken or final request
            alive = False
    finally:
        if alive:
            c.close()
        else:
            c.sock.close()
    assert world.image() == bytes(model)


def test_server_survives_the_fuzzing(world, tmp_path):
    """Runs after the fuzz tests in this module: clients are still served."""
    world.check_alive()
    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io not installed")
    import subprocess

    proc = subprocess.run(
        ["qemu-io", "-f", "raw", "-c", "read -P 0 1040384 4096", world.export.uri],
        capture_output=True,
        text=True,
        timeout=60,
    )
    expected_zero = world.model[1040384:1044480] == bytes(4096)
    assert ("Pattern verification failed" not in proc.stdout) == expected_zero, proc.stdout
    assert world.export.connections <= 1
