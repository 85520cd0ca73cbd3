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
read, the reopened store's recovery. Fault rules are gated on state 2.

The sweeps (``blkdebug_sweep``) need no state gate: the setup is their
``prep``, done once on a disk without rules, and each point starts from a
copy of that image with only the sweep's rule.
"""

from __future__ import annotations

import pytest
from kvstore import KVStore, StoreFailed

from pytest_blkdebug import Disk, InjectedError
from pytest_blkdebug.plugin.sweep import Sweep, SweepOutcome

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
    model, _, error = workload(kv)
    assert isinstance(error, InjectedError) and error.rule == "crash"
    assert blkdebug_disk.rule("crash").hits == 1
    with pytest.raises(StoreFailed):
        kv.commit({"after": "failure"})
    assert KVStore.open(blkdebug_disk).snapshot() == model


def workload(store: KVStore) -> tuple[dict[str, str], dict[str, str | None], OSError | None]:
    """Run the workload and say what the caller was promised: the model of the
    transactions whose commit returned, the changes of the commit in flight
    when a write failed (empty if it was a checkpoint), and that error."""
    model = dict(store.snapshot())
    for kind, changes in WORKLOAD:
        try:
            if kind == "commit":
                assert changes is not None
                store.commit(changes)
                model = applied(model, changes)
            else:
                store.checkpoint()
        except OSError as exc:
            return model, dict(changes or {}), exc
    return model, {}, None


def applied(model: dict[str, str], changes: dict[str, str | None]) -> dict[str, str]:
    after = dict(model)
    for key, value in changes.items():
        if value is None:
            after.pop(key, None)
        else:
            after[key] = value
    return after


def prepared_store(disk: Disk) -> None:
    """The sweep's template image: the setup of the ``kv`` fixture."""
    KVStore.format(disk).commit(SETUP)


# Proves: the store's crash safety at every write and every flush of the
# workload (3 commits, 2 checkpoints): for N = 1, 2, ... a fresh copy of the
# set-up store, the Nth write or flush fails, the store reports the error and
# refuses further writes, and recovery returns exactly the committed
# transactions; when the failed request is the flush after a commit record the
# outcome is unknown, so the in-flight transaction is there entirely or not at
# all. 21 points; the sweep stops at N=22, which the workload never reaches.
def test_every_write_and_flush_of_the_workload(blkdebug_sweep: Sweep) -> None:
    def body(disk: Disk) -> tuple[dict[str, str], dict[str, str | None], OSError | None]:
        store = KVStore.open(disk)
        result = workload(store)
        if result[2] is not None:
            with pytest.raises(StoreFailed):
                store.commit({"after": "failure"})
        return result

    def check(disk: Disk, outcome: SweepOutcome) -> None:
        assert isinstance(outcome.value, tuple)
        model, in_flight, error = outcome.value
        assert (error is not None) == outcome.hit  # every fault reaches the caller
        recovered = KVStore.open(disk).snapshot()
        if outcome.request is not None and outcome.request.operation == "flush":
            assert recovered in (model, applied(model, in_flight))
        else:
            assert recovered == model

    result = blkdebug_sweep.run(body, prep=prepared_store, check=check, iotype=["write", "flush"])
    operations = [r.operation for r in result.requests.values()]
    assert (operations.count("write"), operations.count("flush")) == (14, 7)


# Proves: the store survives a power loss at every write and flush of the
# workload (mode="crash"): the Nth request and everything after it never reach
# the disk, and each crash image the point can leave (the volatile writes all
# lost, or all kept) recovers to the committed transactions, plus the one in
# flight entirely or not at all. 21 points, each checked on 1 or 2 images.
def test_power_loss_at_every_write_and_flush(blkdebug_sweep: Sweep) -> None:
    images = []

    def check(disk: Disk, outcome: SweepOutcome) -> None:
        assert isinstance(outcome.value, tuple)
        model, in_flight, _error = outcome.value
        assert KVStore.open(disk).snapshot() in (model, applied(model, in_flight))
        images.append(outcome.crash.id if outcome.crash is not None else "no crash")

    result = blkdebug_sweep.run(
        lambda disk: workload(KVStore.open(disk)),
        prep=prepared_store,
        check=check,
        iotype=["write", "flush"],
        mode="crash",
    )
    assert result.points == 21 and images[-1] == "no crash"
    assert len(images) > result.points + 1  # some points leave two different images


# Proves: recovery itself fails loudly, not wrongly: each read the reopening
# store makes (superblocks, snapshot, journal records) fails in turn; opening
# raises that I/O error instead of returning a partial table or calling the
# store corrupt, and a second open, without the fault, recovers everything.
def test_every_read_of_recovery(blkdebug_sweep: Sweep) -> None:
    def check(disk: Disk, outcome: SweepOutcome) -> None:
        assert outcome.hit == (outcome.injected is not None)
        assert outcome.hit == outcome.raised
        assert KVStore.open(disk).snapshot() == SETUP

    result = blkdebug_sweep.run(KVStore.open, prep=prepared_store, check=check, iotype="read")
    # the superblock slots (one read), the snapshot, each of the setup's 3
    # records (header, then payload), and the header that ends the journal
    assert result.points == 1 + 1 + 3 * 2 + 1


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
    model, _, error = workload(kv)
    assert error is not None and error.strerror == "No space left on device"
    assert model == SETUP
    assert KVStore.open(blkdebug_disk).snapshot() == SETUP
