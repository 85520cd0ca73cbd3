"""aio requests interleaved around a suspended one: blkdebug-io runs them as
qemu-io 7.2's event loop does.

Each script suspends one request at a breakpoint (``break EVENT A``, an aio
request that raises it, ``wait_break A``), issues two to four more aio
requests while it is held, sometimes a synchronous request between them,
then ``resume``/``remove_break`` and more requests. The rule files make the
order in which the requests' events arm rules visible: set-state rules
count ``pwritev_done`` events through the states, inject-error rules gated
on those states fail later requests, so a ``pwritev_done`` that fires in
the wrong command (or in the wrong order within one) changes which request
fails. qemu-io lets an aio request past its host I/O (completion,
``pwritev_done``) only in a command that polls its event loop; blkdebug-io
must do the same, or the outcomes differ.

Compared as the breakpoint conformance test compares: breakpoint and error
lines in order, all stdout lines as a multiset, the exit status and the
final image bytes. ``BLKDEBUG_CONFORMANCE_SEED`` picks other scripts.

What keeps qemu-io itself deterministic here (its host I/O runs in a thread
pool, so a poll sees only the requests whose I/O has finished): requests
that may be in flight together use disjoint 8 KiB slots; no synchronous
request fails while aio requests are in flight (inject-error rules name a
sector of an aio request, or fail only write-zeroes: a failing request ends
its poll as soon as it is rescheduled, and whether another request's I/O
has finished by then is a race); ``wait_break`` for a breakpoint on
``pwritev_done`` polls with only that write in the thread pool; no sync
flush while a write is in flight; nothing that would hang qemu-io. Each of
these was seen to matter in repeated qemu-io runs of the same script.

One race is left in on purpose, because the polls of synchronous requests
are what the test is about: a synchronous request's poll ends with its own
completion, and under load an older aio request's host I/O may not have
finished by then (qemu-io starts its worker threads in the first poll). So
a script that disagrees runs through qemu-io again (twice at most) and
agrees if a rerun does; a real difference disagrees every time, and the
test fails when more than ``MAX_RERUNS`` scripts needed a rerun.
"""

from __future__ import annotations

import collections
import random
from pathlib import Path

import conformance_gen as cg
import pytest
from qemu_helpers import requires_qemu_io

pytestmark = requires_qemu_io

DEFAULT_SEED = 9
SCENARIOS = 500
MIN_SCENARIOS = 450
RERUNS = 2
MAX_RERUNS = 10
VIEWS = ((), ("--sync-via", "aio"))
#: Events whose rules make the arming order visible.
ARMING_EVENTS = ("pwritev_done", "pwritev_done", "write_aio", "read_aio", "pwritev", "pwritev_zero")


def arming_rules(rng: random.Random, sectors: list[int]) -> str:
    """Set-state rules that step through the states on each ``pwritev_done``
    (or another event), and inject-error rules gated on those states: which
    request fails depends on how many events fired before it, in which order.

    An inject-error rule either names one of ``sectors`` (the aio requests')
    or fails only write-zeroes: never a synchronous read or write issued
    while aio requests are in flight (see the module's docstring).
    """
    groups: list[str] = []
    steps = rng.choice([2, 3, 3, 4])
    counter = rng.choice(["pwritev_done", "pwritev_done", "pwritev_done", "write_aio", "read_aio"])
    for state in range(1, steps + 1):
        if rng.random() < 0.85:
            groups.append(
                f'[set-state]\nevent = "{counter}"\nstate = "{state}"\n'
                f'new_state = "{state % steps + 1}"\n'
            )
    for _ in range(rng.randint(1, 4)):
        lines = ["[inject-error]", f'event = "{rng.choice(ARMING_EVENTS)}"']
        lines.append(f'state = "{rng.randint(1, steps)}"')
        lines.append(f'errno = "{rng.choice([5, 28, 28, 0, 13])}"')
        if rng.random() < 0.6:
            lines.append('once = "on"')
        if sectors and rng.random() < 0.75:
            lines.append(f'sector = "{rng.choice(sectors)}"')
            if rng.random() < 0.4:
                lines.append(f'iotype = "{rng.choice(["read", "write", "write-zeroes"])}"')
        else:
            lines.append('iotype = "write-zeroes"')
        if rng.random() < 0.3:
            lines.append('immediately = "on"')
        groups.append("\n".join(lines) + "\n")
    rng.shuffle(groups)
    return "\n".join(groups)


class AioScript(cg.BreakScript):
    """A breakpoint script that keeps several aio requests in flight."""

    def __init__(self, rng: random.Random, size: int) -> None:
        super().__init__(rng, size)
        self.aio_sectors: list[int] = []  # a sector that each aio request covers

    def aio(self, kind: str) -> None:
        super().aio(kind)
        _, offset, length, _ = self.trigger
        sector = -(-offset // 512)
        if sector * 512 < offset + length:
            self.aio_sectors.append(sector)

    def polling_sync(self) -> None:
        """A synchronous read or write on a fresh slot: it polls the loop."""
        offset, length = self._slot_range()
        if self.rng.random() < 0.5 or not self._safe("write"):
            self.add(f"read {offset} {length}")
        else:
            pattern = self.rng.randint(1, 255)
            self.patterns.append(pattern)
            self.add(f"write -P {pattern:#x} {offset} {length}")

    def middle_aio(self, count: int) -> None:
        """``count`` aio requests, with now and then a command that polls
        (a synchronous request) or one that does not (``length``)."""
        for _ in range(count):
            self.other_aio()
            what = self.rng.random()
            if what < 0.2:
                self.polling_sync()
            elif what < 0.3:
                self.add("length")


def interleaving_scenarios(count: int, base_seed: int) -> list[cg.Scenario]:
    rng = random.Random(base_seed)
    scenarios = []
    for i in range(count):
        size = 1 << 20
        b = AioScript(rng, size)
        for _ in range(rng.randint(0, 2)):
            b.sync()
        event = rng.choice(cg.BREAK_EVENTS)
        tag, other = rng.sample(cg.TAGS, 2)
        b.brk(event, tag)
        b.aio(cg._TRIGGER[event])
        b.add(f"wait_break {tag}")
        second = rng.random() < 0.3 and b._safe("write")
        if second:
            # A second request held after its host I/O: wait_break polls
            # while it is the only one in the thread pool (with more, where
            # wait_break stops would be a race in qemu-io).
            b.brk("pwritev_done", other)
            b.aio("write")
            b.add(f"wait_break {other}")
        b.middle_aio(rng.randint(2, 4) - second)
        if second:
            b.add(f"resume {other}")
        b.add(f"resume {tag}" if rng.random() < 0.8 else f"remove_break {tag}")
        b.pending.clear()
        b.middle_aio(rng.randint(0, 2))
        if rng.random() < 0.6:
            b.flush_aio()
            for _ in range(rng.randint(0, 2)):
                b.sync(anywhere=True)
        rules = arming_rules(rng, b.aio_sectors)
        scenarios.append(
            cg.Scenario(f"i{base_seed}-{i}", rules, b.commands, size, 65536, ordered=False)
        )
    return scenarios


def test_aio_requests_interleaved_with_a_suspended_one_agree_with_qemu_io(
    tmp_path: Path,
) -> None:
    scenarios = interleaving_scenarios(SCENARIOS, cg.seed(DEFAULT_SEED))
    results = cg.run_scenarios(scenarios, tmp_path, variants=VIEWS, reruns=RERUNS)
    assert results.ran >= MIN_SCENARIOS, cg.summary(results)
    assert not results.disagreements, cg.summary(results)
    assert len(results.rerun) <= MAX_RERUNS, results.rerun


def test_interleavings_arm_fail_and_suspend(tmp_path: Path) -> None:
    """The scripts really fail requests and step states (counted on
    blkdebug-io's side), so the agreement above shows something."""
    seen: collections.Counter[str] = collections.Counter()
    for scenario in interleaving_scenarios(100, cg.seed(DEFAULT_SEED)):
        for line in cg.strip_stats(cg.run_ours(scenario, tmp_path / scenario.ident).stdout):
            seen[line.split(":")[0].split(" ")[0]] += 1
    assert seen["readv"] and seen["aio_write"] and seen["blkdebug"] >= 200, seen


#: pwritev_done moves the state to 2; in state 2 a read_aio arms a rule that
#: fails reads. A later aio_read fails iff an aio_write completed before it.
COMPLETED = (
    '[set-state]\nevent = "pwritev_done"\nstate = "1"\nnew_state = "2"\n\n'
    '[inject-error]\nevent = "read_aio"\nstate = "2"\nerrno = "28"\niotype = "read"\n'
)
FAILED_READ = "readv failed: No space left on device"


def _agree(tmp_path: Path, commands: list[str], rules: str = COMPLETED) -> cg.Outcome:
    """blkdebug-io's outcome, after checking that qemu-io's agrees (qemu-io
    runs again, up to ``RERUNS`` times, if its thread pool was slow)."""
    scenario = cg.Scenario(tmp_path.name, rules, commands, 1 << 20, ordered=False)
    ours = [cg.run_ours(scenario, tmp_path / f"ours{i}", view) for i, view in enumerate(VIEWS)]
    for attempt in range(RERUNS + 1):
        theirs = cg.run_qemu(scenario, tmp_path / f"qemu{attempt}")
        problems = [
            problem
            for view, outcome in zip(VIEWS, ours, strict=True)
            if (problem := cg.compare(scenario, theirs, outcome, view))
        ]
        if not problems:
            break
    assert not problems, problems[0]
    return ours[0]


@pytest.mark.parametrize(
    ("command", "polls"),
    [
        ("read 65536 512", True),
        ("write 65536 512", True),
        ("write -z 65536 512", True),
        ("discard 65536 512", True),
        ("read 65536 0", True),  # empty, but it still reaches the host
        ("aio_flush", True),
        ("length", False),
        ("aio_read 65536 512", False),
        ("write -z 65536 0", False),  # empty: the block layer ends it at once
        ("discard 65536 0", False),
        ("read 2M 512", False),  # out of range: fails before any wait
        ("flush", False),  # clean: the aio_write has not completed, so nothing to flush
        ("break l2_load A", False),
        ("resume A", False),
        ("remove_break A", False),
        ("wait_break", False),  # bad argument count
    ],
)
def test_which_commands_poll_the_event_loop(tmp_path: Path, command: str, polls: bool) -> None:
    """An aio_write completes (its pwritev_done moves the state) only in a
    command that polls qemu-io's event loop; the aio_read after the command
    shows whether it did."""
    ours = _agree(tmp_path, ["aio_write 0 512", command, "aio_read 8192 512"])
    assert (FAILED_READ in ours.stdout) is polls


def test_resume_runs_the_request_to_its_host_io_without_polling(tmp_path: Path) -> None:
    """resume re-enters the request, which stops at its host I/O; the
    aio_write issued while it was held has not completed either."""
    ours = _agree(
        tmp_path,
        [
            "break read_aio A",
            "aio_read 0 512",
            "wait_break A",
            "aio_write 8192 512",
            "resume A",
            "aio_read 16384 512",
            "aio_flush",
            "aio_read 24576 512",
        ],
    )
    assert ours.stdout.count(FAILED_READ) == 1  # only the read after aio_flush


def test_wait_break_polls_only_while_the_tag_is_not_suspended(tmp_path: Path) -> None:
    already = _agree(
        tmp_path / "already",
        [
            "break read_aio A",
            "aio_read 0 512",
            "aio_write 8192 512",
            "wait_break A",
            "aio_read 16384 512",
            "resume A",
        ],
    )
    assert FAILED_READ not in already.stdout
    polled = _agree(
        tmp_path / "polled",
        [
            "break pwritev_done A",
            "aio_write 0 512",
            "wait_break A",
            "aio_read 16384 512",
            "resume A",
        ],
    )
    assert FAILED_READ in polled.stdout


def test_a_flush_with_work_to_do_polls(tmp_path: Path) -> None:
    """A dirty flush reaches its host I/O (fdatasync), so it polls; the
    clean one in test_which_commands_poll_the_event_loop does not."""
    commands = ["write 131072 512", "aio_write 0 512", "flush", "aio_read 8192 512"]
    assert FAILED_READ in _agree(tmp_path, commands).stdout


def test_a_request_failed_by_an_immediately_rule_does_not_poll(tmp_path: Path) -> None:
    """Failing at once, the synchronous read never waits, so the aio_write
    stays in flight: the state is still 1 when the aio_read starts."""
    rules = COMPLETED + (
        '\n[inject-error]\nevent = "read_aio"\nstate = "1"\nerrno = "13"\n'
        'iotype = "read"\nonce = "on"\nimmediately = "on"\n'
    )
    ours = _agree(tmp_path, ["aio_write 0 512", "read 65536 512", "aio_read 8192 512"], rules)
    assert "read failed: Permission denied" in ours.stdout
    assert FAILED_READ not in ours.stdout
