"""The attributes beyond QEMU's: after, count, offset/length, delay, the lies,
and the bad-sector kind; what the engine decides for each (the request
path's effects are tested with the path)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_blkdebug import Disk, Engine, InjectError
from pytest_blkdebug.core.decision import Decision
from pytest_blkdebug.core.errors import InjectedError, RuleError
from pytest_blkdebug.core.events import FLUSH, READ, WRITE, WRITE_ZEROES, EventRegistry
from pytest_blkdebug.core.rules import BadSector, SetState, make_rule


def armed(*rules: InjectError, seed: int = 1) -> Engine:
    engine = Engine(list(rules), seed=seed)
    engine.fire("none")
    return engine


def outcomes(engine: Engine, n: int, iotype: int = WRITE, offset: int = 0) -> str:
    """'x' for a failed request, '.' for one let through."""
    return "".join(
        "x" if (d := engine.check(iotype, offset, 512)) is not None and d.errno else "."
        for _ in range(n)
    )


# -- after / count / once ------------------------------------------------------


def test_after_lets_the_first_n_pass() -> None:
    assert outcomes(armed(InjectError("none", after=3)), 6) == "...xxx"


def test_count_fails_k_times_then_is_consumed() -> None:
    engine = armed(InjectError("none", count=2, name="two"))
    assert outcomes(engine, 5) == "xx..."
    status = engine.rule("two")
    assert status.hits == 2 and status.consumed and not status.active


def test_after_and_count_fail_exactly_the_nth_request() -> None:
    """after=N-1, count=1: the sweep's "fail only the Nth matching request"."""
    for n in range(1, 6):
        expected = "." * (n - 1) + "x" + "." * (6 - n)
        assert outcomes(armed(InjectError("none", after=n - 1, count=1)), 6) == expected


def test_once_is_count_one() -> None:
    assert InjectError("none", count=1) == InjectError("none", once=True)
    assert InjectError("none", count=1).once and InjectError("none", once=True).count is None
    with pytest.raises(RuleError) as info:
        InjectError("none", once=True, count=3)
    assert info.value.attribute == "count"


def test_after_counts_only_matching_requests() -> None:
    engine = armed(InjectError("none", iotype="write", after=1, sector=8))
    assert engine.check(WRITE, 0, 512) is None  # elsewhere: not counted
    assert engine.check(READ, 4096, 512) is None  # other iotype: not counted
    assert engine.check(WRITE, 4096, 512) is None  # the first match: let through
    assert engine.check(WRITE, 4096, 512) is not None


def test_errno_zero_once_is_never_consumed_as_in_qemu() -> None:
    engine = armed(InjectError("none", errno=0, once=True, name="z"))
    assert outcomes(engine, 3) == "..."
    assert engine.rule("z").hits == 3 and not engine.rule("z").consumed


# -- offset / length -------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "length", "hit"),
    [
        (0, 4096, False),
        (4096, 1, False),  # ends right before the range
        (4096, 2, True),  # its last byte is the range's first
        (10000, 512, True),
        (20000, 4096, True),  # starts at the range's last byte
        (20001, 512, False),
        (0, 1 << 30, True),  # covers it
    ],
)
def test_byte_range_matches_overlapping_requests(offset: int, length: int, hit: bool) -> None:
    engine = armed(InjectError("none", offset=4097, length=15904))  # bytes 4097..20000
    assert (engine.check(READ, offset, length) is not None) == hit


def test_byte_range_needs_both_and_not_a_sector() -> None:
    for attrs, bad in (({"offset": 5}, "length"), ({"length": 5}, "offset")):
        with pytest.raises(RuleError) as info:
            InjectError("none", **attrs)  # type: ignore[arg-type]
        assert info.value.attribute == bad
    with pytest.raises(RuleError, match="not both"):
        InjectError("none", sector=1, offset=0, length=1)


def test_wide_ranges_and_many_narrow_ones() -> None:
    """Ranges over many 4 KiB buckets sit in the wide list; both kinds
    decide by definition order, as the active list does."""
    rules = [
        InjectError("none", offset=i * 8192 + 4096, length=4096, errno=i + 1) for i in range(200)
    ]
    rules.append(InjectError("none", offset=1 << 30, length=1 << 40, errno=999))
    rules.append(InjectError("none", offset=0, length=1 << 50, errno=1000, name="everything"))
    engine = armed(*rules)
    assert engine.matchers[READ] is not None
    assert engine.check(READ, 4096 + 8192 * 7, 512) == Decision("inject-error#8", 8)  # a narrow one
    assert engine.check(READ, (1 << 30) + 12345, 512).errno == 999  # type: ignore[union-attr]
    assert engine.check(READ, 0, 512).errno == 1000  # type: ignore[union-attr]
    assert engine.check(READ, 0, 0) is None  # empty requests match no place


def test_wide_range_matcher_says_no_cheaply() -> None:
    engine = armed(InjectError("none", offset=1 << 30, length=1 << 40))
    match = engine.matchers[READ]
    assert match is not None
    assert not match(0, 4096) and match(1 << 31, 4096)


# -- delay and the lies ------------------------------------------------------------


def test_delay_with_errno_zero_succeeds_after_waiting() -> None:
    engine = armed(InjectError("none", errno=0, delay=0.25, name="slow"))
    decision = engine.check(READ, 0, 512)
    assert decision is not None and decision.errno == 0 and decision.delay == 0.25
    assert not decision.fails


def test_delay_jitter_is_seeded() -> None:
    def delays(seed: int) -> list[float]:
        engine = armed(InjectError("none", errno=0, delay=0.01, delay_jitter=0.02), seed=seed)
        return [engine.check(READ, 0, 512).delay for _ in range(20)]  # type: ignore[union-attr]

    first = delays(3)
    assert first == delays(3) and first != delays(4)
    assert all(0.01 <= d <= 0.03 for d in first) and len(set(first)) > 1


@pytest.mark.parametrize("how", ["bitflip", "zero", "garbage"])
def test_corrupt_replaces_the_errno_and_defaults_to_reads(how: str) -> None:
    rule = InjectError("none", corrupt=how)
    assert rule.errno == 0 and rule.iotype == frozenset({"read"})
    decision = armed(rule).check(READ, 0, 512)
    assert decision is not None and decision.corrupt == how and not decision.fails


def test_corrupt_entropy_comes_from_the_rules_stream() -> None:
    def entropies(seed: int) -> list[int]:
        engine = armed(InjectError("none", corrupt="bitflip"), seed=seed)
        return [engine.check(READ, 0, 512).entropy for _ in range(5)]  # type: ignore[union-attr]

    assert entropies(1) == entropies(1) != entropies(2)


def test_lost_and_misdirect_are_write_lies() -> None:
    lost = InjectError("none", lost=True)
    assert lost.iotype == frozenset({"write"}) and lost.errno == 0
    engine = armed(lost, InjectError("none", misdirect=0, offset=8192, length=512))
    assert engine.check(WRITE, 0, 512) == Decision("inject-error#1", lost=True)
    assert engine.check(READ, 0, 512) is None
    moved = engine.check(WRITE_ZEROES, 8192, 512)
    assert moved is None  # misdirect defaults to iotype=write only
    with pytest.raises(RuleError) as info:
        InjectError("none", lost=True, iotype="read")
    assert info.value.attribute == "iotype"
    with pytest.raises(RuleError) as info:
        InjectError("none", lost=True, corrupt="zero")
    with pytest.raises(RuleError) as info:
        InjectError("none", lost=True, errno=errno.ENOSPC)
    assert info.value.attribute == "errno"


def test_misdirect_zero_is_an_offset_not_unset() -> None:
    rule = InjectError("none", misdirect=0)
    assert rule.lie == "misdirect" and rule.errno == 0


# -- errors carry the attribute ------------------------------------------------------


@pytest.mark.parametrize(
    ("attrs", "attribute"),
    [
        ({"after": -1}, "after"),
        ({"count": 0}, "count"),
        ({"probability": 1.5}, "probability"),
        ({"probability": float("nan")}, "probability"),
        ({"delay": -0.1}, "delay"),
        ({"delay": float("inf")}, "delay"),
        ({"corrupt": "flip"}, "corrupt"),
        ({"misdirect": -5}, "misdirect"),
        ({"errno": "EFOO"}, "errno"),
        ({"sector": True}, "sector"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_rule_errors_name_the_attribute(attrs: dict[str, object], attribute: str) -> None:
    with pytest.raises(RuleError) as info:
        make_rule("inject-error", {"event": "none", **attrs})
    assert info.value.attribute == attribute and info.value.kind == "inject-error"


def test_errno_as_a_number_in_a_string() -> None:
    """Issue 12 item 24: ini files spell errno "5"; markers and Python take it too."""
    assert InjectError("none", errno="5").errno == 5  # type: ignore[arg-type]
    assert make_rule("inject-error", {"event": "none", "errno": " 28 "}).errno == 28  # type: ignore[union-attr]


def test_set_state_needs_new_state() -> None:
    """Issue 12 item 20: no silent move to state 0."""
    with pytest.raises(TypeError):
        SetState("none")  # type: ignore[call-arg]
    with pytest.raises(RuleError) as info:
        make_rule("set-state", {"event": "none"})
    assert info.value.attribute == "new_state" and "missing new_state" in str(info.value)
    assert make_rule("set-state", {"event": "none", "new_state": 0}) == SetState("none", 0)


# -- bad sectors ------------------------------------------------------------------------


def test_bad_sector_reads_fail_until_written(tmp_path: Path) -> None:
    disk = Disk.create(tmp_path / "d.img", "1M", rules=[BadSector(8, sectors=2, name="dust")])
    assert disk.engine.watches_stores
    os.pwrite(disk.fileno(), b"A" * 1024, 4096)  # behind the Disk: the image has data
    with pytest.raises(InjectedError) as info:
        disk.read(4096, 512)
    assert info.value.errno == errno.EIO and info.value.rule == "dust"
    assert disk.read(0, 4096) == bytes(4096)  # neighbours read fine
    assert disk.engine.bad_sectors == [("dust", 8, 2)]
    disk.write(4096, b"B" * 512)  # heals sector 8 only
    assert os.pread(disk.fileno(), 512, 4096) == b"B" * 512
    assert disk.read(4096, 512) == b"B" * 512
    assert disk.engine.bad_sectors == [("dust", 9, 1)]
    with pytest.raises(InjectedError):
        disk.read(4096, 1024)  # still touches sector 9
    disk.write_zeroes(4608, 512)
    assert disk.read(4096, 1024) == b"B" * 512 + bytes(512)
    status = disk.rule("dust")
    assert disk.engine.bad_sectors == [] and status.consumed and status.hits == 2


def test_bad_sector_errno_and_shadowing_by_inject_rules() -> None:
    engine = Engine(
        [InjectError("none", iotype="read", offset=0, length=512, errno=errno.ENOSPC),
         BadSector(0, 4, errno=errno.ENXIO)],
        seed=1,
    )  # fmt: skip
    engine.fire("none")
    assert engine.check(READ, 0, 512).errno == errno.ENOSPC  # type: ignore[union-attr]
    assert engine.check(READ, 512, 512).errno == errno.ENXIO  # type: ignore[union-attr]
    assert engine.check(WRITE, 512, 512) is None  # writes never fail for bad sectors
    assert engine.check(FLUSH, 0, 0) is None
    engine.stored(0, 4096)
    assert engine.check(READ, 512, 512) is None and engine.matchers[READ] is not None


def test_bad_sector_validation() -> None:
    with pytest.raises(RuleError) as info:
        BadSector(0, errno=0)
    assert info.value.attribute == "errno"
    with pytest.raises(RuleError) as info:
        make_rule("bad-sector", {"sectors": 2})
    assert info.value.attribute == "sector"


def test_disk_seed_reaches_the_engine(tmp_path: Path) -> None:
    disk = Disk.create(tmp_path / "s.img", 4096, seed=77)
    assert disk.engine.seed == 77
    disk.close()


def test_rule_view_is_live(tmp_path: Path) -> None:
    """Issue 12 item 27: disk.rule(name) kept in a variable shows new counts."""
    disk = Disk.create(tmp_path / "v.img", 4096, rules=[InjectError("read_aio", name="r")])
    view = disk.rule("r")
    assert view.hits == 0
    with pytest.raises(InjectedError):
        disk.read(0, 512)
    assert view.hits == 1 and view.armed == 1
    frozen = view.snapshot()
    with pytest.raises(InjectedError):
        disk.read(0, 512)
    assert view.hits == 2 and frozen.hits == 1


def test_report_lists_sectors_still_bad(tmp_path: Path) -> None:
    from pytest_blkdebug.report import format_report

    disk = Disk.create(tmp_path / "r.img", "1M", rules=[BadSector(8, sectors=3, name="dust")])
    disk.write(4608, bytes(512))  # heals sector 9
    text = format_report(disk)
    assert "bad sectors still bad: 8 (dust), 10 (dust)" in text
    row = next(line.split() for line in text.splitlines() if line.split()[:1] == ["dust"])
    assert row == ["dust", "bad-sector", "none", "sector=8", "sectors=3", "errno=EIO"] + [
        "-",
        "0",
        "no",
        "yes",
    ]
    disk.close()


def test_a_delay_only_rule_does_not_hide_a_bad_sector(tmp_path: Path) -> None:
    """A rule that only delays a read (errno 0, no lie) let it pass a bad
    sector: the read succeeded. blkdebug delays the request, then the device
    below fails it; the bad sector's error comes after the delay."""
    rules = [
        BadSector(0, name="dust"),
        InjectError("read_aio", errno=0, delay=0.05, once=True, name="slow"),
    ]
    with Disk.create(tmp_path / "d.img", "1M", rules=rules) as disk:
        start = time.monotonic()
        with pytest.raises(InjectedError) as info:
            disk.read(0, 512)
        assert time.monotonic() - start >= 0.05
        assert info.value.rule == "dust" and info.value.errno == errno.EIO
        assert disk.rule("slow").hits == 1 and disk.rule("dust").hits == 1
        assert disk.engine.injected_delay == pytest.approx(0.05)


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: Disk.create(tmp / "e.img", 4096, events="journal_commit"),
        lambda tmp: Disk.create(tmp / "e.img", 4096, engine=Engine(), events="journal_commit"),
        lambda tmp: Engine(events="journal_commit"),
        lambda tmp: EventRegistry("journal_commit"),
    ],
)
def test_events_given_as_one_string_are_refused_not_split_into_letters(
    tmp_path: Path, make: Any
) -> None:
    """``events="journal_commit"`` registered twelve one-letter events, and
    the name itself then was an "unknown event"."""
    with pytest.raises(TypeError, match=r"events=\['journal_commit'\]"):
        make(tmp_path)


def test_adding_a_bad_sector_rule_does_not_unheal_written_sectors(tmp_path: Path) -> None:
    """add_rules rebuilt the bad-sector map from every rule's full range, so
    a sector healed by a write went bad again (its data read as EIO) when
    another bad-sector rule was added later."""
    with Disk.create(
        tmp_path / "d.img", "1M", rules=[BadSector(8, sectors=2, name="dust")]
    ) as disk:
        disk.write(4096, b"B" * 512)  # heals sector 8
        disk.engine.add_rules([BadSector(100, name="more"), BadSector(9, sectors=2, name="over")])
        assert disk.engine.bad_sectors == [("dust", 9, 1), ("over", 10, 1), ("more", 100, 1)]
        assert disk.read(4096, 512) == b"B" * 512
        with pytest.raises(InjectedError) as info:
            disk.read(4096 + 512, 512)
        assert info.value.rule == "dust"
        assert not disk.rule("dust").consumed and disk.rule("over").active
