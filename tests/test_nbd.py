"""The NBD export with real clients: qemu-io, qemu-img, nbdinfo, nbdcopy and
the ``blkdebug-nbd`` command, plus protocol details checked byte by byte
with the small client in ``tests/nbd_client.py``.

Every check that can ask the image file or the engine does so: data written
through the export is read back from the file itself, and the rule counters
and trace prove that remote requests went through the Disk.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nbd_client import NBDClient, NBDError, meta_query
from qemu_helpers import requires_qemu_io, run_qemu_io

import pytest_blkdebug as bd
from pytest_blkdebug.nbd import protocol as P

MiB = 1 << 20


def _requires(tool: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} not installed")


requires_qemu_img = _requires("qemu-img")
requires_nbdinfo = _requires("nbdinfo")
requires_nbdcopy = _requires("nbdcopy")


def run(args: list[str], timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LC_ALL="C")
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
        **kw,
    )  # type: ignore[call-overload]


def qemu_io(tmp_path: Path, uri: str, *commands: str) -> subprocess.CompletedProcess[str]:
    args = ["-f", "raw"]
    for command in commands:
        args += ["-c", command]
    return run_qemu_io([*args, uri], tmp_path, timeout=60)


def file_bytes(disk: bd.Disk, offset: int, length: int) -> bytes:
    """Read the image file directly, behind the engine's back."""
    with open(disk.path, "rb") as f:
        f.seek(offset)
        return f.read(length)


@pytest.fixture
def disk(tmp_path: Path):
    d = bd.Disk.create(tmp_path / "disk.img", 4 * MiB)
    yield d
    d.close()


@pytest.fixture
def export(disk: bd.Disk):
    with disk.serve_nbd() as ex:
        yield ex


# -- real clients -----------------------------------------------------------------


@requires_qemu_io
def test_qemu_io_read_write_flush_discard_zero(tmp_path, disk, export):
    counter = bd.SetState("flush_to_os", new_state=1, name="flushes")
    disk.engine.add_rules([counter])
    proc = qemu_io(
        tmp_path,
        export.url_for("qemu"),
        "write -P 0xab 0 64k",
        "read -P 0xab 0 64k",
        "flush",
        "discard 0 4k",
        "write -z 8k 4k",
        "read -P 0 0 4k",
        "read -P 0 8k 4k",
        "read -P 0xab 4k 4k",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "wrote 65536/65536 bytes at offset 0" in proc.stdout
    assert "discard 4096/4096 bytes at offset 0" in proc.stdout
    assert "wrote 4096/4096 bytes at offset 8192" in proc.stdout
    assert "Pattern verification failed" not in proc.stdout + proc.stderr
    # The file itself holds what the client wrote, discarded and zeroed.
    assert file_bytes(disk, 0, 4096) == bytes(4096)
    assert file_bytes(disk, 4096, 4096) == b"\xab" * 4096
    assert file_bytes(disk, 8192, 4096) == bytes(4096)
    assert file_bytes(disk, 12288, 65536 - 12288) == b"\xab" * (65536 - 12288)
    # The requests went through the Disk: the flush raised flush_to_os.
    assert disk.rule("flushes").hits >= 1
    kinds = {entry.kind for entry in disk.trace}
    assert "event" in kinds


@requires_qemu_io
def test_qemu_io_legacy_and_tcp_addresses(tmp_path, disk):
    with disk.serve_nbd(tcp=True) as ex:
        assert ex.socket is None
        assert ex.uri == f"nbd://127.0.0.1:{ex.port}/"
        proc = qemu_io(tmp_path, ex.url_for("qemu"), "write -P 0x11 0 512")
        assert proc.returncode == 0, proc.stderr
    with disk.serve_nbd() as ex:
        assert ex.socket is not None and ex.uri.startswith("nbd+unix:///?socket=")
        legacy = ex.url_for("qemu-legacy")
        assert legacy == f"nbd:unix:{ex.socket}"
        proc = qemu_io(tmp_path, legacy, "read -P 0x11 0 512")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        socket_path = ex.socket
    assert not os.path.exists(socket_path)  # close() removed it
    with pytest.raises(ValueError, match="unknown client"):
        ex.url_for("telnet")


@requires_qemu_io
def test_injected_eio_and_enospc_reach_the_client(tmp_path, disk, export):
    disk.engine.add_rules(
        [
            bd.InjectError("read_aio", errno=errno.EIO, once=True, name="bad-read"),
            bd.InjectError("write_aio", errno=errno.ENOSPC, sector=8, name="full", once=True),
        ]
    )
    proc = qemu_io(
        tmp_path,
        export.uri,
        "read 0 512",
        "read 0 512",
        "write -P 0x77 4096 512",
        "write -P 0x66 8192 512",
    )
    out = proc.stdout
    assert out.splitlines()[0] == "read failed: Input/output error"
    assert "read 512/512 bytes at offset 0" in out
    assert "write failed: No space left on device" in out
    assert "wrote 512/512 bytes at offset 8192" in out
    assert proc.returncode == 1
    assert disk.rule("bad-read").hits == 1 and disk.rule("bad-read").consumed
    assert disk.rule("full").hits == 1
    # The refused write never touched the image; the next one did.
    assert file_bytes(disk, 4096, 512) == bytes(512)
    assert file_bytes(disk, 8192, 512) == b"\x66" * 512


@requires_qemu_io
def test_breakpoint_holds_a_qemu_io_write_while_another_client_works(tmp_path, disk, export):
    disk.break_on("write_aio", "A")
    env = dict(os.environ, LC_ALL="C")
    held = subprocess.Popen(
        ["qemu-io", "-f", "raw", "-c", "write -P 0x5a 4096 4096", export.uri],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        disk.wait_break("A", timeout=20)
        assert held.poll() is None  # suspended inside the server, so still running
        assert file_bytes(disk, 4096, 4096) == bytes(4096)
        # A second client, at the same time: it is served while A is held.
        other = qemu_io(tmp_path, export.uri, "write -P 0x33 0 512", "read -P 0 4096 4096")
        assert other.returncode == 0, other.stdout + other.stderr
        assert held.poll() is None
        disk.resume("A")
        out, err = held.communicate(timeout=30)
    finally:
        if held.poll() is None:
            held.kill()
            held.communicate()
    assert held.returncode == 0, err
    assert "wrote 4096/4096 bytes at offset 4096" in out
    assert file_bytes(disk, 4096, 4096) == b"\x5a" * 4096
    assert file_bytes(disk, 0, 512) == b"\x33" * 512


@requires_qemu_io
def test_two_clients_write_at_once(tmp_path, disk, export):
    env = dict(os.environ, LC_ALL="C")
    procs = []
    for i, pattern in enumerate((0x41, 0x42)):
        base = i * 2 * MiB
        cmds = []
        for k in range(16):
            cmds += ["-c", f"write -P {pattern:#x} {base + k * 65536} 64k"]
        cmds += ["-c", f"read -P {pattern:#x} {base} 1M"]
        procs.append(
            subprocess.Popen(
                ["qemu-io", "-f", "raw", *cmds, export.uri],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
        assert "Pattern verification failed" not in out
    assert file_bytes(disk, 0, MiB) == b"\x41" * MiB
    assert file_bytes(disk, 2 * MiB, MiB) == b"\x42" * MiB


@requires_qemu_img
def test_qemu_img_convert_both_ways_and_compare(tmp_path, disk, export):
    src = tmp_path / "src.raw"
    data = bytearray(4 * MiB)
    for offset in (0, 700_000, 3 * MiB + 12345):
        data[offset : offset + 40_000] = os.urandom(40_000)
    src.write_bytes(bytes(data))
    uri = export.url_for("qemu")
    proc = run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), uri])
    assert proc.returncode == 0, proc.stderr
    assert Path(disk.path).read_bytes() == bytes(data)
    proc = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), uri])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Images are identical." in proc.stdout
    out = tmp_path / "out.raw"
    proc = run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(out)])
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == bytes(data)
    # compare notices a difference made through the export
    NBDClient(export.socket).write(1024, b"changed")
    proc = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), uri])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Content mismatch at offset 1024!" in proc.stdout


@requires_nbdinfo
def test_nbdinfo_reports_export_and_map(disk, export):
    disk.write(MiB, b"x" * 65536)
    proc = run(["nbdinfo", "--json", export.uri])
    assert proc.returncode == 0, proc.stderr
    import json

    info = json.loads(proc.stdout)
    (exp,) = info["exports"]
    assert exp["export-size"] == disk.size
    assert exp["is_read_only"] is False
    assert exp["can_flush"] and exp["can_fua"] and exp["can_trim"] and exp["can_zero"]
    assert exp["can_multi_conn"] is True
    assert "base:allocation" in exp["contexts"]
    assert exp["block_size_maximum"] == P.MAX_PAYLOAD
    proc = run(["nbdinfo", "--map", export.uri])
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    got = [(int(r[0]), int(r[1]), int(r[2])) for r in rows]
    expected = []
    for ext in disk.block_status(0, disk.size):
        flags = 0 if ext.data else 3
        if expected and expected[-1][2] == flags:
            expected[-1] = (expected[-1][0], expected[-1][1] + ext.length, flags)
        else:
            expected.append((ext.offset, ext.length, flags))
    assert got == expected
    assert (MiB, 65536, 0) in got


@requires_nbdinfo
def test_block_status_error_is_injected(disk, export):
    disk.engine.add_rules([bd.InjectError("none", iotype=["block-status"], name="bs")])
    disk.event("none")
    proc = run(["nbdinfo", "--map", export.uri])
    assert proc.returncode != 0
    assert "Input/output error" in proc.stderr
    assert disk.rule("bs").hits >= 1


@requires_nbdcopy
def test_nbdcopy_to_and_from_the_export(tmp_path, disk, export):
    payload = os.urandom(MiB)
    src = tmp_path / "src.raw"
    src.write_bytes(bytes(MiB) + payload + bytes(2 * MiB))
    proc = run(["nbdcopy", str(src), export.uri])
    assert proc.returncode == 0, proc.stderr
    assert Path(disk.path).read_bytes() == src.read_bytes()
    dst = tmp_path / "dst.raw"
    dst.write_bytes(b"")
    proc = run(["nbdcopy", export.uri, str(dst)])
    assert proc.returncode == 0, proc.stderr
    assert dst.read_bytes() == src.read_bytes()


@requires_nbdcopy
def test_nbdcopy_reports_an_injected_read_error(tmp_path, disk, export):
    disk.write(0, os.urandom(MiB))
    disk.engine.add_rules([bd.InjectError("read_aio", errno=errno.EIO, sector=1024, name="r")])
    proc = run(["nbdcopy", export.uri, "null:"])
    assert proc.returncode != 0
    assert "Input/output error" in proc.stderr
    assert disk.rule("r").hits >= 1


@requires_qemu_io
def test_readonly_export(tmp_path, disk):
    with disk.serve_nbd(readonly=True) as ex:
        # qemu sees READ_ONLY in the export flags: it refuses a read-write open
        proc = qemu_io(tmp_path, ex.uri, "read 0 512")
        assert proc.returncode == 1 and "Permission denied" in proc.stderr
        proc = run_qemu_io(["-r", "-f", "raw", "-c", "read 0 512", ex.uri], tmp_path)
        assert proc.returncode == 0 and "read 512/512 bytes at offset 0" in proc.stdout
        with NBDClient(ex.socket) as c:
            assert c.flags & P.TF_READ_ONLY
            assert not c.flags & (P.TF_SEND_TRIM | P.TF_SEND_WRITE_ZEROES | P.TF_SEND_FUA)
            for call in (
                lambda: c.write(0, b"x"),
                lambda: c.trim(0, 512),
                lambda: c.write_zeroes(0, 512),
            ):
                with pytest.raises(NBDError) as err:
                    call()
                assert err.value.errno == P.NBD_EPERM
    assert file_bytes(disk, 0, 512) == bytes(512)


# -- the command ----------------------------------------------------------------------


def _rules_table(lines: list[str]) -> dict[str, dict[str, str]]:
    """The rule table of ``report.format_report`` as {name: {column: cell}}
    (cells are cut at the header's column starts: conditions hold spaces)."""
    start = next(i for i, line in enumerate(lines) if line.startswith("rules ("))
    header = lines[start + 1]
    names = header.split()
    starts = [header.index(" " + n) + 1 if i else header.index(n) for i, n in enumerate(names)]
    table = {}
    for line in lines[start + 2 :]:
        if not line.startswith("  ") or line.startswith("  what "):
            break
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], len(line)], strict=True)]
        table[cells[0]] = dict(zip(names, cells, strict=True))
    return table


def _nbd_command() -> list[str]:
    exe = shutil.which("blkdebug-nbd")
    return [exe] if exe else [sys.executable, "-m", "pytest_blkdebug.nbd"]


@requires_qemu_io
@pytest.mark.parametrize("where", ["socket", "tcp"])
def test_blkdebug_nbd_command_end_to_end(tmp_path, where):
    image = tmp_path / "img.raw"
    image.write_bytes(bytes(MiB))
    rules = tmp_path / "rules.ini"
    rules.write_text(
        '[inject-error "full"]\nevent = "write_aio"\nerrno = "28"\nonce = "on"\n\n'
        '[set-state]\nevent = "write_aio"\nstate = "1"\nnew_state = "2"\n'
    )
    extra = ["--tcp", "127.0.0.1:0"] if where == "tcp" else ["--socket", str(tmp_path / "s")]
    server = subprocess.Popen(
        [*_nbd_command(), "--rules", str(rules), *extra, str(image)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        uri = server.stdout.readline().strip()
        if where == "tcp":
            assert re.fullmatch(r"nbd://127\.0\.0\.1:\d+/", uri), uri
        else:
            assert uri == f"nbd+unix:///?socket={tmp_path / 's'}"
        proc = qemu_io(tmp_path, uri, "write -P 0x99 0 512", "write -P 0x98 512 512")
        assert proc.stdout.splitlines()[0] == "write failed: No space left on device"
        assert "wrote 512/512 bytes at offset 512" in proc.stdout
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, err
    lines = out.splitlines()
    assert "state: 2" in lines  # the final state
    table = _rules_table(lines)
    full, set_state = table["full"], table["set-state#2"]
    assert (full["kind"], full["event"]) == ("inject-error", "write_aio")
    assert (full["armed"], full["hits"], full["consumed"]) == ("1", "1", "yes")
    assert (set_state["kind"], set_state["event"], set_state["hits"]) == (
        "set-state",
        "write_aio",
        "1",
    )
    data = image.read_bytes()
    assert data[:512] == bytes(512) and data[512:1024] == b"\x98" * 512


def test_blkdebug_nbd_command_errors(tmp_path):
    bad = tmp_path / "bad.ini"
    bad.write_text('[inject-error]\nevent = "no_such_event"\n')
    image = tmp_path / "img.raw"
    image.write_bytes(bytes(4096))
    proc = run([*_nbd_command(), "--rules", str(bad), str(image)], timeout=30)
    assert proc.returncode == 1
    assert str(bad) in proc.stderr and "no_such_event" in proc.stderr
    proc = run([*_nbd_command(), str(tmp_path / "missing.img")], timeout=30)
    assert proc.returncode == 1 and "missing.img" in proc.stderr
    proc = run([*_nbd_command(), "--tcp", "nonsense", str(image)], timeout=30)
    assert proc.returncode == 2 and "HOST:PORT" in proc.stderr


def test_main_in_process_with_custom_events(tmp_path, capsys):
    """main() returns after SIGTERM and prints the rule of a custom event."""
    import threading

    from pytest_blkdebug.nbd.cli import main

    image = tmp_path / "img.raw"
    image.write_bytes(bytes(8192))
    rules = tmp_path / "r.toml"
    rules.write_text('[[set-state]]\nevent = "journal_commit"\nnew_state = 3\nname = "j"\n')
    original = signal.getsignal(signal.SIGTERM)

    def stop_when_serving() -> None:
        # SIGTERM only once main() has its handler in place (else it would
        # kill this test process); the URI may or may not be out by then.
        deadline = time.monotonic() + 30
        while signal.getsignal(signal.SIGTERM) is original and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_when_serving, daemon=True)
    stopper.start()
    assert main(["--events", "journal_commit", "--rules", str(rules), str(image)]) == 0
    stopper.join(10)
    assert signal.getsignal(signal.SIGTERM) is original  # main() restored it
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("nbd+unix:///?socket=")
    assert "state: 1" in out  # the final state
    j = _rules_table(out)["j"]
    assert (j["kind"], j["event"], j["hits"]) == ("set-state", "journal_commit", "0")


# -- protocol details, byte by byte ------------------------------------------------


def test_simple_replies_without_structured_negotiation(disk, export):
    disk.write(0, b"hello world")
    with NBDClient(export.socket, structured=False) as c:
        assert not c.structured and c.meta_id is None
        assert c.size == disk.size
        assert not c.flags & P.TF_SEND_DF  # DF only with structured replies
        assert c.read(0, 11) == b"hello world"
        c.write(100, b"abc", flags=P.CMD_FLAG_FUA)
        with pytest.raises(NBDError) as err:
            c.block_status(0, 4096)
        assert err.value.errno == P.NBD_EINVAL
    assert file_bytes(disk, 100, 3) == b"abc"


def test_out_of_range_and_invalid_requests_never_change_the_image(disk, export):
    before = Path(disk.path).read_bytes()
    size = disk.size
    cases = [
        (P.CMD_READ, 0, size, size + 1, P.NBD_EINVAL),
        (P.CMD_READ, 0, size, 1, P.NBD_EINVAL),
        (P.CMD_WRITE, 0, size - 1, 2, P.NBD_ENOSPC),
        (P.CMD_WRITE, P.CMD_FLAG_NO_HOLE, 0, 4, P.NBD_EINVAL),
        (P.CMD_WRITE_ZEROES, 0, size, 512, P.NBD_ENOSPC),
        (P.CMD_WRITE_ZEROES, P.CMD_FLAG_FAST_ZERO, 0, 512, P.NBD_EINVAL),
        (P.CMD_TRIM, 0, 2**63, 512, P.NBD_EINVAL),
        (P.CMD_BLOCK_STATUS, 0, size, 1, P.NBD_EINVAL),
        (P.CMD_BLOCK_STATUS, 0, 0, 0, P.NBD_EINVAL),
        (P.CMD_FLUSH, 0, 1, 0, P.NBD_EINVAL),
        (P.CMD_CACHE, 0, 0, 512, P.NBD_EINVAL),
        (P.CMD_RESIZE, 0, 0, 0, P.NBD_EINVAL),
        (77, 0, 0, 0, P.NBD_EINVAL),
        (P.CMD_READ, 0, 0, P.MAX_PAYLOAD + 1, P.NBD_EOVERFLOW),
        (P.CMD_READ, 1 << 9, 0, 512, P.NBD_EINVAL),
    ]
    with NBDClient(export.socket) as c:
        for cmd, flags, offset, length, want in cases:
            payload = b"\xee" * length if cmd == P.CMD_WRITE else b""
            c.send_request(cmd, offset, length, flags=flags, payload=payload)
            reply = c.recv_reply()
            assert reply.error == want, (cmd, flags, offset, length, reply)
            assert reply.message  # structured errors explain themselves
        assert c.read(0, 4) == bytes(4)  # the connection is still in step
    assert Path(disk.path).read_bytes() == before


def test_oversized_write_disconnects_and_others_carry_on(disk, export):
    with NBDClient(export.socket) as c:
        c.send_request(P.CMD_WRITE, 0, P.MAX_PAYLOAD + 1)  # no payload follows
        reply = c.recv_reply()
        assert reply.error == P.NBD_EINVAL
        assert c.sock.recv(1) == b""  # the server hung up
    with NBDClient(export.socket) as c2:
        c2.write(0, b"ok")
    assert file_bytes(disk, 0, 2) == b"ok"


def test_errno_mapping(disk, export):
    cases = [
        (errno.EIO, P.NBD_EIO),
        (errno.ENOSPC, P.NBD_ENOSPC),
        (errno.EPERM, P.NBD_EPERM),
        (errno.EROFS, P.NBD_EPERM),
        (errno.EDQUOT, P.NBD_ENOSPC),
        (errno.EFBIG, P.NBD_ENOSPC),
        (errno.ENOMEM, P.NBD_ENOMEM),
        (errno.EINVAL, P.NBD_EINVAL),
        (errno.EOVERFLOW, P.NBD_EOVERFLOW),
        (errno.ENOTSUP, P.NBD_ENOTSUP),
        (errno.ESHUTDOWN, P.NBD_ESHUTDOWN),
        (errno.EACCES, P.NBD_EIO),
        (errno.ENOENT, P.NBD_EIO),
    ]
    disk.engine.add_rules(
        [bd.InjectError("read_aio", errno=e, once=True, name=f"e{e}") for e, _ in cases]
    )
    with NBDClient(export.socket) as c:
        for host, wire in cases:
            c.send_request(P.CMD_READ, 0, 512)
            reply = c.recv_reply()
            assert reply.error == wire, (errno.errorcode[host], reply)
            assert f"injected by rule 'e{host}'" in reply.message


def test_fua_and_flush_go_through_the_disk(disk, export):
    disk.engine.add_rules([bd.SetState("flush_to_disk", new_state=1, name="to-disk")])
    with NBDClient(export.socket) as c:
        c.write(0, b"a")
        assert disk.rule("to-disk").hits == 0
        c.write(0, b"b", flags=P.CMD_FLAG_FUA)
        assert disk.rule("to-disk").hits == 1
        c.trim(4096, 4096, flags=P.CMD_FLAG_FUA)
        assert disk.rule("to-disk").hits == 2
        c.write_zeroes(8192, 4096, flags=P.CMD_FLAG_FUA | P.CMD_FLAG_NO_HOLE)
        assert disk.rule("to-disk").hits == 3
        c.flush()  # nothing dirty since: flush_to_disk is not raised
        assert disk.rule("to-disk").hits == 3
    disk.engine.add_rules([bd.InjectError("flush_to_disk", iotype=["flush"], name="ff")])
    with NBDClient(export.socket) as c:
        with pytest.raises(NBDError) as err:
            c.write(0, b"c", flags=P.CMD_FLAG_FUA)  # written, but the flush failed
        assert err.value.errno == P.NBD_EIO
    assert file_bytes(disk, 0, 1) == b"c"


def test_write_zeroes_no_hole_keeps_the_range_allocated(disk, export):
    with NBDClient(export.socket) as c:
        c.write(0, b"\xff" * 65536)
        c.write_zeroes(0, 16384)  # may punch a hole
        c.write_zeroes(16384, 16384, flags=P.CMD_FLAG_NO_HOLE)
        extents = c.block_status(0, 65536)
        assert c.read(0, 32768) == bytes(32768)
    hole, data = P.STATE_HOLE | P.STATE_ZERO, 0
    assert extents[0] == (16384, hole)
    assert extents[1] == (65536 - 16384, data)


def test_block_status_req_one_and_merging(disk, export):
    disk.write(8192, b"x" * 4096)
    with NBDClient(export.socket) as c:
        assert c.block_status(0, 65536) == [(8192, 3), (4096, 0), (65536 - 12288, 3)]
        assert c.block_status(0, 65536, flags=P.CMD_FLAG_REQ_ONE) == [(8192, 3)]
        assert c.block_status(8192, 100) == [(100, 0)]


def test_handshake_options(disk, export):
    c = NBDClient(export.socket, connect=False)
    flags = c.greeting()
    assert flags == P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES
    (rtype, data), (ack, _) = c.option(P.OPT_LIST)
    assert rtype == P.REP_SERVER and data == struct.pack(">I", 0) and ack == P.REP_ACK
    assert c.option(P.OPT_LIST, b"junk")[0][0] == P.REP_ERR_INVALID
    assert c.option(P.OPT_STARTTLS)[0][0] == P.REP_ERR_UNSUP
    assert c.option(999, b"whatever")[0][0] == P.REP_ERR_UNSUP
    # meta contexts need structured replies first
    query = meta_query("", [P.BASE_ALLOCATION])
    assert c.option(P.OPT_SET_META_CONTEXT, query)[0][0] == P.REP_ERR_INVALID
    assert c.option(P.OPT_STRUCTURED_REPLY)[0][0] == P.REP_ACK
    listed = c.option(P.OPT_LIST_META_CONTEXT, meta_query("", []))
    assert listed == [
        (P.REP_META_CONTEXT, struct.pack(">I", 0) + b"base:allocation"),
        (P.REP_ACK, b""),
    ]
    assert c.option(P.OPT_LIST_META_CONTEXT, meta_query("", ["x-other:"])) == [(P.REP_ACK, b"")]
    assert c.option(P.OPT_SET_META_CONTEXT, meta_query("nope", []))[0][0] == P.REP_ERR_UNKNOWN
    assert c.option(P.OPT_SET_META_CONTEXT, query[:-3])[0][0] == P.REP_ERR_INVALID
    # INFO for an unknown export, then a bad length, then a good one
    info = struct.pack(">I", 4) + b"nope" + struct.pack(">H", 0)
    assert c.option(P.OPT_INFO, info)[0][0] == P.REP_ERR_UNKNOWN
    assert c.option(P.OPT_INFO, struct.pack(">IH", 0, 5))[0][0] == P.REP_ERR_INVALID
    replies = c.option(P.OPT_INFO, struct.pack(">IHHH", 0, 2, P.INFO_NAME, P.INFO_BLOCK_SIZE))
    kinds = [struct.unpack_from(">H", d)[0] for t, d in replies if t == P.REP_INFO]
    assert kinds == [P.INFO_EXPORT, P.INFO_NAME, P.INFO_BLOCK_SIZE] and replies[-1][0] == P.REP_ACK
    # an oversized option is skipped and refused, the session goes on
    assert c.option(999, bytes(P.MAX_OPTION + 1))[0][0] == P.REP_ERR_TOO_BIG
    c.go()
    assert c.size == disk.size
    assert c.flags & P.TF_SEND_DF
    c.close()


def test_export_name_option_and_abort(disk, export):
    c = NBDClient(export.socket, connect=False)
    c.greeting(P.FLAG_C_FIXED_NEWSTYLE)  # without NO_ZEROES: 124 zero bytes follow
    c.sock.sendall(P.OPTION.pack(P.IHAVEOPT, P.OPT_EXPORT_NAME, 0))
    size, flags = P.EXPORT_NAME_REPLY.unpack(P.recv_exact(c.sock, 10))
    assert size == disk.size and flags & P.TF_HAS_FLAGS
    assert P.recv_exact(c.sock, 124) == bytes(124)
    assert c.read(0, 8) == bytes(8)  # simple replies: structured was not negotiated
    c.close()
    c = NBDClient(export.socket, connect=False)
    c.greeting()
    c.sock.sendall(P.OPTION.pack(P.IHAVEOPT, P.OPT_EXPORT_NAME, 4) + b"nope")
    assert c.sock.recv(1) == b""  # unknown export: the protocol can only hang up
    c.sock.close()
    c = NBDClient(export.socket, connect=False)
    c.greeting()
    assert c.option(P.OPT_ABORT) == [(P.REP_ACK, b"")]
    assert c.sock.recv(1) == b""
    c.sock.close()


def test_named_export(disk):
    with disk.serve_nbd(name="disk one", description="the first disk") as ex:
        assert ex.uri.startswith("nbd+unix:///disk%20one?socket=")
        with NBDClient(ex.socket, name="disk one") as c:
            assert c.read(0, 1) == b"\0"
        with NBDClient(ex.socket) as c:  # "" is the default export, this one
            assert c.size == disk.size
        c = NBDClient(ex.socket, connect=False)
        c.greeting()
        data = struct.pack(">I", 8) + b"disk one" + struct.pack(">HH", 1, P.INFO_DESCRIPTION)
        replies = c.option(P.OPT_INFO, data)
        assert (P.REP_INFO, struct.pack(">H", P.INFO_DESCRIPTION) + b"the first disk") in replies
        c.close()


def test_held_request_does_not_block_its_own_connection(disk, export):
    """Pipelined requests on one connection: a write held at a breakpoint,
    then a read and a flush that complete (and reply) while it is held."""
    disk.break_on("write_aio", "W")
    with NBDClient(export.socket) as c:
        c.send_request(P.CMD_WRITE, 0, 4, payload=b"held", handle=1)
        disk.wait_break("W", timeout=10)
        c.send_request(P.CMD_READ, 0, 4, handle=2)
        c.send_request(P.CMD_WRITE, 512, 4, payload=b"free", handle=3)
        first, second = c.recv_reply(), c.recv_reply()
        assert (first.handle, first.data) == (2, bytes(4))
        assert (second.handle, second.error) == (3, 0)
        assert file_bytes(disk, 0, 4) == bytes(4)  # still held
        disk.resume("W")
        held = c.recv_reply()
        assert (held.handle, held.error) == (1, 0)
        assert c.read(0, 4) == b"held"


def test_disconnect_mid_request_and_while_held(disk, export):
    before = Path(disk.path).read_bytes()
    # a write whose payload never fully arrives changes nothing
    c = NBDClient(export.socket)
    c.sock.sendall(P.REQUEST.pack(P.REQUEST_MAGIC, 0, P.CMD_WRITE, 1, 0, 4096) + b"\x01" * 100)
    c.sock.close()
    # a truncated header
    c = NBDClient(export.socket)
    c.sock.sendall(P.REQUEST.pack(P.REQUEST_MAGIC, 0, P.CMD_READ, 1, 0, 512)[:10])
    c.sock.close()
    # a client that leaves while its request is held: the resume is harmless
    disk.break_on("read_aio", "R")
    c = NBDClient(export.socket)
    c.send_request(P.CMD_READ, 0, 512)
    disk.wait_break("R", timeout=10)
    c.sock.close()
    disk.resume("R")
    with NBDClient(export.socket) as c2:
        assert c2.read(0, 4) == bytes(4)
    assert Path(disk.path).read_bytes() == before


def test_close_disconnects_clients_and_leaves_held_requests_to_the_test(disk):
    ex = disk.serve_nbd()
    idle = NBDClient(ex.socket)
    held = NBDClient(ex.socket)
    disk.break_on("write_aio", "H")
    held.send_request(P.CMD_WRITE, 0, 3, payload=b"abc")
    disk.wait_break("H", timeout=10)
    half = socket.socket(socket.AF_UNIX)
    half.connect(ex.socket)  # connected, never finishes the handshake
    assert P.recv_exact(half, 18)[:8] == b"NBDMAGIC"  # accepted, in the handshake
    ex.close()
    assert ex.closed and not os.path.exists(ex.socket)
    assert idle.sock.recv(1) == b""
    assert half.recv(1) == b""
    with pytest.raises(OSError):
        NBDClient(ex.socket)
    disk.resume("H")  # the held write completes; its reply has nowhere to go
    deadline = time.monotonic() + 10
    while file_bytes(disk, 0, 3) != b"abc" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert file_bytes(disk, 0, 3) == b"abc"
    for c in (idle, held):
        c.sock.close()
    half.close()
    ex.close()  # twice is fine


def test_export_arguments(disk, tmp_path):
    with pytest.raises(ValueError, match="not both"):
        disk.serve_nbd(tcp=True, socket_path=tmp_path / "s")
    with pytest.raises(ValueError, match="too long"):
        disk.serve_nbd(socket_path="/tmp/" + "x" * 120)
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError):
        disk.serve_nbd(socket_path=tmp_path / "file")
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    with disk.serve_nbd(socket_path=path) as ex:  # a stale socket is replaced
        assert ex.socket == str(path)
        with NBDClient(ex.socket) as c:
            assert c.size == disk.size
    assert "closed" in repr(ex)
