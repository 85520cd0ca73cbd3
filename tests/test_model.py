"""Model test: whatever the rules, the image holds exactly the successful writes.

Hypothesis draws rules and a request sequence; a bytearray model applies only
the requests that succeeded. A failed request that touched the image, or a
successful one that did not, shows up as a difference in the bytes. A second
model predicts each outcome from an independent, naive reading of the spec
(walk the active list in order), so the indexed engine is checked against it.
"""

from __future__ import annotations

import errno

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pytest_blkdebug as bd

SIZE = 16 * 1024
EVENTS = [
    "none",
    "read_aio",
    "write_aio",
    "pwritev",
    "pwritev_zero",
    "pwritev_done",
    "flush_to_os",
    "flush_to_disk",
]

inject_rules = st.builds(
    bd.InjectError,
    event=st.sampled_from(EVENTS),
    errno=st.sampled_from([0, errno.EIO, errno.ENOSPC]),
    sector=st.one_of(st.just(-1), st.integers(0, SIZE // 512 - 1)),
    once=st.booleans(),
    iotype=st.one_of(st.none(), st.sampled_from(bd.IOTYPES)),
    state=st.integers(0, 3),
)
set_state_rules = st.builds(
    bd.SetState, event=st.sampled_from(EVENTS), new_state=st.integers(0, 3), state=st.integers(0, 3)
)
offsets = st.integers(0, SIZE + 1024)
lengths = st.integers(0, 4096)
requests = st.one_of(
    st.tuples(st.just("read"), offsets, lengths),
    st.tuples(st.just("write"), offsets, lengths, st.integers(1, 255)),
    st.tuples(st.just("write_zeroes"), offsets, lengths),
    st.tuples(st.just("discard"), offsets, lengths),
    st.tuples(
        st.just("flush"),
    ),
)


class NaiveBlkdebug:
    """The spec read literally: lists walked in order, no index, no caching."""

    def __init__(self, rules):
        self.rules = list(rules)
        self.state = 1
        self.active = []
        self.deleted = set()
        self.dirty_event = self.dirty_check = False
        self.event("none")

    def event(self, name):
        state = self.state
        new_state = None
        armed = []
        for i, rule in enumerate(self.rules):
            if i in self.deleted or rule.event != name or rule.state not in (0, state):
                continue
            if isinstance(rule, bd.SetState):
                new_state = rule.new_state if new_state is None else new_state
            else:
                armed.append(i)
        if armed:
            self.active = armed
        if new_state is not None:
            self.state = new_state

    def check(self, iotype, offset, length):
        for i in self.active:
            rule = self.rules[i]
            if iotype not in rule.iotype:
                continue
            if rule.sector >= 0 and not (
                length > 0 and offset <= rule.sector * 512 < offset + length
            ):
                continue
            if rule.errno == 0:
                return 0
            if rule.once:
                self.active.remove(i)
                self.deleted.add(i)
            return rule.errno
        return 0

    def apply(self, request):
        op = request[0]
        if op == "flush":
            self.event("flush_to_os")
            if self.dirty_event:
                self.event("flush_to_disk")
            err = self.check("flush", 0, 0) if self.dirty_check else 0
            if not err:
                self.dirty_event = self.dirty_check = False
            return err
        offset, length = request[1], request[2]
        if offset + length > SIZE:
            return errno.EIO
        if op in ("write_zeroes", "discard") and length == 0:
            if op == "discard":  # an empty write-zeroes leaves the disk clean
                self.dirty_event = True
            return 0
        before = {
            "read": ["read_aio"],
            "write": ["write_aio", "pwritev"],
            "write_zeroes": ["pwritev_zero"],
            "discard": [],
        }[op]
        for name in before:
            self.event(name)
        if op != "read":
            self.dirty_event = self.dirty_check = True
        err = self.check(op.replace("_", "-"), offset, length)
        if op in ("write", "write_zeroes"):
            self.event("pwritev_done")
        return err


def run(disk, request):
    op = request[0]
    try:
        if op == "flush":
            disk.flush()
        elif op == "write":
            disk.write(request[1], bytes([request[3]]) * request[2])
        else:
            getattr(disk, op)(request[1], request[2])
    except OSError as exc:
        return exc.errno
    return 0


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rules=st.lists(st.one_of(inject_rules, set_state_rules), max_size=8),
    script=st.lists(requests, max_size=25),
)
def test_image_holds_exactly_the_successful_writes(tmp_path, rules, script):
    disk = bd.Disk.create(tmp_path / "model.raw", SIZE, rules=rules)
    naive = NaiveBlkdebug(rules)
    model = bytearray(SIZE)
    try:
        for request in script:
            expected = naive.apply(request)
            got = run(disk, request)
            assert got == expected, (request, disk.trace)
            if got:
                continue
            op = request[0]
            if op == "write":
                model[request[1] : request[1] + request[2]] = bytes([request[3]]) * request[2]
            elif op in ("write_zeroes", "discard"):
                model[request[1] : request[1] + request[2]] = bytes(request[2])
        assert disk.state == naive.state
        with open(disk.path, "rb") as f:
            assert f.read() == bytes(model)
    finally:
        disk.close()
