"""Crash states in pytest: each state a subtest, a summary line, one state on demand.

::

    def test_store_survives_power_loss(blkdebug_disk, blkdebug_crash):
        store = Store.format(blkdebug_disk)
        with blkdebug_disk.record() as run:
            for i in range(3):
                store.commit({f"k{i}": "v"})
                run.mark(f"txn {i}")
        for crash in blkdebug_crash.states(run, torn=True):
            with blkdebug_crash.check(crash), crash.open() as image:
                recovered = Store.open(image)
                for label in crash.durable_marks:
                    ...

Each state runs as a subtest (pytest's ``subtests`` fixture) named by its
id; a failing one's report carries the state's description (id, point,
kept and lost writes, marks) and the option that reruns it alone,
``--blkdebug-crash=ID``. ``blkdebug_crash.run(run, check, **kwargs)`` is the
same loop with a callback. Under ``@pytest.mark.blkdebug_split(K)`` each of
the K items takes every K-th state (``plugin/split.py``). After the test a
summary line counts the states, the distinct images and the failures.

This module is a pytest plugin of its own, registered by the package's plugin module.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from ..core.crash import Recording
from ..core.crashstates import Crash, CrashList
from . import split
from .split import WHOLE, SplitPart, split_part

__all__ = ["CRASH_HELP", "CrashCheck", "blkdebug_crash"]

CRASH_HELP = (
    "run only the crash state(s) with this id (comma-separated), e.g. e3-s5: "
    "the id a failing state's report names"
)
PROPERTY = "blkdebug.crash"
#: What fails a state: an exception, ``pytest.fail()`` or ``sys.exit()``
#: (BaseExceptions the subtest reports as failures).
FAILURES = (Exception, pytest.fail.Exception, SystemExit)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    # The K-way split is shared with the sweep plugin: registered once, here.
    if not pluginmanager.is_registered(split):
        pluginmanager.register(split, "blkdebug-split")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("blkdebug")
    group.addoption(
        "--blkdebug-crash",
        dest="blkdebug_crash",
        metavar="ID",
        default=None,
        help=CRASH_HELP,
    )


@dataclass
class CrashSummary:
    """What one test's crash loops saw."""

    states: int = 0  # crash states listed, before deduplication
    distinct: int = 0  # distinct images among them
    checked: int = 0  # states this item ran
    failures: int = 0
    failed_ids: list[str] | None = None

    def line(self) -> str:
        text = (
            f"{self.states} crash states, {self.distinct} distinct images, "
            f"{self.checked} checked, {self.failures} failed"
        )
        if self.failed_ids:
            shown = ", ".join(self.failed_ids[:10])
            more = f", ... ({len(self.failed_ids) - 10} more)" if len(self.failed_ids) > 10 else ""
            text += f" ({shown}{more})"
        return text


class CrashCheck:
    """The ``blkdebug_crash`` fixture: select states, run each as a subtest."""

    def __init__(
        self,
        item: pytest.Item,
        subtests: Any,
        part: SplitPart,
        only: list[str] | None,
    ) -> None:
        self.item = item
        self.subtests = subtests
        self.part = part
        self.only = only
        self.summary = CrashSummary(failed_ids=[])
        self._collected: list[tuple[Crash, BaseException]] = []

    def states(self, run: Recording | CrashList, **kwargs: Any) -> list[Crash]:
        """The states this item checks: ``run.crashes(**kwargs)`` (or a list
        already made), this item's share under ``blkdebug_split``, only the
        ``--blkdebug-crash`` ids when given (skips the test if it has none of them)."""
        crashes = run.crashes(**kwargs) if isinstance(run, Recording) else run
        self.summary.states += crashes.states
        self.summary.distinct += len(crashes)
        if self.only is None:
            return self.part.take(crashes)
        wanted = set(self.only)
        found = [i for i, c in enumerate(crashes) if wanted & {c.id, *c.same_as}]
        chosen = [crashes[i] for i in found if self.part.selects(i)]
        if not chosen:
            if found:  # in the test, checked by another item of the split
                ids = ", ".join(self.only)
                pytest.skip(
                    f"crash state {ids} is checked by another split item, not {self.part.id}"
                )
            pytest.skip(f"no crash state {', '.join(self.only)} in this test")
        return chosen

    @contextmanager
    def check(self, crash: Crash) -> Iterator[None]:
        """Run the block as the subtest of ``crash``; a failure's report gets
        the state's description."""
        self.summary.checked += 1
        if self.subtests is None:  # pytest < 9: collect, fail once at the end
            try:
                yield
            except FAILURES as exc:
                self._failed(crash, exc)
                self._collected.append((crash, exc))
            return
        with self.subtests.test(msg=crash.id):
            try:
                yield
            except FAILURES as exc:
                self._failed(crash, exc)
                raise

    def run(
        self, run: Recording | CrashList, check: Callable[[Crash], object], **kwargs: Any
    ) -> CrashSummary:
        """``check(crash)`` for each of :meth:`states`, each a subtest."""
        if inspect.iscoroutinefunction(check):  # it would check nothing, and pass
            raise TypeError(
                "blkdebug_crash.run: check is an async function; it is called and "
                "not awaited (run it inside: asyncio.run(check(crash)))"
            )
        for crash in self.states(run, **kwargs):
            with self.check(crash):
                check(crash)
        # Without subtests, fail the test itself here, not its teardown
        # ("1 passed, 1 error" said the test passed).
        self._raise_collected()
        return self.summary

    def _failed(self, crash: Crash, exc: BaseException) -> None:
        self.summary.failures += 1
        assert self.summary.failed_ids is not None
        self.summary.failed_ids.append(crash.id)
        rerun = f"rerun it alone: pytest '{self.item.nodeid}' --blkdebug-crash={crash.id}"
        _add_note(exc, f"{crash.describe()}\n{rerun}")

    def finish(self) -> None:
        if self.summary.checked or self.summary.states:
            self.item.user_properties.append((PROPERTY, self.summary.line()))
        self._raise_collected()

    def _raise_collected(self) -> None:
        """Without subtests (pytest < 9): fail once for the states collected."""
        if self._collected:
            collected, self._collected = self._collected, []
            crash, exc = collected[0]
            more = len(collected) - 1
            raise AssertionError(
                f"{len(collected)} crash states failed; the first, {crash.id}"
                + (f" (and {more} more)" if more else "")
                + f": {exc}\n{crash.describe()}"
            ) from exc


def _add_note(exc: BaseException, text: str) -> None:
    """PEP 678 notes (pytest shows them under the error); by hand before 3.11."""
    add_note = getattr(exc, "add_note", None)
    if add_note is not None:
        add_note(text)
    else:  # pragma: no cover - Python 3.10
        setattr(exc, "__notes__", [*getattr(exc, "__notes__", []), text])  # noqa: B010


@pytest.fixture
def blkdebug_crash(request: pytest.FixtureRequest) -> Iterator[CrashCheck]:
    """Crash states as subtests: ``states(run, **crashes_args)``, ``check(crash)``,
    ``run(run, check_fn, **crashes_args)`` (see ``plugin/crash.py``)."""
    try:
        subtests = request.getfixturevalue("subtests")
    except pytest.FixtureLookupError:  # pytest < 9
        subtests = None
    option = request.config.getoption("blkdebug_crash", None)
    only = [s.strip() for s in option.split(",") if s.strip()] if option else None
    checker = CrashCheck(request.node, subtests, split_part(request.node) or WHOLE, only)
    yield checker
    checker.finish()


class _Summary:
    """Collects the summary lines (from reports: works under xdist)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown":
            return
        for name, value in report.user_properties:
            if name == PROPERTY:
                self.lines.append((report.nodeid, str(value)))

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.lines:
            return
        terminalreporter.section("blkdebug crash states")
        for nodeid, line in self.lines:
            terminalreporter.write_line(f"{nodeid}: {line}")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_Summary(), "blkdebug-crash-summary")
