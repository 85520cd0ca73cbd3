"""The ``blkdebug-nbd`` command: serve an image over NBD with blkdebug rules
applied, like ``qemu-nbd``, until SIGINT/SIGTERM/SIGHUP, then print the engine's
report (``report.format_report``: final state, history, every rule's
counters, the trace).

Layering: unlike the rest of ``nbd``, which sits below ``core``, this module
is of the layer above ``core``, ``rulefiles``, ``report`` and ``harness``
(beside ``qemuio.cli``): the harness loads the rule files and opens the
``Disk``, ``report`` prints what happened.
Nothing in the package imports it; the console script
(``pytest_blkdebug.nbd.cli:main``) and ``python -m pytest_blkdebug.nbd`` do.
``docs/nbd.md`` shows the command in use.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings
from collections.abc import Sequence

from ..harness import Harness
from ..report import format_report
from .server import DEFAULT_MAX_CONNECTIONS

__all__ = ["main"]


def _parse_tcp(value: str) -> tuple[str, int]:
    """``--tcp HOST:PORT`` (an IPv6 host may be bracketed; empty host: 127.0.0.1)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"--tcp wants HOST:PORT, not {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"wants a whole number >= 1, not {value!r}")
    return int(value)


def main(argv: Sequence[str] | None = None) -> int:
    """``blkdebug-nbd``: serve an image over NBD with blkdebug rules applied."""
    parser = argparse.ArgumentParser(
        prog="blkdebug-nbd",
        description="Serve IMAGE over NBD with blkdebug rules applied (like qemu-nbd). "
        "Prints the NBD URI on its first line, serves until SIGINT/SIGTERM/SIGHUP, "
        "then prints the report: final state, history, every rule's counters.",
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
        "--max-connections",
        type=_positive_int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help=f"clients served at once (default {DEFAULT_MAX_CONNECTIONS}); when all are "
        "taken, the longest-running handshake gives way to a newcomer",
    )
    parser.add_argument(
        "--durable",
        action="store_true",
        help="fdatasync on every successful flush (default: the page cache is enough)",
    )
    args = parser.parse_args(argv)
    if threading.current_thread() is not threading.main_thread():
        # It serves until SIGINT/SIGTERM/SIGHUP, and only the main thread gets signals.
        print("blkdebug-nbd: main() must run in the main thread", file=sys.stderr)
        return 2

    try:
        harness = Harness(
            events=(n for chunk in args.events for n in map(str.strip, chunk.split(",")) if n)
        )
        engine = harness.engine(args.rules)
        disk = harness.open(args.image, engine=engine, readonly=args.readonly, durable=args.durable)
    except (OSError, ValueError) as exc:  # RuleError/RuleFileError are ValueErrors
        print(f"blkdebug-nbd: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    # SIGHUP too: a closed terminal ends the server the same way (report
    # printed, socket removed) instead of killing it where it stands.
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in stops}
    try:
        try:
            tcp = args.tcp is not None
            host, port = args.tcp if tcp else ("127.0.0.1", 0)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                export = disk.serve_nbd(
                    socket_path=args.socket,
                    tcp=tcp,
                    host=host,
                    port=port,
                    name=args.name,
                    max_connections=args.max_connections,
                )
            for warning in caught:  # beyond loopback: say so where the user looks
                print(f"blkdebug-nbd: warning: {warning.message}", file=sys.stderr)
        except (OSError, ValueError) as exc:
            print(f"blkdebug-nbd: {exc}", file=sys.stderr)
            disk.close()
            return 1
        print(export.uri, flush=True)
        while not stop.wait(0.5):
            pass
        export.close()
        print(format_report(disk), flush=True)
        disk.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
