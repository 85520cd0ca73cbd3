"""Finding and running the real ``qemu-io`` (Debian qemu-utils 7.2) in tests.

Conformance tests compare pytest-blkdebug with QEMU by running both on the
same input. They are skipped only when ``qemu-io`` is truly absent; a
``qemu-io`` that is present but misbehaves makes them fail, never skip.
Set ``QEMU_IO=/path/to/qemu-io`` to use a binary that is not on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

__all__ = ["QEMU_IO_ENV", "qemu_io_path", "requires_qemu_io", "run_qemu_io"]

#: Environment variable naming a qemu-io binary to use instead of PATH's.
QEMU_IO_ENV = "QEMU_IO"


def qemu_io_path() -> str | None:
    """The qemu-io executable to use, or ``None`` if there is none."""
    override = os.environ.get(QEMU_IO_ENV)
    if override:
        found = shutil.which(override)
        return found if found else None
    return shutil.which("qemu-io")


#: Marker for tests that need qemu-io: skips, with the reason, only when it
#: is not installed.
requires_qemu_io = pytest.mark.skipif(
    qemu_io_path() is None,
    reason=f"qemu-io not found (install qemu-utils, or set {QEMU_IO_ENV})",
)


def run_qemu_io(
    args: Sequence[str],
    cwd: str | os.PathLike[str],
    timeout: float = 30,
    *,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``qemu-io *args`` in ``cwd`` and capture its output as text.

    The C locale keeps QEMU's messages (and strerror texts) in English.
    Output is decoded as UTF-8 without newline translation; undecodable
    bytes are backslash-escaped rather than raising.
    A hang raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds;
    a missing qemu-io raises ``FileNotFoundError`` (use ``requires_qemu_io``).
    """
    exe = qemu_io_path()
    if exe is None:
        raise FileNotFoundError(f"qemu-io not found (install qemu-utils, or set {QEMU_IO_ENV})")
    run_env = dict(os.environ)
    run_env["LC_ALL"] = "C"
    if env:
        run_env.update(env)
    # Bytes, decoded by hand: text mode would turn a "\r" QEMU echoes from
    # a config file into "\n" (universal newlines).
    proc = subprocess.run(
        [exe, *args],
        cwd=Path(cwd),
        env=run_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode("utf-8", "backslashreplace"),
        proc.stderr.decode("utf-8", "backslashreplace"),
    )
