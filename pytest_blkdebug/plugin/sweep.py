"""Fault sweeps: run a workload once per I/O and fail the Nth request, for every N.

SQLite's ioerr tests and Pebble's error tests do this by hand: for N = 1, 2,
... start from a fresh database, fail the Nth I/O, run the workload, check
the invariant, and stop at the first N the workload never reaches. The
``blkdebug_sweep`` fixture is that loop::

    def test_commit_survives_every_write_error(blkdebug_sweep):
        result = blkdebug_sweep.run(commit, prep=make_store, check=recovers,
                                    iotype="write")
        assert result.points == 7

For each N: a fresh disk (the ``prep`` image, copied), one inject-error rule
from the keyword arguments that fails the Nth matching request (or, with
``persist=True``, every one from the Nth on), ``body(disk)``, then
``check(disk, outcome)``. Each N is a subtest named ``N=<n>``; a failure names
N, the request that failed and what ``body`` raised. ``--blkdebug-sweep=N``
reruns one point; ``@pytest.mark.blkdebug_split(K)`` spreads the points of a
test over K items (every K-th N), for ``pytest -n``. With ``mode="crash"``
the power is lost at the Nth request instead, and ``check`` sees each crash
image that point can leave (``core/crash.py`` records, ``core/crashstates.py``
builds the images), as Pebble's crash tests do. docs/sweeps.md has the guide.

This module is the pytest half, a pytest plugin of its own (registered by
the package's plugin module): its option, the fixture that runs the points
(each a subtest, in its own directory) and its report hooks. The library
half, which needs no pytest (the values ``check`` and ``run`` return, a
point's rule and engine, the crash states it leaves, the failure message),
is ``core/sweep.py``; its public names are re-exported here.
"""

from __future__ import annotations

import errno as errno_module
import inspect
import os
import shutil
import warnings
from collections.abc import Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
import pytest

from ..core.crash import Recording
from ..core.crashstates import Crash
from ..core.disk import Disk
from ..core.engine import Engine
from ..core.errors import RuleError
from ..core.events import IOTYPES, EventRegistry, register_events
from ..core.rules import InjectError
from ..core.sizes import parse_size
from ..core.sweep import (
    CRASH_STATES,
    IMAGE,
    MODES,
    Body,
    Check,
    PointEngine,
    Prep,
    SweepOutcome,
    SweepRequest,
    SweepResult,
    copy_tree,
    crash_states,
    describe,
    empty,
    failure_message,
    make_rule,
)
from ..report import format_report
from .crash import FAILURES
from .split import split_part

if TYPE_CHECKING:
    from . import DiskFactory

__all__ = [
    "SWEEP_HELP",
    "Sweep",
    "SweepFailure",
    "SweepOutcome",
    "SweepRequest",
    "SweepResult",
    "blkdebug_sweep",
]

SWEEP_HELP = (
    "run only point N of every blkdebug_sweep (the N a failure names), e.g. "
    "--blkdebug-sweep=3 with the failing test's node id"
)
#: A sweep that has not ended after this many points is stopped as a failure.
MAX_POINTS = 100_000
SECTION = "blkdebug sweep"
#: The user property that carries a sweep's summary line to the terminal.
PROPERTY = "blkdebug.sweep"

_POINT = pytest.StashKey["_Point | None"]()


class SweepFailure(AssertionError):
    """A sweep point failed: the message names N, its request and the error."""


# ---------------------------------------------------------------------------
# The fixture
# ---------------------------------------------------------------------------


@dataclass
class _Point:
    """The point running now, for the report hook."""

    n: int
    disk: Disk
    rerun: str
    crash: Crash | None = None


@dataclass(frozen=True)
class _Spec:
    """One ``run()``: everything its points share."""

    base: Path
    template: Path
    registry: EventRegistry
    rule: dict[str, Any]
    persist: bool
    body: Body
    check: Check | None
    seed: int
    mode: str
    crash_states: str


class Sweep:
    """``blkdebug_sweep``: ``run(body, *, prep=None, check=None, **rule)``."""

    def __init__(
        self,
        item: pytest.Item,
        factory: DiskFactory,
        subtests: Any,
        tmp_path: Path,
        only: int | None,
        part: tuple[int, int] | None,
    ) -> None:
        self.item = item
        self.factory = factory
        self.subtests = subtests
        self.tmp_path = tmp_path
        self.only = only
        #: (i, K): this item runs N = i + 1, i + 1 + K, ...
        self.part = part
        self._runs = 0
        self._collected: list[Exception] = []
        self._spare: Path | None = None
        #: One summary line per ``run()`` (the terminal's "blkdebug sweeps" section).
        self.lines: list[str] = []

    def run(
        self,
        body: Body,
        *,
        prep: Prep | None = None,
        check: Check | None = None,
        mode: str = "error",
        crash_states: str = "edges",
        size: int | str | None = None,
        events: Iterable[str] = (),
        seed: int | None = None,
        **rule: Any,
    ) -> SweepResult:
        """Run ``body`` once per N with the Nth matching request failing.

        ``rule``: ``iotype`` (default QEMU's: read, write, write-zeroes,
        discard, flush), ``event`` (what arms the rule; default ``none``,
        raised when the disk opens, so every request counts), ``sector``,
        ``errno`` (default EIO), ``persist`` (default False: only the Nth
        request fails; True: every one from the Nth on), and other
        inject-error attributes. ``prep(disk)`` prepares the image once;
        each point gets a copy of it, and of every file ``prep`` left in the
        disk's directory (``Path(disk.path).parent``). ``check(disk, outcome)``
        runs after ``body`` with the rule disarmed, so it reads and writes
        without faults.

        ``mode="crash"``: the power fails at the Nth matching request instead
        (it and everything after it never reach the disk; the request fails
        so that ``body`` stops), and ``check`` runs on each crash image the
        point can leave (``crash_states="edges"``: every volatile write lost,
        and every one kept; ``"all"``: every state of the last flush epoch);
        ``outcome.crash`` is the ``Crash``. ``size``: the image's size, in
        bytes or as ``"64M"`` (default: the test's). ``events``: custom event names besides the
        test's. ``seed``: the points' engines' seed (default: the test's, or
        0). Under ``--blkdebug-no-rules`` no fault is injected: the sweep runs
        once.
        """
        for name, function in (("body", body), ("prep", prep), ("check", check)):
            if inspect.iscoroutinefunction(function):  # it would run nothing, and pass
                raise TypeError(
                    f"blkdebug_sweep: {name} is an async function; the sweep calls it "
                    f"and does not await it (run it inside: asyncio.run({name}(...)))"
                )
        if mode not in MODES:
            raise ValueError(
                f"blkdebug_sweep: mode must be one of {', '.join(MODES)}, not {mode!r}"
            )
        if crash_states not in CRASH_STATES:
            raise ValueError(
                f"blkdebug_sweep: crash_states must be one of {', '.join(CRASH_STATES)}, "
                f"not {crash_states!r}"
            )
        persist = rule.pop("persist", False)
        if not isinstance(persist, bool):
            raise RuleError(f"blkdebug_sweep: persist must be True or False, not {persist!r}")
        if persist and mode == "crash":
            raise ValueError("blkdebug_sweep: persist means nothing in crash mode (power is lost)")
        rule.setdefault("event", "none")
        rule.setdefault("errno", errno_module.EIO)
        for reserved in ("name", "after", "count", "once"):
            if reserved in rule:
                raise RuleError(
                    f"blkdebug_sweep: {reserved!r} is the sweep's to set (it picks the Nth request)"
                )
        registry = EventRegistry(self.factory.plan.events)
        register_events(registry, events)  # refuses a bare string (its letters)
        make_rule(rule, 1, persist)  # validate before any work
        registry.check(rule["event"])
        if seed is None:
            seed = self.factory.harness.seed or 0
        # bytes or "64M", checked before any work (-1 was a bare OSError, "1M" a TypeError)
        nbytes = parse_size(size) if size is not None else self._default_size()

        self._runs += 1
        base = self.tmp_path / (f"sweep{self._runs}" if self._runs > 1 else "sweep")
        template = base / "template"
        template.mkdir(parents=True)
        image = template / IMAGE
        made = self.item.ihook.pytest_blkdebug_make_image(
            item=self.item, path=str(image), size=nbytes, template=self.factory.plan.template
        )
        if made is None or Path(made) != image:
            raise RuntimeError(f"blkdebug_sweep: the image must be made at {image}, not {made}")
        if prep is not None:
            with Disk(image, engine=Engine(registry=EventRegistry(registry.custom))) as disk:
                prep(disk)

        spec = _Spec(base, template, registry, rule, persist, body, check, seed, mode, crash_states)
        result = SweepResult()
        scheduled = 0
        for n in self._schedule():
            scheduled += 1
            if n > MAX_POINTS:
                pytest.fail(
                    f"blkdebug_sweep: still reaching the fault at N={MAX_POINTS}; "
                    "does the body ever finish?",
                    pytrace=False,
                )
            if not self._point(n, spec, result):
                break
        if self._spare is not None:
            shutil.rmtree(self._spare, ignore_errors=True)
            self._spare = None
        if self.only is not None and scheduled and not result.points:
            # A warning, not a failure: a test may run several sweeps, and
            # N names a point of one of them. But a rerun that checked
            # nothing must not pass in silence.
            warnings.warn(
                pytest.PytestWarning(
                    f"blkdebug_sweep: --blkdebug-sweep={self.only} checked nothing: the "
                    f"workload ran to its end without reaching request {self.only} (this "
                    "sweep has fewer points; its summary line says how many)"
                ),
                stacklevel=2,
            )
        proto = make_rule(rule, 1, persist)
        what = ", ".join(t for t in IOTYPES if t in proto.iotype)
        if rule["event"] != "none":
            what += f" after {rule['event']}"
        if mode == "crash":
            what += "; power loss"
        self.lines.append(result.line(what))
        if self._collected:
            failures, self._collected = self._collected, []
            raise SweepFailure("\n".join(str(exc) for exc in failures)) from failures[0]
        return result

    # -- one point ------------------------------------------------------------

    def _point(self, n: int, spec: _Spec, result: SweepResult) -> bool:
        """Run point N; whether it reached the fault."""
        __tracebackhide__ = True
        where = spec.base / f"N={n}"
        if self._spare is not None:  # the last passing point's directory, emptied
            os.rename(self._spare, where)
            self._spare = None
            empty(where)
        else:
            where.mkdir()
        copy_tree(spec.template, where)
        no_rules = self.factory.session.settings.no_rules  # --blkdebug-no-rules: no fault
        engine = PointEngine(
            None if no_rules else make_rule(spec.rule, n, spec.persist),
            EventRegistry(spec.registry.custom),
            spec.seed,
        )
        failed = True  # until the checks pass
        reached = False
        with self._subtest(n):
            disk = Disk(where / IMAGE, engine=engine)
            self.item.stash[_POINT] = _Point(n, disk, self._rerun(n))
            recording = None
            if spec.mode == "crash":
                recording = engine.record(workdir=where / "crash").start()
                engine.recording = recording
            try:
                error: BaseException | None = None
                value: object = None
                try:
                    value = spec.body(disk)
                except Exception as exc:
                    error = exc
                finally:  # a BaseException (SystemExit) too: the point ran, N may follow
                    engine.disarmed = True
                    if recording is not None:
                        recording.stop()
                    reached = bool(engine.failed)
                    request = engine.failed[0] if reached else None
                    if request is not None:
                        result.requests[n] = request
                    result.runs.append(n)
                outcome = SweepOutcome(n, reached, request, list(engine.failed), error, value)
                if not reached and error is not None:
                    raise SweepFailure(
                        f"N={n} (not reached: no fault was injected): body raised {describe(error)}"
                    ) from error
                if recording is not None and reached:
                    self._check_crashes(
                        n, spec, where, recording, outcome, engine.sweep_rule, result, disk
                    )
                elif spec.check is not None:
                    self._check(n, spec.check, disk, outcome, engine.sweep_rule)
                failed = False
            finally:
                disk.close()
                if recording is not None:
                    recording.close()
        self.item.stash[_POINT] = None
        if failed:
            result.failures.append(n)  # its files stay, for a look
        else:
            self._spare = where  # reused by the next point: cheaper than rmdir + mkdir
        return reached

    def _check(
        self,
        n: int,
        check: Check,
        disk: Disk,
        outcome: SweepOutcome,
        rule: InjectError | None,
    ) -> None:
        __tracebackhide__ = True
        try:
            check(disk, outcome)
        except FAILURES as exc:  # pytest.fail() and sys.exit() too
            raise SweepFailure(failure_message(n, outcome, rule, exc)) from exc

    def _check_crashes(
        self,
        n: int,
        spec: _Spec,
        where: Path,
        recording: Recording,
        outcome: SweepOutcome,
        rule: InjectError | None,
        result: SweepResult,
        point_disk: Disk,
    ) -> None:
        """Check each crash image the power loss at point N can leave, every
        one even after a failure (a failure's report shows the first failing
        state, then the point's disk: the sweep's rule and what the body did)."""
        __tracebackhide__ = True
        states = crash_states(recording, spec.seed, spec.crash_states)
        outcome.crashes = len(states)
        result.images += len(states)
        failed: list[tuple[Crash, SweepFailure]] = []
        top = str(where) + os.sep
        recorded = [os.path.relpath(p, where) for p in recording.paths if p.startswith(top)]
        for crash in states:
            folder = where / crash.id
            folder.mkdir()
            # The files prep left, as it left them (those the body never
            # touched through the engine are in no recording), then the
            # recorded files as the crash left them (not copied first).
            copy_tree(spec.template, folder, {folder / name for name in recorded})
            crash.restore(folder, root=where)
            image = folder / IMAGE
            engine = Engine(registry=EventRegistry(spec.registry.custom), seed=spec.seed)
            with Disk(image, engine=engine) as disk:
                outcome.crash = crash
                if spec.check is not None:
                    try:
                        self._check(n, spec.check, disk, outcome, rule)
                    except SweepFailure as exc:
                        failed.append((crash, exc))  # its files stay, for a look
                        continue
            shutil.rmtree(folder, ignore_errors=True)
        if failed:
            crash, first = failed[0]
            self.item.stash[_POINT] = _Point(n, point_disk, self._rerun(n), crash)
            if len(failed) == 1:
                raise first
            more = "\n".join(str(exc) for _, exc in failed[1:])
            raise SweepFailure(f"{first}\nand {len(failed) - 1} more:\n{more}") from first

    def _rerun(self, n: int) -> str:
        """The command line that runs point N again, with the same seeds."""
        seed = self.factory.session.settings.seed
        again = f" --blkdebug-seed={seed}" if seed is not None else ""
        return f"pytest '{self.item.nodeid}' --blkdebug-sweep={n}{again}"

    @contextmanager
    def _subtest(self, n: int) -> Iterator[None]:
        __tracebackhide__ = True
        if self.subtests is not None:
            with self.subtests.test(msg=f"N={n}"):
                yield
            return
        try:  # pytest < 9 has no subtests: collect, and fail once at the end
            yield
        except Exception as exc:
            self._collected.append(exc)

    def _schedule(self) -> Iterator[int]:
        if self.only is not None:  # in a split test, only the item that has N runs it
            if self.part is None or (self.only - 1) % self.part[1] == self.part[0]:
                yield self.only
            return
        start, step = (self.part[0] + 1, self.part[1]) if self.part else (1, 1)
        n = start
        while True:
            yield n
            n += step

    def _default_size(self) -> int:
        plan = self.factory.plan
        if plan.size is not None:
            return plan.size
        if plan.template is not None:
            return os.path.getsize(plan.template)
        return int(self.factory.session.settings.image_size)


# ---------------------------------------------------------------------------
# pytest glue: the option, the fixture, the report section
# ---------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("blkdebug")
    group.addoption(
        "--blkdebug-sweep",
        dest="blkdebug_sweep",
        metavar="N",
        type=int,
        default=None,
        help=SWEEP_HELP,
    )


def pytest_configure(config: pytest.Config) -> None:
    only = config.getoption("blkdebug_sweep", None)
    if only is not None and only < 1:
        raise pytest.UsageError(f"--blkdebug-sweep: N must be 1 or more, not {only}")
    config.pluginmanager.register(_Summary(), "blkdebug-sweep-summary")


def _split_part(item: pytest.Item) -> tuple[int, int] | None:
    """(i, K) of a ``blkdebug_split(K)`` item, else None."""
    part = split_part(item)
    return None if part is None else (part[0], part[1])


@pytest.fixture
def blkdebug_sweep(
    request: pytest.FixtureRequest, blkdebug_disk_factory: DiskFactory, tmp_path: Path
) -> Iterator[Sweep]:
    """Run a workload once per I/O, failing the Nth request (``run(body, *,
    prep=None, check=None, **rule)``); each N is a subtest ``N=<n>``."""
    try:
        subtests = request.getfixturevalue("subtests")
    except pytest.FixtureLookupError:  # pytest < 9: failures are collected instead
        subtests = None
    item = request.node
    sweep = Sweep(
        item,
        blkdebug_disk_factory,
        subtests,
        tmp_path,
        request.config.getoption("blkdebug_sweep", None),
        _split_part(item),
    )
    item.stash[_POINT] = None
    yield sweep
    for line in sweep.lines:  # carried by the report, so it works under xdist too
        item.user_properties.append((PROPERTY, line))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    point = item.stash.get(_POINT, None)
    if point is None:
        return
    report = outcome.get_result()
    if report.failed:
        text = format_report(point.disk)
        if point.crash is not None:
            text = f"{point.crash.describe()}\n{text}"
        text += f"\nseed: {point.disk.engine.seed}\nrerun this point: {point.rerun}"
        report.sections.append((f"{SECTION} N={point.n}", text))


class _Summary:
    """The "blkdebug sweeps" section: each sweep's line, from the reports."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown":
            return
        for name, value in report.user_properties:
            if name == PROPERTY:
                self.lines.append((report.nodeid, str(value)))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.lines:
            return
        terminalreporter.section("blkdebug sweeps")
        for nodeid, line in self.lines:
            terminalreporter.write_line(f"{nodeid}: {line}")
