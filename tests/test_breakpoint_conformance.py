"""Breakpoint scripts give the same results under blkdebug-io and qemu-io 7.2.

Hundreds of random scripts shaped like QEMU iotest 046 (``break EVENT TAG``,
an aio request that raises the event, ``wait_break``, more requests while it
is suspended, ``resume``/``remove_break``, ``aio_flush``, more requests), with
optional random rules, plus scripts with two tags on one event, two
breakpoints with one tag, one tag on two requests, one request stopped at two
events, pending breakpoints removed, and unknown events and tags. Each runs
through ``qemu-io -f raw -t writeback`` (with a timeout: a hang is reported as
a generator bug) and through ``blkdebug-io``. The breakpoint and error lines
must match in order, all stdout lines as a multiset (aio completions may come
in any order), and the exit status and the final image bytes must be equal.
``tests/conformance_gen.py`` lists the rules that keep the scripts
deterministic under qemu-io and free of hangs.
"""

from __future__ import annotations

import collections
from pathlib import Path

import conformance_gen as cg
from qemu_helpers import requires_qemu_io

pytestmark = requires_qemu_io

DEFAULT_SEED = 46
SCENARIOS = 400
MIN_SCENARIOS = 200
VIEWS = ((), ("--sync-via", "aio"))  # sync commands by the Disk's methods, then by aio


def test_random_breakpoint_scripts_agree_with_qemu_io(tmp_path: Path) -> None:
    scenarios = cg.breakpoint_scenarios(SCENARIOS, cg.seed(DEFAULT_SEED))
    results = cg.run_scenarios(scenarios, tmp_path, variants=VIEWS)
    assert results.ran >= MIN_SCENARIOS, cg.summary(results)
    assert not results.disagreements, cg.summary(results)


def test_breakpoint_scenarios_cover_every_shape(tmp_path: Path) -> None:
    """Every template is used, and the scripts really suspend, resume and
    fail breakpoint commands (counted on blkdebug-io's side)."""
    scenarios = cg.breakpoint_scenarios(SCENARIOS, cg.seed(DEFAULT_SEED))
    shapes = collections.Counter(s.ident.split("-", 2)[2] for s in scenarios)
    assert set(shapes) == {t.__name__[5:] for t, _ in cg.TEMPLATES}, shapes
    seen: collections.Counter[str] = collections.Counter()
    for scenario in scenarios[:150]:
        for line in cg.strip_stats(cg.run_ours(scenario, tmp_path / scenario.ident).stdout):
            seen[line.split(" '")[0].split(":")[0]] += 1
    for kind in (
        "blkdebug",
        "Could not set breakpoint",
        "Could not resume request",
        "Could not remove breakpoint A",
        "readv failed",
        "aio_write failed",
    ):
        assert any(k.startswith(kind) for k in seen), (kind, seen)


def _agree(tmp_path: Path, commands: list[str], rules: str = "") -> cg.Outcome:
    scenario = cg.Scenario(tmp_path.name, rules, commands, 1 << 20, ordered=False)
    theirs = cg.run_qemu(scenario, tmp_path / "qemu")
    for i, view in enumerate(VIEWS):
        ours = cg.run_ours(scenario, tmp_path / f"ours{i}", view)
        problem = cg.compare(scenario, theirs, ours, view)
        assert problem is None, problem
    return ours


def test_remove_break_reports_enoent_unless_a_pending_breakpoint_was_removed(
    tmp_path: Path,
) -> None:
    """qemu-io 7.2 resumes the requests suspended under the tag but still
    prints ``Could not remove breakpoint A`` (and exits 1) when no pending
    breakpoint had that tag; with one pending, it is quiet."""
    suspended_only = [
        "break read_aio A",
        "aio_read 0 512",
        "wait_break A",
        "remove_break A",
        "aio_flush",
    ]
    ours = _agree(tmp_path / "suspended", suspended_only)
    assert "Could not remove breakpoint A: No such file or directory" in ours.stdout
    assert ours.status == 1
    with_pending = [
        "break read_aio A",
        "break write_aio A",
        "aio_read 0 512",
        "wait_break A",
        "remove_break A",
        "aio_write 0 512",
        "aio_flush",
    ]
    ours = _agree(tmp_path / "pending", with_pending)
    assert "Could not" not in ours.stdout and ours.status == 0
    assert ours.stdout.count("blkdebug: Suspended request 'A'") == 1


def test_resume_takes_the_most_recently_suspended_request(tmp_path: Path) -> None:
    """Two requests under one tag: the first ``resume`` continues the later
    one, which then meets the ``once`` rule its own event armed."""
    rules = '[inject-error]\nevent = "write_aio"\nerrno = "28"\nonce = "on"\n'
    commands = [
        "break read_aio A",
        "break write_aio A",
        "aio_read 0 512",
        "wait_break A",
        "aio_write 4096 512",
        "resume A",
        "resume A",
        "aio_flush",
    ]
    ours = _agree(tmp_path, commands, rules)
    assert "aio_write failed: No space left on device" in ours.stdout
    assert "read 512/512 bytes at offset 0" in ours.stdout
