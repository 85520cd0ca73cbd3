"""qemu-img, a real program in another process, meets the faulty disk over NBD.

``blkdebug_nbd`` exports the test's disk on a Unix socket; qemu-img reads or
writes it through its NBD client, every request goes through the engine, and
qemu-img reports the injected errors in its own words.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_blkdebug import Disk

QEMU_IMG = shutil.which("qemu-img")
pytestmark = [
    pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img not found (install qemu-utils)"),
    pytest.mark.blkdebug(size="4M"),
]

PATTERN = bytes(range(256)) * 16  # 4 KiB


def qemu_img(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert QEMU_IMG is not None
    return subprocess.run(
        [QEMU_IMG, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "LC_ALL": "C"},  # English strerror texts
    )


def fill(disk: Disk) -> bytes:
    """Data everywhere (holes would be skipped by qemu-img, never read)."""
    for offset in range(0, disk.size, len(PATTERN)):
        disk.write(offset, PATTERN)
    return PATTERN * (disk.size // len(PATTERN))


# Proves: a bad sector makes `qemu-img convert` fail with qemu-img's own
# message, and because the rule has "once" (a transient media error), the
# same command run again succeeds and copies every byte. The rule file is
# QEMU's ini format: real qemu-io reads it too.
@pytest.mark.blkdebug_rules("rules/bad-sector.ini")
def test_convert_fails_on_a_bad_sector_then_succeeds(
    blkdebug_disk: Disk, blkdebug_nbd: Any, tmp_path: Path
) -> None:
    data = fill(blkdebug_disk)
    url = blkdebug_nbd.url_for("qemu")
    first = qemu_img("convert", "-f", "raw", "-O", "raw", url, "copy.raw", cwd=tmp_path)
    assert first.returncode == 1
    match = re.fullmatch(
        r"qemu-img: error while reading at byte (\d+): Input/output error\n", first.stderr
    )
    assert match is not None, first.stderr
    assert int(match[1]) <= 2048 * 512  # the chunk holding the bad sector
    status = blkdebug_disk.rule("bad-sector")
    assert (status.hits, status.consumed) == (1, True)
    second = qemu_img("convert", "-f", "raw", "-O", "raw", url, "copy.raw", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "copy.raw").read_bytes() == data


# Proves: a failing write makes `qemu-img convert` into the disk fail with
# qemu-img's message naming the errno (ENOSPC), and a second run, with the
# rule consumed, leaves the disk identical to the source.
@pytest.mark.inject_error("write_aio", sector=4096, errno=28, once=True, name="full-at-2M")
def test_convert_into_the_disk_fails_on_a_write_error(
    blkdebug_disk: Disk, blkdebug_nbd: Any, tmp_path: Path
) -> None:
    source = tmp_path / "source.raw"
    source.write_bytes(os.urandom(blkdebug_disk.size))
    url = blkdebug_nbd.url_for("qemu")
    first = qemu_img("convert", "-n", "-f", "raw", "-O", "raw", str(source), url, cwd=tmp_path)
    assert first.returncode == 1
    assert re.fullmatch(
        r"qemu-img: error while writing at byte \d+: No space left on device\n", first.stderr
    ), first.stderr
    assert blkdebug_disk.rule("full-at-2M").hits == 1
    second = qemu_img("convert", "-n", "-f", "raw", "-O", "raw", str(source), url, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert Path(blkdebug_disk.path).read_bytes() == source.read_bytes()


# Shows the export itself, with no rule involved: qemu-img sees a raw disk of
# the configured size. Marked no_fault: it passes with --blkdebug-no-rules too.
@pytest.mark.no_fault
def test_qemu_img_sees_the_export(blkdebug_disk: Disk, blkdebug_nbd: Any, tmp_path: Path) -> None:
    info = qemu_img("info", "--output=json", blkdebug_nbd.url_for("qemu"), cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["virtual-size"] == blkdebug_disk.size == 4 << 20
