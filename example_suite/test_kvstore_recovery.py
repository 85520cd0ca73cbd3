"""The example key-value store (``kvstore.py``) crashes at each of its own events.

The store marks its I/O with events (``journal_append``, ``journal_commit``,
``checkpoint``), the way QEMU's qcow2 driver raises ``l2_update``. Rules on
those events fail exactly the write that follows. After each failure the test
reopens the store, as a restarted process would, and checks recovery against
a model: every transaction whose commit succeeded is there, the failed one
is not (or, where the outcome is genuinely unknown, it is all there or not at
all).

Setup: the ``kv`` fixture formats the store, commits one transaction and
reopens it; the module's TOML rule file moves the state to 2 on the first
read, the reopened store's recovery. Fault rules are gated on state 2 (or on
states counted from it).
"""

from __future__ import annotations

import pytest
from kvstore import KVStore, StoreFailed

from pytest_blkdebug import Disk, InjectedError

pytestmark = pytest.mark.blkdebug_rules("rules/kv-after-setup.toml")

SETUP = {"config/name": "sensor-7", "config/rate": "100"}

#: A workload: commits (dicts; None deletes a key) and checkpoints.
WORKLOAD: list[tuple[str, dict[str, str | None] | None]] = [
    ("commit", {"reading/1": "20.5", "reading/2": "20.7", "reading/3": "20.6"}),
    ("checkpoint", None),
    ("commit", {"reading/1": None, "config/rate": "50"}),
    ("commit", {"reading/4": "21.0", "reading/5": "21.2"}),
    ("checkpoint", None),
]


def occurrences(event: str) -> int:
    """How often the workload raises ``event``: one append per change, one
    commit record per commit, one checkpoint per checkpoint."""
    if event == "journal_append":
        return sum(len(changes or {}) for kind, changes in WORKLOAD if kind == "commit")
    kind = "commit" if event == "journal_commit" else "checkpoint"
    return sum(1 for k, _ in WORKLOAD if k == kind)


def run(store: KVStore, model: dict[str, str]) -> InjectedError | None:
    """Run the workload; ``model`` follows every step that succeeded.
    Returns the injected error that stopped it (None if nothing failed)."""
    for kind, changes in WORKLOAD:
        try:
            if kind == "commit":
                assert changes is not None
                store.commit(changes)
                for key, value in changes.items():
                    if value is None:
                        model.pop(key, None)
                    else:
                        model[key] = value
            else:
                store.checkpoint()
        except InjectedError as exc:
            return exc
    return None


# Proves, for each of the store's events: a failure there is reported to the
# caller, the store refuses further writes until it is reopened, and recovery
# yields exactly the transactions that had committed.
@pytest.mark.parametrize(
    "event",
    [
        pytest.param(e, marks=pytest.mark.inject_error(e, state=2, once=True, name="crash"))
        for e in ("journal_append", "journal_commit", "checkpoint")
    ],
)
def test_failure_at_each_event(kv: KVStore, blkdebug_disk: Disk, event: str) -> None:
    model = dict(SETUP)
    error = run(kv, model)
    assert error is not None and error.rule == "crash"
    assert blkdebug_disk.rule("crash").hits == 1
    with pytest.raises(StoreFailed):
        kv.commit({"after": "failure"})
    assert KVStore.open(blkdebug_disk).snapshot() == model


def nth(event: str, n: int) -> list[pytest.MarkDecorator]:
    """Markers that fail the n-th ``event`` after the setup: set-state rules
    count the occurrences (state 2 + k after k of them) and the inject-error
    rule waits for state n + 1. A set-state rule and an inject-error rule on
    the same event see the state as it was when the event started."""
    count = [
        pytest.mark.set_state(event, s + 1, state=s, name=f"seen-{s - 1}") for s in range(2, n + 1)
    ]
    return [*count, pytest.mark.inject_error(event, state=n + 1, once=True, name="crash")]


CRASH_POINTS = [
    pytest.param(event, n, marks=nth(event, n), id=f"{event}#{n}")
    for event in ("journal_append", "journal_commit", "checkpoint")
    for n in range(1, occurrences(event) + 1)
]


# Proves the store's crash safety at every point it announces: the workload is
# failed at each occurrence of each event in turn (12 crash points), and every
# time recovery returns exactly the committed transactions. The state
# history shows the counting: 1 -> 2 when the setup ends, then one step per
# occurrence until the failing one.
@pytest.mark.parametrize(("event", "n"), CRASH_POINTS)
def test_crash_at_every_point(kv: KVStore, blkdebug_disk: Disk, event: str, n: int) -> None:
    model = dict(SETUP)
    error = run(kv, model)
    assert error is not None, f"the workload never reached {event} #{n}"
    assert blkdebug_disk.rule("crash").hits == 1
    assert blkdebug_disk.state == n + 1
    assert KVStore.open(blkdebug_disk).snapshot() == model


# Proves why a failed flush leaves the outcome unknown: the commit record was
# written, only the flush after it failed. The caller got an error, yet
# recovery finds the transaction complete: code must not assume a failed
# commit left nothing behind (nor retry the flush and assume it is safe).
@pytest.mark.blkdebug_rules("rules/flaky-flush.toml")
def test_failed_flush_after_commit_record(kv: KVStore, blkdebug_disk: Disk) -> None:
    with pytest.raises(InjectedError) as err:
        kv.commit({"reading/1": "20.5"})
    assert err.value.rule == "flaky-flush" and err.value.operation == "flush"
    recovered = KVStore.open(blkdebug_disk).snapshot()
    assert recovered == {**SETUP, "reading/1": "20.5"}


# Proves that a checkpoint is atomic at its last step: the rule arms on
# "checkpoint" and fails only the write that covers sector 0, the superblock
# slot this checkpoint switches to (generation 2 lives in slot 0). The new
# snapshot was written, but recovery keeps generation 1 and replays the
# journal: nothing is lost.
@pytest.mark.inject_error("checkpoint", sector=0, iotype="write", state=2, once=True, name="sb")
def test_failed_superblock_switch(kv: KVStore, blkdebug_disk: Disk) -> None:
    kv.commit({"reading/1": "20.5"})
    with pytest.raises(InjectedError) as err:
        kv.checkpoint()
    assert err.value.offset == 0  # the superblock slot, not the snapshot before it
    recovered = KVStore.open(blkdebug_disk)
    assert recovered.generation == 1
    assert recovered.snapshot() == {**SETUP, "reading/1": "20.5"}


# Proves the store fails cleanly on a full disk (QEMU's rule file, shared with
# the SQLite and littlefs tests): the first write after the setup fails with
# ENOSPC and recovery returns the setup's data.
@pytest.mark.blkdebug_rules("rules/full-disk.ini")
def test_full_disk(kv: KVStore, blkdebug_disk: Disk) -> None:
    model = dict(SETUP)
    error = run(kv, model)
    assert error is not None and error.strerror == "No space left on device"
    assert model == SETUP
    assert KVStore.open(blkdebug_disk).snapshot() == SETUP
