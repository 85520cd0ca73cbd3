"""The pytest plugin: disks as fixtures, rules as markers, state in every report.

A thin layer over the library (``Disk``, ``Engine``, rule files): it turns
options and markers into rules, makes a fresh image and engine for each test,
and puts what the engine saw into the test's report. Layout after
pytest-timeout: one help text per option shared by the command-line flag and
the ini key, precedence command line > ini > default, a marker per test, and
hook specs with default implementations (``hookspecs.py``).

This module is the pytest glue only, and the ``pytest11`` entry point: pytest
looks for hook implementations (``pytest_*``) in this module, so every one of
them is here, with the per-session state, ``DiskFactory`` and the fixtures.
What each option means and how it is resolved and validated is in
``options.py``; how a test's markers become its rules is in ``markers.py``;
the session's header, summary and xdist hand-over in ``report.py``; the
bookkeeping of a test's engines, labels, hits, seed and rule files is the
library's ``harness.Harness``, which the CLIs and adapters use as well.

Per-test work is kept small because a suite may build thousands of disks:
rule files are parsed once per session (cached by path, mtime and the events
they were read with), an image is one ``ftruncate``, and the report section
is only formatted when it will be shown.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pluggy
import pytest

from ..core.disk import Disk, create_image
from ..core.engine import Engine, Hold
from ..core.errors import BreakpointError, BreakpointTimeout, InjectedError, RuleError
from ..core.limits import check_timeout
from ..core.rules import Rule
from ..core.sizes import parse_size
from ..harness import Harness, summary_properties
from . import crash, hookspecs, sweep
from .markers import (
    BlkdebugMarkerWarning,
    MarkerError,
    add_marker_help,
    build_plan,
    check_disk_name,
    resolve_path,
    unapplied_markers,
)
from .options import (
    EVENTS_HELP,
    HOLD_TIMEOUT_HELP,
    REPORT_HELP,
    RULES_HELP,
    SEED_HELP,
    SIZE_HELP,
    STRICT_HELP,
    WAIT_TIMEOUT_HELP,
    Settings,
    add_options,
)
from .report import REPORT_ATTR, SECTION, Session

__all__ = [
    "DiskFactory",
    "Settings",
    "blkdebug_disk",
    "blkdebug_disk_factory",
    "blkdebug_nbd",
    # The help texts live in options.py; tests and docs read them from here too.
    "EVENTS_HELP",
    "HOLD_TIMEOUT_HELP",
    "REPORT_HELP",
    "RULES_HELP",
    "SEED_HELP",
    "SIZE_HELP",
    "STRICT_HELP",
    "WAIT_TIMEOUT_HELP",
]

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
#: Errors the package raises on purpose (injected, breakpoint, bad argument):
#: their tracebacks end at the user's line. Anything else may be a bug in the
#: package and keeps its frames.
_DELIBERATE = (InjectedError, BreakpointError, BreakpointTimeout, OSError, ValueError, TypeError)


# ---------------------------------------------------------------------------
# Options, markers and the session's plugin object (options.py, markers.py, report.py)
# ---------------------------------------------------------------------------


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)
    pluginmanager.register(sweep, "blkdebug-sweep")
    pluginmanager.register(crash, "blkdebug-crash")


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


_SESSION = pytest.StashKey[Session]()
_FACTORY = pytest.StashKey["DiskFactory"]()
_UNAPPLIED = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    add_marker_help(config)
    session = Session(config, Settings.from_config(config))
    session.check_rule_files()
    config.stash[_SESSION] = session
    config.pluginmanager.register(session, "blkdebug-session")


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION, None)
    if session is not None and config.pluginmanager.is_registered(session):
        config.pluginmanager.unregister(session)


@pytest.hookimpl(trylast=True)
def pytest_blkdebug_make_image(
    item: pytest.Item, path: str, size: int, template: str | None
) -> str:
    """The default image: a sparse file, or a cheap copy of the template."""
    return create_image(path, size, template)


# ---------------------------------------------------------------------------
# The factory and the fixtures
# ---------------------------------------------------------------------------


class DiskFactory:
    """``blkdebug_disk_factory``: call it for disks; each with the test's options.

    ``factory(name=None, *, size=None, rules=None, events=(), template=None,
    engine=None, share=False, wait_timeout=None, hold_timeout=None) -> Disk``

    - ``rules=None``: the test's rules (option files and markers) on a new
      engine; a list of rules and/or rule file paths: those instead.
    - ``engine=some_disk.engine`` or ``share=True`` (the test's first disk's
      engine): the new disk shares state and rules with it; ``rules`` are
      then added to that engine.

    The engines, their labels, hits and seed are the test's ``harness``.
    """

    def __init__(self, item: pytest.Item, session: Session, tmp_path: Path) -> None:
        self.item = item
        self.session = session
        self.tmp_path = tmp_path
        self.ihook = item.ihook
        self.plan = build_plan(item, session, self.ihook)
        hit_hook = self.ihook.pytest_blkdebug_rule_hit
        on_hit = (
            (lambda disk, rule_name: hit_hook(item=item, disk=disk, rule_name=rule_name))
            if hit_hook.get_hookimpls()
            else None
        )
        self.harness = Harness(
            events=self.plan.events,
            seed=session.test_seed(item.nodeid),
            cache=session.cache,
            hold_timeout=self.plan.hold_timeout,
            wait_timeout=self.plan.wait_timeout,
            on_hit=on_hit,
            resolve=self._resolve,
        )
        self.call_passed = False
        self.failure_section: str | None = None
        #: What ``finish`` found wrong; the test fails with it at teardown.
        self.problems: list[str] = []

    @property
    def disks(self) -> list[Disk]:
        return self.harness.disks

    def __call__(
        self,
        name: str | None = None,
        *,
        size: int | str | None = None,
        rules: Iterable[Rule | str | os.PathLike[str]] | None = None,
        events: Iterable[str] = (),
        template: str | os.PathLike[str] | None = None,
        engine: Engine | None = None,
        share: bool = False,
        wait_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> Disk:
        __tracebackhide__ = True
        if engine is not None and share:
            raise ValueError("blkdebug_disk_factory: pass engine= or share=True, not both")
        harness = self.harness
        if share and harness.labels:
            engine = next(iter(harness.labels))
        if name is None:
            n = len(self.disks) + 1
            name = self.plan.name if n == 1 else f"{self.plan.name}{n}"
        check_disk_name(name)
        filename = name if "." in name else f"{name}.img"
        path = self.tmp_path / filename
        if any(d.path == str(path) for d in self.disks):
            raise ValueError(f"blkdebug_disk_factory: this test already has a disk named {name!r}")
        if wait_timeout is not None:
            wait_timeout = check_timeout("blkdebug_disk_factory: wait_timeout", wait_timeout)
        if hold_timeout is not None:
            hold_timeout = check_timeout("blkdebug_disk_factory: hold_timeout", hold_timeout)
        no_rules = self.session.settings.no_rules
        if engine is None:
            chosen = self.plan.rules if rules is None else rules
            engine = harness.engine([] if no_rules else chosen, events=events, label=name)
        else:
            extra = [] if rules is None or no_rules else rules
            harness.engine(extra, events=events, engine=engine, label=name)
        tpl = (
            self.plan.template
            if template is None
            else str(resolve_path(template, self.item, "blkdebug_disk_factory: template"))
        )
        if size is not None:
            nbytes = parse_size(size)
        elif self.plan.size is not None:
            nbytes = self.plan.size
        elif tpl is not None:
            nbytes = os.path.getsize(tpl)
        else:
            nbytes = self.session.settings.image_size
        image = self.ihook.pytest_blkdebug_make_image(
            item=self.item, path=str(path), size=nbytes, template=tpl
        )
        if image is None:
            raise RuntimeError("pytest_blkdebug_make_image: every implementation returned None")
        return harness.open(
            image, engine=engine, label=name, wait_timeout=wait_timeout, hold_timeout=hold_timeout
        )

    def _resolve(self, entry: str | os.PathLike[str]) -> Path:
        try:
            return resolve_path(entry, self.item, "blkdebug_disk_factory: rules")
        except MarkerError as exc:
            message = str(exc)
        raise FileNotFoundError(message)

    # -- reporting -------------------------------------------------------------

    def section(self, *, failed: bool = False) -> str:
        """The text of the test's ``blkdebug`` report section (a failure's
        names the seed, to reproduce it)."""
        if not failed:
            return self.harness.section()
        session = self.session.settings.seed
        return self.harness.section(
            seed=f" (from the session's {session}: --blkdebug-seed={session})"
        )

    def properties(self) -> list[tuple[str, str | int]]:
        return summary_properties(self.harness.summary())

    # -- teardown ----------------------------------------------------------------

    def finish(self) -> None:
        """Close every disk and note the test's problems: frozen requests and,
        in strict mode, rules that never fired. ``pytest_runtest_teardown``
        fails the test with them once pytest's own teardown is done. After
        an interrupt (Ctrl-C) just close: the test did not finish."""
        released = self.harness.close()
        if self.session.interrupted:
            return
        problems = _suspended_messages(released)
        if self.plan.strict and self.call_passed:
            unfired = [
                f"blkdebug strict: rule {s.name!r} ({s.rule}) never fired"
                + (f" on disk {label!r}" if label else "")
                for label, engine, _disks in self.harness.groups()
                for s in engine.rules
                if s.hits == 0
            ]
            if unfired:
                problems += [
                    *unfired,
                    "(opt out for this test: @pytest.mark.blkdebug(strict=False))",
                ]
        self.problems = problems


def _suspended_messages(released: Sequence[tuple[str, Hold]]) -> list[str]:
    """One line per request a closing disk found frozen at a breakpoint."""
    holds: dict[int, Hold] = {}
    for _tag, hold in released:
        holds.setdefault(id(hold), hold)
    lines = []
    for hold in holds.values():
        tags = ", ".join(repr(t) for t in dict.fromkeys(hold.tags))
        noun = "breakpoint" if len(set(hold.tags)) == 1 else "breakpoints"
        lines.append(
            f"a request was left suspended at {noun} {tags} "
            f"({hold.operation} at {hold.event}); it was resumed at teardown"
        )
    return lines


@pytest.fixture
def blkdebug_disk_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DiskFactory]:
    """Make disks (``factory(name=..., size=..., rules=..., engine=..., share=...)``),
    each with the test's options; all are closed at teardown."""
    item = request.node
    item.stash[_UNAPPLIED] = []  # the markers reach this test's disks
    try:
        factory = DiskFactory(item, request.config.stash[_SESSION], tmp_path)
    except MarkerError as exc:
        problem = str(exc)  # failed outside the except block: reported once, unchained
    else:
        item.stash[_FACTORY] = factory
        try:
            yield factory
        finally:
            factory.finish()
        return
    pytest.fail(f"blkdebug: {problem}", pytrace=False)


@pytest.fixture
def blkdebug_disk(blkdebug_disk_factory: DiskFactory) -> Disk:
    """A ``Disk`` on a fresh sparse image in ``tmp_path`` with the test's rules
    (option files, then module, class and function markers as written)."""
    try:
        return blkdebug_disk_factory()
    except (RuleError, ValueError, OSError) as exc:
        problem = str(exc)  # failed outside the except block: reported once, unchained
    pytest.fail(f"blkdebug: cannot make the test's disk: {problem}", pytrace=False)


@pytest.fixture
def blkdebug_nbd(blkdebug_disk: Disk) -> Iterator[Any]:
    """The test's disk exported over NBD (``.uri``, ``.socket``, ``.url_for("qemu")``)."""
    with blkdebug_disk.serve_nbd() as export:
        yield export


# ---------------------------------------------------------------------------
# Reports: the section, the structured counters, JUnit, short tracebacks
# ---------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    """Fail the test with what its disks' teardown found. Raised here, after
    pytest's own teardown, not from the fixture: pytest then has collected
    what a thread resumed by that teardown raised, and reports it with this
    test (a failing fixture would cut that short, leaving it to the next)."""
    yield
    factory = item.stash.get(_FACTORY, None)
    if factory is not None:
        if factory.problems:
            pytest.fail("\n".join(factory.problems), pytrace=False)
    elif _UNAPPLIED not in item.stash:
        _check_unapplied(item)


def _check_unapplied(item: pytest.Item) -> None:
    """Markers on a test that made no disk did nothing: warn (strict: fail)."""
    session = item.config.stash[_SESSION]
    markers, strict = unapplied_markers(item, session.settings.strict)
    item.stash[_UNAPPLIED] = markers
    if not markers or session.interrupted:
        return
    message = (
        f"blkdebug: {', '.join(markers)} had no effect: the test uses no blkdebug disk "
        "(blkdebug_disk, blkdebug_disk_factory or blkdebug_nbd)"
    )
    if strict:
        pytest.fail(message + " (strict mode)", pytrace=False)
    # Attributed to the test's own line, where the markers are.
    lineno = (item.location[1] or 0) + 1
    warnings.warn_explicit(BlkdebugMarkerWarning(message), None, str(item.path), lineno)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    if call.excinfo is not None and not item.config.option.fulltrace:
        _hide_package_frames(call.excinfo)
    factory = item.stash.get(_FACTORY, None)
    if factory is None or not factory.disks:
        outcome = yield
        if call.when == "teardown":
            unapplied = [
                m
                for m in item.stash.get(_UNAPPLIED, [])
                if not m.startswith("@pytest.mark.blkdebug(")
            ]
            if unapplied:
                setattr(outcome.get_result(), REPORT_ATTR, {"unapplied": unapplied})
        return
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if call.when == "call":
        factory.call_passed = report.passed
    settings = factory.session.settings
    if settings.report != "none" and (
        report.failed or (call.when == "call" and report.passed and factory.session.show_passes)
    ):
        text = factory.section(failed=report.failed)
        report.sections.append((SECTION, text))
        if report.failed and factory.failure_section is None:
            factory.failure_section = text
    if call.when == "teardown":
        # The counters travel as data (xdist serialises report attributes);
        # JUnit XML reads the teardown report's user_properties.
        summary = factory.harness.summary()
        setattr(report, REPORT_ATTR, {"summary": summary})
        report.user_properties.extend(summary_properties(summary))
        if factory.failure_section is not None:
            report.user_properties.append(("blkdebug.report", factory.failure_section))


def _hide_package_frames(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """An error the package raises on purpose ends at the user's line.

    pytest hides a frame whose module defines ``__tracebackhide__``; a
    callable one decides per exception. Each package module on the failing
    traceback gets ``_deliberate`` as its ``__tracebackhide__`` (set once,
    here, so the core's modules need not know about pytest);
    ``--full-trace`` shows every frame as always.
    """
    if not isinstance(excinfo.value, _DELIBERATE):
        return
    for entry in excinfo.traceback:
        if _in_package(entry.path):
            entry.frame.f_globals.setdefault("__tracebackhide__", _deliberate)


def _deliberate(excinfo: pytest.ExceptionInfo[BaseException] | None) -> bool:
    return excinfo is not None and isinstance(excinfo.value, _DELIBERATE)


def _in_package(path: object) -> bool:
    return isinstance(path, Path) and path.is_relative_to(_PACKAGE_DIR)
