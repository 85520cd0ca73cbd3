"""blkdebug-io and real qemu-io 7.2 agree on random rule files and scripts.

Hundreds of scenarios come from a fixed seed (``BLKDEBUG_CONFORMANCE_SEED``
overrides it): a random QEMU ini file of inject-error and set-state rules on
the events a raw image raises, a raw image of 1 MiB or less, and a script of
``read``, ``read -P``, ``write``, ``write -P``, ``write -z``, ``discard``,
``flush`` and ``length`` with aligned, unaligned, zero-length and
past-the-end requests; a quarter of the files hold competing set-state rules
and inject-error rules gated on their states. Each runs through ``qemu-io -f
raw -t writeback`` and through ``blkdebug-io`` twice, once per Disk view
(the blocking methods, then ``--sync-via aio``), in-process (about 1.5 ms a
scenario against 110 ms for a subprocess); stdout without the statistics lines, the exit status and
the final image bytes must be equal. A disagreement prints the rule file and
both command lines, ready to paste.

The focused tests below pin behaviours the random runs found where the
engine first disagreed with qemu-io; each also asks qemu-io.
"""

from __future__ import annotations

import asyncio
import collections
import re
from pathlib import Path

import conformance_gen as cg
from qemu_helpers import requires_qemu_io, run_qemu_io

import pytest_blkdebug as bd

pytestmark = requires_qemu_io

DEFAULT_SEED = 7202
SCENARIOS = 800
MIN_SCENARIOS = 500
#: blkdebug-io runs every script twice: synchronous commands through the
#: Disk's blocking methods, then through its asyncio view.
VIEWS = ((), ("--sync-via", "aio"))


def test_random_sync_scripts_agree_with_qemu_io(tmp_path: Path) -> None:
    seed = cg.seed(DEFAULT_SEED)
    scenarios = cg.sync_scenarios(SCENARIOS, seed)
    results = cg.run_scenarios(scenarios, tmp_path, variants=VIEWS)
    assert results.ran >= MIN_SCENARIOS, cg.summary(results)
    assert not results.disagreements, cg.summary(results)


def test_generated_scenarios_cover_the_interesting_outcomes(tmp_path: Path) -> None:
    """The generator must keep producing failures of every request type,
    pattern mismatches, state changes and both exit statuses; otherwise the
    agreement above would prove little. Counted on blkdebug-io's side (the
    test above shows qemu-io prints the same)."""
    seen: collections.Counter[str] = collections.Counter()
    for scenario in cg.sync_scenarios(200, cg.seed(DEFAULT_SEED)):
        outcome = cg.run_ours(scenario, tmp_path / scenario.ident)
        seen[f"exit {outcome.status}"] += 1
        for line in cg.strip_stats(outcome.stdout):
            seen[re.sub(r"(at offset|,) .*|: .*| \d.*", "", line).strip()] += 1
        if "new_state" in (scenario.rules or ""):
            seen["set-state rule"] += 1
    for kind in (
        "exit 0",
        "exit 1",
        "read",
        "wrote",
        "discard",
        "read failed",
        "write failed",
        "discard failed",
        "Pattern verification failed",
        "set-state rule",
    ):
        assert seen[kind] >= 3, (kind, seen)


# -- behaviours found by the random runs ----------------------------------------

FLUSH_TO_DISK_RULES = """\
[set-state]
event = "flush_to_disk"
new_state = "2"

[inject-error]
event = "read_aio"
state = "2"
"""


def _agree(tmp_path: Path, rules: str, commands: list[str], size: int = 1 << 20) -> cg.Outcome:
    scenario = cg.Scenario(tmp_path.name, rules, commands, size)
    theirs = cg.run_qemu(scenario, tmp_path / "qemu")
    for i, view in enumerate(VIEWS):
        ours = cg.run_ours(scenario, tmp_path / f"ours{i}", view)
        problem = cg.compare(scenario, theirs, ours, view)
        assert problem is None, problem
    return ours


def test_zero_length_write_zeroes_leaves_the_disk_clean(tmp_path: Path) -> None:
    """``write -z OFF 0`` returns before QEMU's write generation moves, so the
    next flush raises no flush_to_disk; an empty discard does move it."""
    for op, dirty in (("write -z", False), ("discard", True)):
        ours = _agree(
            tmp_path / op.replace(" ", ""),
            FLUSH_TO_DISK_RULES,
            [f"{op} 4096 0", "flush", "read 0 512"],
        )
        assert ("read failed: Input/output error" in ours.stdout) is dirty, ours.stdout
    disk = bd.Disk.create(tmp_path / "d.raw", 4096)
    disk.write_zeroes(512, 0)
    assert not disk.dirty
    disk.discard(512, 0)
    assert disk.dirty


def test_write_held_at_pwritev_done_has_not_dirtied_the_disk_yet(tmp_path: Path) -> None:
    """QEMU bumps the write generation after pwritev_done: a flush issued
    while a write is suspended there finds the disk clean (no flush_to_disk),
    and the write dirties it only once resumed."""
    commands = [
        "break pwritev_done A",
        "aio_write 0 512",
        "wait_break A",
        "flush",
        "read 0 512",
        "resume A",
        "aio_flush",
        "flush",
        "read 0 512",
    ]
    ours = _agree(tmp_path / "cli", FLUSH_TO_DISK_RULES, commands)
    lines = cg.strip_stats(ours.stdout)
    assert (
        lines[1] == "read 512/512 bytes at offset 0"
        and lines[-1] == "read failed: Input/output error"
    ), lines


READ_ONLY_FLUSH_RULES = """\
[set-state]
event = "flush_to_os"
state = "1"
new_state = "2"

[inject-error]
event = "none"
iotype = "flush"
errno = "5"

[inject-error]
event = "read_aio"
state = "2"
errno = "5"
"""


def test_a_flush_of_a_read_only_disk_raises_no_event_and_is_not_checked(tmp_path: Path) -> None:
    """QEMU ends the flush of a read-only node at once (``bdrv_co_flush``'s
    early exit): no flush_to_os, no check. Ours raised flush_to_os (a
    set-state rule on it fired) on a ``readonly=True`` disk."""
    (tmp_path / "ro.ini").write_text(READ_ONLY_FLUSH_RULES)
    bd.Disk.create(tmp_path / "ro.raw", 4096).close()
    theirs = run_qemu_io(
        ["-r", "-f", "raw", "-c", "flush", "-c", "read 0 512", "blkdebug:ro.ini:ro.raw"],
        cwd=tmp_path,
    )
    assert "flush failed" not in theirs.stdout and "read 512/512" in theirs.stdout
    rules = bd.load_rules(tmp_path / "ro.ini")
    with bd.Disk.open(tmp_path / "ro.raw", readonly=True, rules=rules) as disk:
        disk.flush()
        asyncio.run(disk.aio.flush())
        assert disk.state == 1 and disk.read(0, 512) == bytes(512)
