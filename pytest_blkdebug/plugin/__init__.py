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
``options.py``; how a test's markers become its rules is in ``markers.py``.

Per-test work is kept small because a suite may build thousands of disks:
rule files are parsed once per session (cached by path, mtime and the events
they were read with), an image is one ``ftruncate``, and the report section
is only formatted when it will be shown.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pluggy
import pytest

from ..core.disk import Disk, create_image
from ..core.engine import Engine, Hold
from ..core.errors import RuleError
from ..core.events import EventRegistry, register_events
from ..core.rules import Rule
from ..core.sizes import parse_size
from ..report import format_report, format_size, report_properties
from . import crash, hookspecs, sweep
from .markers import MarkerError, add_marker_help, build_plan, check_disk_name, resolve_path
from .options import (
    EVENTS_HELP,
    REPORT_HELP,
    RULES_HELP,
    SIZE_HELP,
    STRICT_HELP,
    WAIT_TIMEOUT_HELP,
    Settings,
    add_options,
    report_shows_passes,
)

__all__ = [
    "DiskFactory",
    "Settings",
    "blkdebug_disk",
    "blkdebug_disk_factory",
    "blkdebug_nbd",
    # The help texts live in options.py; tests and docs read them from here too.
    "EVENTS_HELP",
    "REPORT_HELP",
    "RULES_HELP",
    "SIZE_HELP",
    "STRICT_HELP",
    "WAIT_TIMEOUT_HELP",
]

SECTION = "blkdebug"


# ---------------------------------------------------------------------------
# Options, markers and the session's plugin object (see options.py, markers.py)
# ---------------------------------------------------------------------------


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)
    pluginmanager.register(sweep, "blkdebug-sweep")
    pluginmanager.register(crash, "blkdebug-crash")


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


_SESSION = pytest.StashKey["_Session"]()
_FACTORY = pytest.StashKey["DiskFactory"]()


def pytest_configure(config: pytest.Config) -> None:
    add_marker_help(config)
    session = _Session(config, Settings.from_config(config))
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
# Session: rule file cache, report header, never-fired summary
# ---------------------------------------------------------------------------

_GENERATED_NAME = re.compile(r"^(?:inject-error|set-state)#\d+$")
_HITS_PROPERTY = re.compile(r"^blkdebug(?:\[(?P<disk>[^\]]*)\])?\.rule\.(?P<rule>.+)\.hits$")


class _Session:
    """Per-session state (one per ``pytest.Config``, nothing global)."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.show_passes = settings.report == "all" or (
            settings.report == "failed" and report_shows_passes(config)
        )
        self._files: dict[tuple[Any, ...], tuple[list[Rule], tuple[str, ...]]] = {}
        self._dir_events: dict[Path, tuple[str, ...]] = {}
        # (disk label, rule name[, nodeid]) -> [total hits, nodeids]
        self.rule_hits: dict[tuple[str, ...], list[Any]] = {}
        self.passed_sections: list[tuple[str, str]] = []

    def load_file(self, path: Path, registry: EventRegistry) -> list[Rule]:
        """Rules of one file, parsed once per session; a TOML file's ``events``
        are registered in ``registry``."""
        from ..rulefiles import load_rules

        st = path.stat()
        before = registry.custom
        key = (str(path), st.st_mtime_ns, st.st_size, before)
        cached = self._files.get(key)
        if cached is None:
            rules = load_rules(path, registry=registry)
            cached = self._files[key] = (rules, registry.custom[len(before) :])
        else:
            register_events(registry, cached[1])
        return cached[0]

    def hook_events(self, item: pytest.Item, ihook: Any) -> tuple[str, ...]:
        """``pytest_blkdebug_register_events`` results, once per directory."""
        folder = item.path.parent
        found = self._dir_events.get(folder)
        if found is None:
            found = tuple(
                n
                for names in ihook.pytest_blkdebug_register_events(config=self.config)
                for n in names or ()
            )
            self._dir_events[folder] = found
        return found

    def pytest_report_header(self, config: pytest.Config) -> str:
        s = self.settings
        root = config.rootpath
        if s.no_rules:
            rules = "NO RULES (--blkdebug-no-rules: disks are made, no rule is loaded)"
        elif s.rule_files:
            by_origin: dict[str, list[str]] = {}
            for path, origin in s.rule_files:
                by_origin.setdefault(origin, []).append(_relative(path, root))
            rules = "rules from " + "; ".join(f"{o}: {', '.join(p)}" for o, p in by_origin.items())
        else:
            rules = "rules from markers only"
        events = f", events={','.join(s.events)}" if s.events else ""
        return (
            f"blkdebug: {rules}; report={s.report}, strict={'on' if s.strict else 'off'}, "
            f"image size={format_size(s.image_size)}, wait timeout={s.wait_timeout:g}s{events}"
        )

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" and report.passed and self.settings.report == "all":
            for name, text in report.sections:
                if name == SECTION:
                    self.passed_sections.append((report.nodeid, text))
        if report.when != "teardown":
            return
        for prop, value in report.user_properties:
            match = _HITS_PROPERTY.match(str(prop))
            if match is None:
                continue
            rule = match["rule"]
            key: tuple[str, ...] = (match["disk"] or "", rule)
            if _GENERATED_NAME.match(rule):  # positions differ between tests
                key += (report.nodeid,)
            entry = self.rule_hits.setdefault(key, [0, []])
            entry[0] += int(str(value))  # report_properties records ints
            entry[1].append(report.nodeid)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.passed_sections and "P" not in terminalreporter.reportchars:
            terminalreporter.write_sep("=", "blkdebug reports of passed tests")
            for nodeid, text in self.passed_sections:
                terminalreporter.write_sep("-", nodeid)
                terminalreporter.write_line(text)
        # Sorted, so that a run under xdist prints what a serial run prints.
        unfired = sorted(
            (key, sorted(nodeids)) for key, (hits, nodeids) in self.rule_hits.items() if not hits
        )
        if not unfired:
            return
        terminalreporter.write_sep("=", "blkdebug: rules that never fired")
        for key, nodeids in unfired:
            disk = f"[{key[0]}] " if key[0] else ""
            if len(key) == 3:
                terminalreporter.write_line(f"{disk}{key[1]} in {key[2]}")
                continue
            shown = ", ".join(nodeids[:3]) + (", ..." if len(nodeids) > 3 else "")
            tests = "1 test" if len(nodeids) == 1 else f"{len(nodeids)} tests"
            terminalreporter.write_line(f"{disk}{key[1]}: 0 hits in {tests} ({shown})")


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------
# The factory and the fixtures
# ---------------------------------------------------------------------------


class DiskFactory:
    """``blkdebug_disk_factory``: call it for disks; each with the test's options.

    ``factory(name=None, *, size=None, rules=None, events=(), template=None,
    engine=None, share=False, wait_timeout=None) -> Disk``

    - ``rules=None``: the test's rules (option files and markers) on a new
      engine; a list of rules and/or rule file paths: those instead.
    - ``engine=some_disk.engine`` or ``share=True`` (the test's first disk's
      engine): the new disk shares state and rules with it; ``rules`` are
      then added to that engine.
    """

    def __init__(self, item: pytest.Item, session: _Session, tmp_path: Path) -> None:
        self.item = item
        self.session = session
        self.tmp_path = tmp_path
        self.ihook = item.ihook
        self.plan = build_plan(item, session, self.ihook)
        self.disks: list[Disk] = []
        # Each engine the test's disks use, in order made, with its report label.
        self._labels: dict[Engine, str] = {}
        self._holders: dict[Engine, list[Any]] = {}  # engine -> [first disk, queued hits]
        self.call_passed = False
        hit_hook = self.ihook.pytest_blkdebug_rule_hit
        self._hit_hook = hit_hook if hit_hook.get_hookimpls() else None

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
    ) -> Disk:
        if engine is not None and share:
            raise ValueError("blkdebug_disk_factory: pass engine= or share=True, not both")
        if share and self._labels:
            engine = next(iter(self._labels))
        if name is None:
            n = len(self.disks) + 1
            name = self.plan.name if n == 1 else f"{self.plan.name}{n}"
        check_disk_name(name)
        filename = name if "." in name else f"{name}.img"
        path = self.tmp_path / filename
        if any(d.path == str(path) for d in self.disks):
            raise ValueError(f"blkdebug_disk_factory: this test already has a disk named {name!r}")
        events = [events] if isinstance(events, str) else list(events)
        if engine is None:
            registry = EventRegistry((*self.plan.events, *events))
            chosen = self.plan.rules if rules is None else self._load(rules, registry)
            engine = Engine([] if self.session.settings.no_rules else chosen, registry=registry)
            self._adopt(engine, name)
        else:
            register_events(engine, events)
            if rules is not None and not self.session.settings.no_rules:
                engine.add_rules(self._load(rules, engine.registry))
            if engine not in self._labels:
                self._adopt(engine, name)
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
        disk = Disk(image, engine=engine, wait_timeout=wait_timeout or self.plan.wait_timeout)
        self.disks.append(disk)
        holder = self._holders.get(engine)
        if holder is not None and holder[0] is None:
            holder[0] = disk
            for rule_name in holder[1]:
                self._hit_hook(item=self.item, disk=disk, rule_name=rule_name)  # type: ignore[misc]
            holder[1].clear()
        return disk

    def _adopt(self, engine: Engine, name: str) -> None:
        """Give a new engine its report label and, if wanted, the hit hook."""
        self._labels[engine] = name if self._labels else ""
        if self._hit_hook is None:
            return
        # The open event may fire rules before the disk exists: queue those hits.
        holder: list[Any] = [None, []]
        hook, item = self._hit_hook, self.item

        def observer(what: str, detail: object) -> None:
            if what != "hit":
                return
            if holder[0] is None:
                holder[1].append(detail)
            else:
                hook(item=item, disk=holder[0], rule_name=detail)

        self._holders[engine] = holder
        engine.add_observer(observer)

    def _load(
        self, rules: Iterable[Rule | str | os.PathLike[str]], registry: EventRegistry
    ) -> list[Rule]:
        if isinstance(rules, (str, os.PathLike)):
            rules = [rules]
        result: list[Rule] = []
        for entry in rules:
            if isinstance(entry, (str, os.PathLike)):
                try:
                    path = resolve_path(entry, self.item, "blkdebug_disk_factory: rules")
                except MarkerError as exc:
                    raise FileNotFoundError(str(exc)) from None
                result += self.session.load_file(path, registry)
            else:
                result.append(entry)
        return result

    # -- reporting -------------------------------------------------------------

    def _groups(self) -> list[tuple[str, Engine, list[Disk]]]:
        return [
            (label, e, [d for d in self.disks if d.engine is e])
            for e, label in self._labels.items()
        ]

    def section(self) -> str:
        """The text of the test's ``blkdebug`` report section."""
        parts = []
        for _label, engine, disks in self._groups():
            if len(disks) == 1:  # format_report's own title: the disk and its size
                parts.append(format_report(disks[0]))
            elif disks:
                title = "disks sharing one engine: " + ", ".join(
                    f"{d.path} ({format_size(d.size)})" for d in disks
                )
                parts.append(format_report(engine, title=title))
        return "\n\n".join(parts)

    def properties(self) -> list[tuple[str, int]]:
        props: list[tuple[str, int]] = []
        for label, engine, _disks in self._groups():
            props += report_properties(engine, f"blkdebug[{label}]" if label else "blkdebug")
        return props

    # -- teardown ----------------------------------------------------------------

    def finish(self) -> None:
        """Close every disk; fail (at teardown) on frozen requests and, in
        strict mode, on rules that never fired."""
        released: list[tuple[str, Hold]] = []
        for disk in reversed(self.disks):
            released += disk.close()
        problems = _suspended_messages(released)
        if self.plan.strict and self.call_passed:
            unfired = [
                f"blkdebug strict: rule {s.name!r} ({s.rule}) never fired"
                + (f" on disk {label!r}" if label else "")
                for label, engine, _disks in self._groups()
                for s in engine.rules
                if s.hits == 0
            ]
            if unfired:
                problems += [
                    *unfired,
                    "(opt out for this test: @pytest.mark.blkdebug(strict=False))",
                ]
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


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
    try:
        factory = DiskFactory(item, request.config.stash[_SESSION], tmp_path)
    except MarkerError as exc:
        pytest.fail(f"blkdebug: {exc}", pytrace=False)
    item.stash[_FACTORY] = factory
    try:
        yield factory
    finally:
        factory.finish()


@pytest.fixture
def blkdebug_disk(blkdebug_disk_factory: DiskFactory) -> Disk:
    """A ``Disk`` on a fresh sparse image in ``tmp_path`` with the test's rules
    (option files, then module, class and function markers as written)."""
    try:
        return blkdebug_disk_factory()
    except (RuleError, ValueError, OSError) as exc:
        pytest.fail(f"blkdebug: cannot make the test's disk: {exc}", pytrace=False)


@pytest.fixture
def blkdebug_nbd(blkdebug_disk: Disk) -> Iterator[Any]:
    """The test's disk exported over NBD (``.uri``, ``.socket``, ``.url_for("qemu")``)."""
    with blkdebug_disk.serve_nbd() as export:
        yield export


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    factory = item.stash.get(_FACTORY, None)
    if factory is None or not factory.disks:
        yield
        return
    if call.when == "teardown":
        # JUnit XML reads properties from the teardown report, which copies
        # item.user_properties when it is made: add them before that.
        item.user_properties.extend(factory.properties())
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if call.when == "call":
        factory.call_passed = report.passed
    if factory.session.settings.report == "none":
        return
    if report.failed or (call.when == "call" and report.passed and factory.session.show_passes):
        report.sections.append((SECTION, factory.section()))
