"""One focused test per rule of docs/events.md: "How events arm rules and
requests are checked" and "What a `Disk` raises, per operation".

Each test is named after the rule it proves; the differential tests against
real qemu-io (test_conformance.py) prove the same rules wholesale, these say
which rule broke when one does.
"""

from __future__ import annotations

import errno

import pytest

import pytest_blkdebug as bd
from pytest_blkdebug import InjectError, SetState

EIO, ENOSPC, EACCES = errno.EIO, errno.ENOSPC, errno.EACCES
WATCHED = (
    "none",
    "read_aio",
    "write_aio",
    "pwritev",
    "pwritev_zero",
    "pwritev_done",
    "flush_to_os",
    "flush_to_disk",
)


def make_disk(tmp_path, rules=(), size=1 << 20, **kwargs):
    return bd.Disk.create(tmp_path / "img.raw", size, rules=list(rules), **kwargs)


def outcome(call, *args):
    """'ok' or the errno of the OSError the call raised."""
    try:
        call(*args)
    except OSError as exc:
        return exc.errno
    return "ok"


def sequence(tmp_path, operation, *args, prepare=None):
    """The events an operation raises and where its request is checked.

    Set-state rules that keep state 1 make every watched event visible in the
    trace; an errno-0 rule armed at open decides (and so traces) every request
    without failing it.
    """
    rules = [SetState(ev, new_state=1, name=f"watch-{ev}") for ev in WATCHED[1:]]
    rules.append(InjectError("none", errno=0, iotype=bd.IOTYPES, name="check"))
    disk = make_disk(tmp_path, rules)
    if prepare:
        prepare(disk)
    mark = len(disk.trace)
    getattr(disk, operation)(*args)
    steps = []
    for entry in disk.trace[mark:]:
        steps.append(entry.name if entry.kind == "event" else f"check:{entry.kind}")
    disk.close()
    return steps


# -- docs/events.md, when an event fires: definition order, state at its start


def test_engine_starts_in_state_1(tmp_path):
    assert make_disk(tmp_path).state == 1


def test_open_raises_none_once(tmp_path):
    disk = make_disk(
        tmp_path, [SetState("none", new_state=5, state=1), SetState("none", new_state=9, state=5)]
    )
    assert disk.state == 5  # one `none` event, not two
    disk.read(0, 512)
    assert disk.state == 5


def test_active_list_persists_across_unrelated_requests(tmp_path):
    # docs/events.md, qemu-io run 1: a read_aio rule without once fails the next write too.
    disk = make_disk(tmp_path, [InjectError("read_aio")])
    assert [
        outcome(disk.read, 0, 512),
        outcome(disk.read, 512, 512),
        outcome(disk.write, 0, b"x" * 512),
    ] == [EIO, EIO, EIO]


def test_event_processing_sees_state_at_event_start(tmp_path):
    # set-state 1->2 and an inject gated on 2, both on read_aio: ok, EIO, EIO.
    disk = make_disk(tmp_path, [SetState("read_aio", 2, state=1), InjectError("read_aio", state=2)])
    assert [outcome(disk.read, 0, 512) for _ in range(3)] == ["ok", EIO, EIO]


def test_ping_pong_pair_on_one_event(tmp_path):
    disk = make_disk(
        tmp_path,
        [
            SetState("read_aio", 2, state=1),
            SetState("read_aio", 1, state=2),
            InjectError("read_aio", state=2, once=True),
        ],
    )
    assert [outcome(disk.read, 0, 512) for _ in range(4)] == ["ok", EIO, "ok", "ok"]
    assert [c.new for c in disk.history] == [2, 1, 2, 1]


def test_first_defined_set_state_decides(tmp_path):
    rules = [
        SetState("read_aio", 5),
        SetState("read_aio", 7),
        InjectError("write_aio", state=5, errno=EIO),
        InjectError("write_aio", state=7, errno=ENOSPC),
    ]
    disk = make_disk(tmp_path, rules)
    disk.read(0, 512)
    assert disk.state == 5
    assert outcome(disk.write, 0, b"x") == EIO
    assert disk.rule("set-state#2").hits == 1  # it fired, but did not decide


def test_arming_replaces_active_list(tmp_path):
    # docs/events.md, qemu-io run 5: write_aio arming B replaces A armed by read_aio.
    disk = make_disk(
        tmp_path,
        [
            InjectError("read_aio", sector=10, name="A"),
            InjectError("write_aio", sector=100, errno=ENOSPC, name="B"),
        ],
    )
    disk.read(0, 512)
    assert outcome(disk.write_zeroes, 5120, 512) == EIO  # A active, no event from write -z
    disk.write(0, b"x" * 512)  # write_aio arms B, A is gone
    assert outcome(disk.write_zeroes, 5120, 512) == "ok"
    assert outcome(disk.write_zeroes, 51200, 512) == ENOSPC


def test_event_without_holding_inject_keeps_active_list(tmp_path):
    disk = make_disk(
        tmp_path, [InjectError("read_aio", errno=ENOSPC), InjectError("write_aio", state=3)]
    )  # never holds
    assert outcome(disk.read, 0, 512) == ENOSPC
    assert outcome(disk.write, 0, b"x") == ENOSPC  # write_aio armed nothing


def test_active_list_is_in_definition_order(tmp_path):
    disk = make_disk(
        tmp_path, [InjectError("read_aio", errno=e, once=True) for e in (EIO, ENOSPC, EACCES)]
    )
    results = [outcome(disk.read, 0, 512)] + [outcome(disk.write, 0, b"x") for _ in range(3)]
    assert results == [EIO, ENOSPC, EACCES, "ok"]


def test_armed_rule_keeps_firing_after_state_moves(tmp_path):
    disk = make_disk(tmp_path, [InjectError("write_aio", state=1), SetState("read_aio", 2)])
    assert outcome(disk.write, 0, b"x") == EIO
    assert outcome(disk.read, 0, 512) == EIO  # state is 2 now, the rule stays armed
    assert disk.state == 2
    assert outcome(disk.write, 0, b"x") == EIO  # re-arming in state 2 arms nothing: list kept


def test_state_zero_is_reachable_and_only_unconditional_rules_take_part(tmp_path):
    disk = make_disk(
        tmp_path,
        [
            SetState("read_aio", 0),
            InjectError("write_aio", state=1),
            InjectError("flush_to_os", errno=ENOSPC),
        ],
    )
    disk.read(0, 512)
    assert disk.state == 0
    assert outcome(disk.write, 0, b"x") == "ok"
    assert outcome(disk.flush) == ENOSPC  # flush_to_os arms the unconditional rule
    assert outcome(disk.write, 0, b"x") == ENOSPC


def test_set_state_and_inject_on_one_event_do_not_see_each_other(tmp_path):
    disk = make_disk(
        tmp_path,
        [InjectError("write_aio", state=2, name="late"), SetState("write_aio", 2, state=1)],
    )
    assert outcome(disk.write, 0, b"x") == "ok"  # armed on the *next* write_aio
    assert outcome(disk.write, 0, b"x") == EIO
    assert disk.rule("late").armed == 1


# -- docs/events.md, when a request is checked ---------------------------------


def test_first_matching_armed_rule_decides(tmp_path):
    disk = make_disk(
        tmp_path, [InjectError("read_aio", errno=EIO), InjectError("read_aio", errno=ENOSPC)]
    )
    assert outcome(disk.read, 0, 512) == EIO


def test_sector_rule_matches_request_containing_its_first_byte(tmp_path):
    disk = make_disk(tmp_path, [InjectError("none", sector=4)])
    results = {
        (o, n): outcome(disk.read, o, n)
        for o, n in [
            (0, 2048),
            (0, 2560),
            (2048, 512),
            (2047, 2),
            (2560, 512),
            (2049, 100),
            (2048, 1),
        ]
    }
    assert results == {
        (0, 2048): "ok",
        (0, 2560): EIO,
        (2048, 512): EIO,
        (2047, 2): EIO,
        (2560, 512): "ok",
        (2049, 100): "ok",
        (2048, 1): EIO,
    }
    assert outcome(disk.read, 2048, 0) == "ok"  # zero length contains no byte


def test_flush_is_checked_with_no_bytes_so_sector_rules_never_match(tmp_path):
    disk = make_disk(
        tmp_path,
        [
            InjectError("none", sector=0, iotype="flush", name="s"),
            InjectError("none", iotype="write", sector=100),
        ],
    )
    disk.write(0, b"x")
    assert outcome(disk.flush) == "ok"
    assert disk.rule("s").hits == 0


def test_errno_zero_lets_request_through_stays_armed_and_shadows(tmp_path):
    disk = make_disk(
        tmp_path,
        [
            InjectError("read_aio", errno=0, once=True, name="zero"),
            InjectError("read_aio", errno=EIO),
        ],
    )
    assert [outcome(disk.read, 0, 512) for _ in range(3)] == ["ok", "ok", "ok"]
    status = disk.rule("zero")
    assert (status.hits, status.consumed) == (3, False)


def test_once_rule_fails_one_request_and_is_deleted(tmp_path):
    disk = make_disk(tmp_path, [InjectError("read_aio", errno=ENOSPC, once=True, name="o")])
    assert [
        outcome(disk.read, 0, 512),
        outcome(disk.read, 0, 512),
        outcome(disk.write, 0, b"x"),
    ] == [ENOSPC, "ok", "ok"]
    status = disk.rule("o")
    assert (status.hits, status.armed, status.consumed) == (1, 1, True)


def test_rule_without_once_stays_armed(tmp_path):
    disk = make_disk(tmp_path, [InjectError("none", name="r")])
    assert [outcome(disk.read, 0, 1) for _ in range(3)] == [EIO] * 3
    assert disk.rule("r").hits == 3


def test_iotype_narrows_and_default_excludes_block_status(tmp_path):
    disk = make_disk(tmp_path, [InjectError("none", iotype="write")])
    assert [
        outcome(disk.read, 0, 512),
        outcome(disk.write, 0, b"x"),
        outcome(disk.write_zeroes, 0, 512),
        outcome(disk.discard, 0, 512),
    ] == ["ok", EIO, "ok", "ok"]
    default = make_disk(tmp_path / "..", [InjectError("none")])
    assert outcome(default.block_status, 0, 512) == "ok"
    assert outcome(default.discard, 0, 512) == EIO
    bs = bd.Disk.create(
        tmp_path / "bs.raw", 4096, rules=[InjectError("none", iotype="block-status")]
    )
    assert outcome(bs.block_status, 0, 512) == EIO


# -- docs/events.md, what a Disk raises, per operation ---------------------------


def test_read_sequence(tmp_path):
    assert sequence(tmp_path, "read", 0, 512) == ["read_aio", "check:read"]


def test_write_sequence(tmp_path):
    assert sequence(tmp_path, "write", 0, b"x" * 512) == [
        "write_aio",
        "pwritev",
        "check:write",
        "pwritev_done",
    ]


def test_write_zeroes_sequence(tmp_path):
    assert sequence(tmp_path, "write_zeroes", 0, 512) == [
        "pwritev_zero",
        "check:write-zeroes",
        "pwritev_done",
    ]


def test_discard_raises_no_event(tmp_path):
    assert sequence(tmp_path, "discard", 0, 512) == ["check:discard"]


def test_block_status_raises_no_event(tmp_path):
    assert sequence(tmp_path, "block_status", 0, 512) == ["check:block-status"]


def test_flush_of_a_clean_disk_raises_flush_to_os_only(tmp_path):
    assert sequence(tmp_path, "flush") == ["flush_to_os"]


def test_flush_of_a_dirty_disk_raises_flush_to_disk_and_is_checked(tmp_path):
    steps = sequence(tmp_path, "flush", prepare=lambda d: d.write(0, b"x"))
    assert steps == ["flush_to_os", "flush_to_disk", "check:flush"]


def test_event_raises_the_named_event_only(tmp_path):
    disk = make_disk(tmp_path, [SetState("journal_commit", 3)], events=["journal_commit"])
    disk.event("journal_commit")
    assert disk.state == 3
    assert [e.name for e in disk.trace if e.kind == "event"] == ["journal_commit"]  # traced once
    with pytest.raises(bd.RuleError, match="did you mean 'journal_commit'"):
        disk.event("journal_comit")


def test_pwritev_done_is_raised_when_the_write_fails(tmp_path):
    disk = make_disk(tmp_path, [InjectError("pwritev", once=True), SetState("pwritev_done", 4)])
    assert outcome(disk.write, 0, b"x") == EIO
    assert disk.state == 4


def test_failed_write_dirties_and_failed_flush_stays_dirty(tmp_path):
    disk = make_disk(
        tmp_path,
        [
            InjectError("write_aio", once=True, iotype="write"),
            InjectError("flush_to_disk", once=True, errno=ENOSPC, name="f"),
        ],
    )
    assert outcome(disk.write, 0, b"x") == EIO
    assert disk.dirty
    assert outcome(disk.flush) == ENOSPC
    assert disk.dirty
    assert outcome(disk.flush) == "ok"  # flush_to_disk again; the once rule is gone
    assert not disk.dirty
    assert sequence(tmp_path / "..", "flush") == ["flush_to_os"]


def test_discard_and_write_zeroes_dirty(tmp_path):
    for op in ("discard", "write_zeroes"):
        disk = bd.Disk.create(tmp_path / f"{op}.raw", 1 << 16)
        getattr(disk, op)(0, 512)
        assert disk.dirty, op


def test_request_past_the_end_fails_with_eio_before_any_event(tmp_path):
    disk = make_disk(tmp_path, [SetState("read_aio", 2), SetState("write_aio", 3)], size=4096)
    for call, args in [
        (disk.read, (4096, 1)),
        (disk.read, (4097, 0)),
        (disk.write, (4000, b"x" * 97)),
        (disk.write_zeroes, (5000, 0)),
        (disk.discard, (-1, 1)),
    ]:
        assert outcome(call, *args) == EIO
    assert disk.state == 1 and not disk.dirty
    assert outcome(disk.read, 4096, 0) == "ok"  # ends exactly at the end: in range


def test_zero_length_read_and_write_raise_events_and_are_checked(tmp_path):
    disk = make_disk(tmp_path, [InjectError("none")])
    assert outcome(disk.read, 0, 0) == EIO
    assert outcome(disk.write, 0, b"") == EIO


def test_zero_length_write_zeroes_and_discard_pass_unchecked(tmp_path):
    disk = make_disk(tmp_path, [InjectError("none", name="any")])
    assert outcome(disk.write_zeroes, 0, 0) == "ok"
    assert outcome(disk.discard, 512, 0) == "ok"
    assert disk.rule("any").hits == 0


def test_failed_request_never_changes_the_image(tmp_path):
    disk = make_disk(tmp_path, [InjectError("none", iotype=["write", "write-zeroes", "discard"])])
    with open(disk.path, "r+b") as f:
        f.write(b"\xaa" * 4096)
    before = open(disk.path, "rb").read()
    for call, args in [
        (disk.write, (0, b"x" * 4096)),
        (disk.write_zeroes, (0, 4096)),
        (disk.discard, (0, 4096)),
    ]:
        assert outcome(call, *args) == EIO
    assert open(disk.path, "rb").read() == before


def test_unknown_rule_event_is_an_error_never_ignored(tmp_path):
    with pytest.raises(bd.RuleError, match="unknown event 'wirte_aio' \\(did you mean 'write_aio'"):
        make_disk(tmp_path, [InjectError("wirte_aio")])


def test_disk_larger_than_its_file_reads_zeroes_and_grows_when_written(tmp_path):
    path = tmp_path / "growing.raw"
    path.write_bytes(b"abc")
    disk = bd.Disk(path, size=1 << 20)
    assert disk.read(0, 8) == b"abc" + bytes(5)
    disk.write(8192, b"z")
    assert path.stat().st_size == 8193


def test_created_image_is_sparse_and_of_the_asked_size(tmp_path):
    disk = bd.Disk.create(tmp_path / "big.raw", "1G")
    import os

    st = os.stat(disk.path)
    assert disk.size == st.st_size == 1 << 30
    assert st.st_blocks == 0
    assert disk.block_status(0, 1 << 30) == [bd.Extent(0, 1 << 30, False)]


def test_adding_rules_is_all_or_nothing(tmp_path):
    disk = make_disk(tmp_path, [InjectError("read_aio", name="kept")])
    with pytest.raises(bd.RuleError, match="unknown event 'nope'"):
        disk.engine.add_rules([SetState("read_aio", 3), InjectError("nope")])
    assert [r.name for r in disk.rules] == ["kept"]
    assert outcome(disk.read, 0, 1) == EIO and disk.state == 1  # the set-state never joined


def test_write_zeroes_without_unmap_keeps_the_range_allocated(tmp_path):
    disk = make_disk(tmp_path)
    disk.write(0, b"x" * 8192)
    disk.write_zeroes(0, 8192, unmap=False)
    assert disk.read(0, 8192) == bytes(8192)
    assert disk.block_status(0, 8192) == [bd.Extent(0, 8192, True)]
    disk.write_zeroes(0, 8192)
    assert disk.block_status(0, 8192) == [bd.Extent(0, 8192, False)]
