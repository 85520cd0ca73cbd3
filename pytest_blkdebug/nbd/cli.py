"""The ``blkdebug-nbd`` command: serve an image over NBD with blkdebug rules
applied, like ``qemu-nbd``, until SIGINT/SIGTERM, then print the final state
and every rule's counters.

Kept apart from ``nbd.py`` (the server: ``NBDExport`` and its connections) so
that the command line -- its arguments, the signal handling that ends it, the
counters table it prints -- is found in one short file, and the server module
is only the server. ``docs/nbd.md`` shows the command in use. The console
script is ``pytest_blkdebug.nbd:main``, a thin forwarder to ``main`` here
(``python -m pytest_blkdebug.nbd`` and ``python -m pytest_blkdebug.nbd_cli``
both work too).
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import threading
from collections.abc import Sequence

from ..core.disk import Disk
from ..core.engine import Engine
from .server import NBDExport

__all__ = ["main"]


def _parse_tcp(value: str) -> tuple[str, int]:
    """``--tcp HOST:PORT`` (an IPv6 host may be bracketed; empty host: 127.0.0.1)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"--tcp wants HOST:PORT, not {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (else main() warns)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _report(disk: Disk) -> str:
    """The final state and a table of every rule's counters, printed at exit."""
    rows = [("rule", "kind", "event", "armed", "hits", "consumed")]
    rows += [
        (r.name, r.kind, r.event, str(r.armed), str(r.hits), "yes" if r.consumed else "no")
        for r in disk.rules
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = [f"final state: {disk.state}"]
    if len(rows) == 1:
        lines.append("rules: none")
    else:
        for row in rows:
            lines.append(
                "  ".join(
                    cell.ljust(w) if i < 3 else cell.rjust(w) if i < 5 else cell
                    for i, (cell, w) in enumerate(zip(row, widths, strict=True))
                ).rstrip()
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``blkdebug-nbd``: serve an image over NBD with blkdebug rules applied."""
    from ..core.events import EventRegistry
    from ..rulefiles import load_rules

    parser = argparse.ArgumentParser(
        prog="blkdebug-nbd",
        description="Serve IMAGE over NBD with blkdebug rules applied (like qemu-nbd). "
        "Prints the NBD URI on its first line, serves until SIGINT/SIGTERM, "
        "then prints the final state and every rule's counters.",
    )
    parser.add_argument("image", metavar="IMAGE", help="raw image file to serve")
    parser.add_argument(
        "--rules",
        action="append",
        default=[],
        metavar="FILE",
        help="rule file (QEMU ini or TOML); repeat for more, in order",
    )
    parser.add_argument(
        "--events",
        action="append",
        default=[],
        metavar="NAME,...",
        help="custom event names to register (comma-separated)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--socket",
        metavar="PATH",
        help="Unix socket to listen on (default: one in a new temporary directory)",
    )
    where.add_argument(
        "--tcp",
        metavar="HOST:PORT",
        type=_parse_tcp,
        help="listen on TCP instead (e.g. 127.0.0.1:10809; port 0 = any)",
    )
    parser.add_argument("--name", default="", help="export name (default: empty)")
    parser.add_argument("--readonly", action="store_true", help="refuse writes (EPERM)")
    parser.add_argument(
        "--durable",
        action="store_true",
        help="fdatasync on every successful flush (default: the page cache is enough)",
    )
    args = parser.parse_args(argv)
    if threading.current_thread() is not threading.main_thread():
        # It serves until SIGINT/SIGTERM, and only the main thread gets signals.
        print("blkdebug-nbd: main() must run in the main thread", file=sys.stderr)
        return 2

    try:
        registry = EventRegistry(
            name for chunk in args.events for name in map(str.strip, chunk.split(",")) if name
        )
        rules = []
        for path in args.rules:
            rules += load_rules(path, registry=registry)
        engine = Engine(rules, registry=registry)
        disk = Disk.open(args.image, engine=engine, readonly=args.readonly, durable=args.durable)
    except (OSError, ValueError) as exc:  # RuleError/RuleFileError are ValueErrors
        print(f"blkdebug-nbd: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            if args.tcp is not None:
                host, port = args.tcp
                if not _is_loopback(host):
                    print(
                        f"blkdebug-nbd: warning: listening on {host}, beyond loopback: anyone "
                        f"who can reach it can read and write {args.image}",
                        file=sys.stderr,
                    )
                export = NBDExport(disk, tcp=True, host=host, port=port, name=args.name)
            else:
                export = NBDExport(disk, socket_path=args.socket, name=args.name)
        except (OSError, ValueError) as exc:
            print(f"blkdebug-nbd: {exc}", file=sys.stderr)
            disk.close()
            return 1
        print(export.uri, flush=True)
        while not stop.wait(0.5):
            pass
        export.close()
        print(_report(disk), flush=True)
        disk.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
