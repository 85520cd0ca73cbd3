"""Hostile NBD clients: slow handshakes, connection floods, wildcard addresses.

Issue 12 items 7 and 8. A client that trickles its handshake one byte at a
time must not keep its connection slot past ``handshake_timeout`` (a deadline
for the whole negotiation, not for each receive), and a flood of such
clients must not keep a well-behaved client out: when every slot is taken,
the client that has been negotiating longest gives way to the newcomer.

Part of the hostile suite: tests/test_hostile.py indexes every attack.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbd_client import NBDClient

import pytest_blkdebug as bd
from pytest_blkdebug.nbd import protocol as P

MiB = 1 << 20


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[bd.Disk]:
    with bd.Disk.create(tmp_path / "img.raw", MiB) as d:
        yield d


class Trickler:
    """Clients that connect and then send their handshake one byte every
    ``interval`` seconds, forever (an option header announcing 60 KiB of
    data, so there is always one more byte to send)."""

    def __init__(self, address: str, interval: float) -> None:
        self.address = address
        self.interval = interval
        self.socks: list[socket.socket] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.stream = P.CLIENT_FLAGS.pack(P.FLAG_C_FIXED_NEWSTYLE) + P.OPTION.pack(
            P.IHAVEOPT, P.OPT_LIST_META_CONTEXT, 60_000
        )

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            return
        with self.lock:
            self.socks.append(sock)

    def _run(self) -> None:
        sent = 0
        while not self.stop.wait(self.interval):
            with self.lock:
                socks = list(self.socks)
            byte = self.stream[sent : sent + 1] or b"\0"
            sent += 1
            for sock in socks:
                try:
                    sock.send(byte)
                    sock.recv(4096)  # drain the greeting, keep no backlog
                except BlockingIOError:
                    pass
                except OSError:
                    with self.lock:
                        self.socks.remove(sock)
                    sock.close()

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        with self.lock:
            for sock in self.socks:
                sock.close()
            self.socks.clear()


def _connect_normal_client(address: str, within: float) -> float:
    """Connect a well-behaved client (retrying while refused); its seconds."""
    start = time.monotonic()
    while True:
        try:
            with NBDClient(address, timeout=2.0) as client:
                assert client.read(0, 512) == bytes(512)
            return time.monotonic() - start
        except (OSError, P.ProtocolError):
            if time.monotonic() - start > within:
                return float("inf")
            time.sleep(0.02)


def test_slow_clients_and_a_flood_do_not_lock_a_normal_client_out(disk: bd.Disk) -> None:
    """N slow clients hold every slot; a flood keeps opening more; a normal
    client still gets in at once (before the fix it never did: each
    received byte restarted the timeout)."""
    slots, timeout = 16, 2.0
    with disk.serve_nbd(max_connections=slots, handshake_timeout=timeout) as export:
        assert export.socket is not None
        slow = Trickler(export.socket, 0.2)
        flood = Trickler(export.socket, 0.2)
        try:
            for _ in range(slots):
                slow.connect()
            slow.start()
            deadline = time.monotonic() + 5
            while export.connections < slots and time.monotonic() < deadline:
                time.sleep(0.01)
            assert export.connections == slots

            flooding = threading.Event()

            def flood_loop() -> None:
                for _ in range(100):  # ~100 connections a second
                    flood.connect()
                    if flooding.wait(0.01):
                        return

            flooder = threading.Thread(target=flood_loop, daemon=True)
            flooder.start()
            flood.start()
            try:
                took = _connect_normal_client(export.socket, within=3 * timeout)
            finally:
                flooding.set()
                flooder.join(5)
            # Sooner than any slot frees by the deadline alone: the newcomer
            # took the slot of the longest handshake.
            assert took < timeout, f"a normal client waited {took:.2f} s"
            # And no client outlives the deadline of its whole negotiation.
            time.sleep(timeout + 0.5)
            assert export.connections == 0
        finally:
            slow.close()
            flood.close()


def test_handshake_timeout_is_a_deadline_for_the_whole_negotiation(disk: bd.Disk) -> None:
    """A client sending a byte every 0.1 s is cut off after handshake_timeout
    in all, although no single receive waits that long."""
    with disk.serve_nbd(handshake_timeout=0.6) as export:
        assert export.socket is not None
        slow = Trickler(export.socket, 0.1)
        try:
            slow.connect()
            slow.start()
            start = time.monotonic()
            deadline = start + 5
            while export.connections == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            while export.connections and time.monotonic() < deadline:
                time.sleep(0.02)
            took = time.monotonic() - start
            assert export.connections == 0, "the slow client kept its slot"
            assert took < 1.5, f"dropped after {took:.2f} s"
        finally:
            slow.close()


def test_max_connections_is_validated(disk: bd.Disk) -> None:
    with pytest.raises(ValueError, match="max_connections"):
        disk.serve_nbd(max_connections=0)
    with pytest.raises(ValueError, match="handshake_timeout"):
        disk.serve_nbd(handshake_timeout=float("nan"))


def test_full_export_refuses_when_every_client_is_past_its_handshake(disk: bd.Disk) -> None:
    """Eviction only takes clients still negotiating: established ones stay."""
    with disk.serve_nbd(max_connections=2) as export:
        assert export.socket is not None
        with NBDClient(export.socket) as a, NBDClient(export.socket) as b:
            with pytest.raises((OSError, P.ProtocolError)):
                NBDClient(export.socket, timeout=2.0)
            assert a.read(0, 1) == b"\0" and b.read(0, 1) == b"\0"


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::"])
def test_wildcard_hosts_warn(disk: bd.Disk, host: str) -> None:
    """Every spelling of "all interfaces" warns, the empty host included."""
    if host == "::" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    with pytest.warns(UserWarning, match="beyond loopback"):
        try:
            export = disk.serve_nbd(tcp=True, host=host)
        except OSError as exc:  # e.g. IPv6 disabled in this container
            pytest.skip(f"cannot listen on {host!r}: {exc}")
    with export:
        assert export.host and export.host != ""
        assert "//:" not in export.uri


def test_loopback_does_not_warn(disk: bd.Disk) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with disk.serve_nbd(tcp=True, host="127.0.0.1") as export:
            assert export.uri.startswith("nbd://127.0.0.1:")


def test_blkdebug_nbd_max_connections_option(tmp_path: Path) -> None:
    import subprocess
    import sys

    image = tmp_path / "img.raw"
    image.write_bytes(bytes(4096))
    command = [sys.executable, "-m", "pytest_blkdebug.nbd"]
    bad = subprocess.run(
        [*command, "--max-connections", "0", str(image)], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--max-connections" in bad.stderr
    helped = subprocess.run([*command, "--help"], capture_output=True, text=True)
    assert "--max-connections N" in helped.stdout


def test_serve_nbd_takes_named_keywords_only(disk: bd.Disk) -> None:
    with pytest.raises(TypeError):
        disk.serve_nbd(max_conections=3)  # type: ignore[call-arg]
    with disk.serve_nbd(max_connections=3, handshake_timeout=2.0) as export:
        assert (export.max_connections, export.handshake_timeout) == (3, 2.0)


@pytest.mark.parametrize(("where", "warns"), [("0.0.0.0:0", True), (":0", False)])
def test_blkdebug_nbd_warns_once_beyond_loopback(tmp_path: Path, where: str, warns: bool) -> None:
    """``--tcp 0.0.0.0:0`` warns on stderr (the library's warning, said once);
    ``--tcp :0`` means loopback, as documented, and does not."""
    import signal
    import subprocess
    import sys

    image = tmp_path / "img.raw"
    image.write_bytes(bytes(4096))
    server = subprocess.Popen(
        [sys.executable, "-m", "pytest_blkdebug.nbd", "--tcp", where, str(image)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        uri = server.stdout.readline()
        assert uri.startswith("nbd://0.0.0.0:" if warns else "nbd://127.0.0.1:"), uri
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert err.count("beyond loopback") == (1 if warns else 0), err
    if warns:
        assert err.startswith("blkdebug-nbd: warning: NBD export listening on 0.0.0.0"), err


def test_qemu_legacy_address_of_an_ipv6_export_brackets_the_host(disk: bd.Disk) -> None:
    """``url_for("qemu-legacy")`` gave ``nbd:::1:PORT`` for an IPv6 host, which
    qemu cannot parse (``address resolution failed for ::1:PORT``); qemu's
    legacy syntax wants ``nbd:[::1]:PORT``, as the URI brackets it."""
    import shutil
    import subprocess

    try:
        export = disk.serve_nbd(tcp=True, host="::1", name="e")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with export:
        legacy = export.url_for("qemu-legacy")
        assert legacy == f"nbd:[::1]:{export.port}:exportname=e"
        if shutil.which("qemu-io"):
            proc = subprocess.run(
                ["qemu-io", "-f", "raw", "-c", "length", legacy],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert (proc.returncode, proc.stdout.strip()) == (0, "1 MiB"), proc.stderr


def test_a_socket_in_a_missing_directory_names_the_path(disk: bd.Disk, tmp_path: Path) -> None:
    """``serve_nbd(socket_path=...)`` (and ``blkdebug-nbd --socket``) in a
    directory that does not exist said only ``[Errno 2] No such file or
    directory``, naming nothing; the TCP case names its address."""
    path = tmp_path / "missing" / "nbd.sock"
    with pytest.raises(FileNotFoundError, match=f"cannot listen on {path}: No such file"):
        disk.serve_nbd(socket_path=path)


@pytest.mark.parametrize("stop", ["SIGHUP", "SIGTERM"])
def test_blkdebug_nbd_ends_cleanly_on_a_closed_terminal(tmp_path: Path, stop: str) -> None:
    """SIGHUP (its terminal closed) ends ``blkdebug-nbd`` as SIGTERM does: the
    report printed, exit 0, the socket removed. It used to die where it
    stood, leaving its socket file and no report."""
    image = tmp_path / "img"
    image.write_bytes(bytes(1 << 20))
    sock = tmp_path / "nbd.sock"
    server = subprocess.Popen(
        [sys.executable, "-m", "pytest_blkdebug.nbd", "--socket", str(sock), str(image)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().startswith("nbd+unix://")
        server.send_signal(getattr(signal, stop))
        out, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, err
    assert "state: 1" in out.splitlines(), out
    assert not sock.exists()
