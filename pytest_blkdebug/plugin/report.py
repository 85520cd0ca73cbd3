"""The plugin's session: what it prints around the tests and what it keeps
for the whole run.

Kept apart from ``plugin/__init__.py`` (the hooks that pytest finds by name,
the factory and the fixtures) so that every question about the session's
output -- the report header, the sections of passed tests, the summary of
rules that never fired, and how the controller of a pytest-xdist run gets
the same numbers as a serial run -- is answered in one file. One
``Session`` per ``pytest.Config`` (nothing global), registered as a plugin
object in ``pytest_configure``.

Counters reach the session only as structured data: each test's teardown
report carries a ``Summary`` (plain dicts and numbers) in its ``blkdebug``
attribute, which pytest serialises with the report under xdist; nothing is
parsed back from strings.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from ..core.errors import RuleError, error_text
from ..core.events import EventRegistry
from ..core.rules import Rule
from ..harness import HitTally, RuleFileCache, derive_seed
from ..report import format_size
from .options import Settings, report_shows_passes

__all__ = ["REPORT_ATTR", "SECTION", "Session"]

SECTION = "blkdebug"
#: The report attribute holding a test's counters (``harness.Summary``) and
#: its markers that reached no disk (``"unapplied"``).
REPORT_ATTR = "blkdebug"


class Session:
    """Per-session state: options, rule-file cache, hit tally, header, summary."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.show_passes = settings.report == "all" or (
            settings.report == "failed" and report_shows_passes(config)
        )
        self.cache = RuleFileCache()
        self._dir_events: dict[Path, tuple[str, ...]] = {}
        self.tally = HitTally()
        self.passed_sections: list[tuple[str, str]] = []
        #: Set when the run is interrupted (Ctrl-C, pytest.exit): teardown then
        #: closes disks quietly instead of failing a test that never finished.
        self.interrupted = False

    def test_seed(self, nodeid: str) -> int:
        """A test's seed: derived from the session's, so a rerun with the
        same ``--blkdebug-seed`` gives every test the same seed."""
        return derive_seed(self.settings.seed, nodeid)

    def load_file(self, path: Path, registry: EventRegistry) -> list[Rule]:
        """Rules of one file, parsed once per session; a TOML file's ``events``
        are registered in ``registry``."""
        return self.cache.load(path, registry)

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

    def check_rule_files(self) -> None:
        """Read the option's rule files once at start-up: a broken one is one
        usage error, not an error in every test. An unknown event is left to
        the tests, since a deeper conftest's ``pytest_blkdebug_register_events``
        may register it for the tests that need it."""
        if self.settings.no_rules or not self.settings.rule_files:
            return
        names = [
            n
            for found in self.config.hook.pytest_blkdebug_register_events(config=self.config)
            for n in found or ()
        ]
        try:
            registry = EventRegistry((*self.settings.events, *names))
        except RuleError:
            return  # a bad hook name fails the tests that build disks, naming it
        for path, origin in self.settings.rule_files:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # each test's load shows them
                    self.cache.load(path, registry)
            except RuleError as exc:
                if _unknown_event(exc):
                    continue
                raise pytest.UsageError(f"{origin}: {error_text(exc)}") from None

    # -- hooks -------------------------------------------------------------------

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
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
        chosen = "given" if s.seed_given else "random"
        return [
            f"blkdebug: {rules}; report={s.report}, strict={'on' if s.strict else 'off'}, "
            f"image size={format_size(s.image_size)}, wait timeout={s.wait_timeout:g}s{events}",
            f"blkdebug: seed {s.seed} ({chosen}; rerun with --blkdebug-seed={s.seed}), "
            f"hold timeout={s.hold_timeout:g}s",
        ]

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """pytest-xdist (controller): every worker uses this session's seed."""
        node.workerinput["blkdebug_seed"] = self.settings.seed
        node.workerinput["blkdebug_seed_given"] = self.settings.seed_given

    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        self.interrupted = True

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" and report.passed and self.settings.report == "all":
            for name, text in report.sections:
                if name == SECTION:
                    self.passed_sections.append((report.nodeid, text))
        if report.when != "teardown":
            return
        data = getattr(report, REPORT_ATTR, None)
        if not isinstance(data, dict):
            return
        if "summary" in data:
            self.tally.add(report.nodeid, data["summary"])
        if data.get("unapplied"):
            self.tally.add_unapplied(report.nodeid, data["unapplied"])

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.passed_sections and "P" not in terminalreporter.reportchars:
            terminalreporter.write_sep("=", "blkdebug reports of passed tests")
            for nodeid, text in self.passed_sections:
                terminalreporter.write_sep("-", nodeid)
                terminalreporter.write_line(text)
        lines = self.tally.unfired_lines()
        if lines:
            terminalreporter.write_sep("=", "blkdebug: rules that never fired")
            for line in lines:
                terminalreporter.write_line(line)


def _unknown_event(exc: RuleError) -> bool:
    """Whether a rule file failed only on an event name (see ``check_rule_files``)."""
    attribute = getattr(exc, "attribute", None)
    if attribute is not None:
        return bool(attribute == "event")
    # QEMU's ini text for an unknown event is its generic "invalid parameter
    # value" (an iotype too): such a file is left to the tests, as before.
    return "unknown event" in str(exc) or "invalid parameter value" in str(exc)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
