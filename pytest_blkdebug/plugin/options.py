"""The plugin's options: one help text per option, the flags and ini keys,
and ``Settings``, the session's values resolved and validated once.

Kept apart from ``plugin.py`` (the pytest hooks and fixtures) so that every
question about an option -- its help text, its default, which source wins
(command line > ini > default), what counts as a bad value and the
``pytest.UsageError`` it raises -- is answered in one file. Layout after
pytest-timeout: the command-line flag and the ini key share one help text.
``plugin.pytest_addoption`` calls ``add_options``; ``plugin.pytest_configure``
calls ``Settings.from_config``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..core.errors import RuleError
from ..core.events import EventRegistry
from ..core.limits import check_timeout
from ..core.sizes import parse_size
from ..harness import DEFAULT_HOLD_TIMEOUT, DEFAULT_WAIT_TIMEOUT

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_HOLD_TIMEOUT",
    "DEFAULT_WAIT_TIMEOUT",
    "EVENTS_HELP",
    "HOLD_TIMEOUT_HELP",
    "NO_RULES_HELP",
    "REPORT_HELP",
    "REPORT_MODES",
    "RULES_HELP",
    "SEED_HELP",
    "SIZE_HELP",
    "STRICT_HELP",
    "Settings",
    "WAIT_TIMEOUT_HELP",
    "add_options",
    "report_shows_passes",
]

REPORT_MODES = ("failed", "all", "none")
DEFAULT_IMAGE_SIZE = "64M"
# The timeouts' defaults are the core's (harness re-exports them): one value each.

# One help text per option, shared by the command-line flag and the ini key.
RULES_HELP = (
    "Rule files (QEMU blkdebug .ini/.cfg/.conf or .toml) applied to every disk, in order. "
    "ini: paths relative to the ini file; command line: relative to the current directory, "
    "repeatable, and APPENDED after the ini's files (use -o blkdebug_rules= to drop those)."
)
EVENTS_HELP = (
    "Custom event names every disk accepts besides QEMU's 48 (e.g. journal_commit). "
    "Command line: repeatable or comma-separated, added to the ini's names."
)
SIZE_HELP = f"Size of each test's image: bytes or a K/M/G/T suffix (default: {DEFAULT_IMAGE_SIZE})."
REPORT_HELP = (
    "When a test's report gets the 'blkdebug' section (state, history, rules, trace): "
    "'failed' (default; passing tests too with -rA), 'all', or 'none'."
)
STRICT_HELP = (
    "Fail a test at teardown when one of its rules never fired "
    "(opt out per test: @pytest.mark.blkdebug(strict=False)). Default: off."
)
WAIT_TIMEOUT_HELP = (
    f"Default timeout in seconds of disk.wait_break() (default: {DEFAULT_WAIT_TIMEOUT:g})."
)
HOLD_TIMEOUT_HELP = (
    "Longest time in seconds a request waits suspended at a breakpoint before it fails "
    f"with BreakpointTimeout (default: {DEFAULT_HOLD_TIMEOUT:g})."
)
SEED_HELP = (
    "Seed of the session's random choices (probability, delay_jitter, corrupt): each "
    "test's seed is derived from it and the test's id, so a run is reproduced by passing "
    "the seed its report header shows (default: a random seed per session)."
)
NO_RULES_HELP = (
    "Make the disks but load no rules at all (files, markers, factory rules): "
    "shows which tests depend on their injected faults."
)


def add_options(parser: pytest.Parser) -> None:
    """The body of ``pytest_addoption``: every flag next to its ini key."""
    group = parser.getgroup("blkdebug", "block error injection (pytest-blkdebug)")
    group.addoption(
        "--blkdebug-rules",
        action="append",
        dest="blkdebug_rules",
        metavar="FILE",
        default=None,
        help=RULES_HELP,
    )
    parser.addini("blkdebug_rules", RULES_HELP, type="paths", default=[])
    group.addoption(
        "--blkdebug-events",
        action="append",
        dest="blkdebug_events",
        metavar="NAME[,NAME]",
        default=None,
        help=EVENTS_HELP,
    )
    parser.addini("blkdebug_events", EVENTS_HELP, type="args", default=[])
    group.addoption(
        "--blkdebug-image-size",
        dest="blkdebug_image_size",
        metavar="SIZE",
        default=None,
        help=SIZE_HELP,
    )
    parser.addini("blkdebug_image_size", SIZE_HELP, default=None)
    group.addoption(
        "--blkdebug-report",
        dest="blkdebug_report",
        choices=REPORT_MODES,
        default=None,
        help=REPORT_HELP,
    )
    parser.addini("blkdebug_report", REPORT_HELP, default=None)
    group.addoption(
        "--blkdebug-strict",
        dest="blkdebug_strict",
        action="store_true",
        default=None,
        help=STRICT_HELP,
    )
    parser.addini("blkdebug_strict", STRICT_HELP, type="bool", default=False)
    group.addoption(
        "--blkdebug-wait-timeout",
        dest="blkdebug_wait_timeout",
        metavar="SECONDS",
        default=None,
        help=WAIT_TIMEOUT_HELP,
    )
    parser.addini("blkdebug_wait_timeout", WAIT_TIMEOUT_HELP, default=None)
    group.addoption(
        "--blkdebug-hold-timeout",
        dest="blkdebug_hold_timeout",
        metavar="SECONDS",
        default=None,
        help=HOLD_TIMEOUT_HELP,
    )
    parser.addini("blkdebug_hold_timeout", HOLD_TIMEOUT_HELP, default=None)
    group.addoption(
        "--blkdebug-seed",
        dest="blkdebug_seed",
        metavar="SEED",
        default=None,
        help=SEED_HELP,
    )
    parser.addini("blkdebug_seed", SEED_HELP, default=None)
    group.addoption(
        "--blkdebug-no-rules",
        dest="blkdebug_no_rules",
        action="store_true",
        default=False,
        help=NO_RULES_HELP,
    )


@dataclass(frozen=True)
class Settings:
    """The session's options, resolved: command line > ini > default."""

    rule_files: tuple[tuple[Path, str], ...]  # (absolute path, where it was configured)
    events: tuple[str, ...]
    image_size: int
    report: str
    strict: bool
    wait_timeout: float
    no_rules: bool
    hold_timeout: float = DEFAULT_HOLD_TIMEOUT
    #: The session's seed (given, or drawn once); each test's is derived from it.
    seed: int = 0
    seed_given: bool = False

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        """Read and validate every option; a bad value is a ``pytest.UsageError``."""
        opt = config.getoption
        ini_name = config.inipath.name if config.inipath else "-o"
        files = [(Path(p), f"blkdebug_rules ({ini_name})") for p in config.getini("blkdebug_rules")]
        base = config.invocation_params.dir
        files += [(base / p, "--blkdebug-rules") for p in opt("blkdebug_rules") or ()]
        for path, origin in files:
            if not path.exists():
                raise pytest.UsageError(f"{origin}: no such rule file: {path}")
            if not path.is_file():
                raise pytest.UsageError(f"{origin}: {path} is not a regular file")
        events = list(config.getini("blkdebug_events"))
        for value in opt("blkdebug_events") or ():
            events += [n for n in re.split(r"[,\s]+", value) if n]
        try:
            EventRegistry(events)
        except RuleError as exc:
            raise pytest.UsageError(f"blkdebug_events / --blkdebug-events: {exc}") from None
        size_text = _pick(
            opt("blkdebug_image_size"), config.getini("blkdebug_image_size"), DEFAULT_IMAGE_SIZE
        )
        try:
            size = parse_size(size_text)
        except ValueError as exc:
            raise pytest.UsageError(f"blkdebug_image_size / --blkdebug-image-size: {exc}") from None
        report = _pick(opt("blkdebug_report"), config.getini("blkdebug_report"), "failed")
        if report not in REPORT_MODES:
            raise pytest.UsageError(
                f"blkdebug_report: invalid value {report!r} (allowed: {', '.join(REPORT_MODES)})"
            )
        try:
            strict = bool(_pick(opt("blkdebug_strict"), config.getini("blkdebug_strict"), False))
        except (ValueError, pytest.UsageError) as exc:
            # pytest < 9.2 raises ValueError for a bad ini boolean, 9.2 a
            # UsageError; neither names the option, so say which one it is.
            raise pytest.UsageError(f"blkdebug_strict: {exc} (use true or false)") from None
        wait_timeout = _timeout(config, "wait_timeout", DEFAULT_WAIT_TIMEOUT)
        hold_timeout = _timeout(config, "hold_timeout", DEFAULT_HOLD_TIMEOUT)
        seed, seed_given = _seed(config)
        return cls(
            tuple(files),
            tuple(events),
            size,
            report,
            strict,
            wait_timeout,
            bool(opt("blkdebug_no_rules")),
            hold_timeout,
            seed,
            seed_given,
        )


def _timeout(config: pytest.Config, name: str, default: float) -> float:
    """A timeout option: a finite number of seconds > 0 (not nan, not inf)."""
    text = _pick(config.getoption(f"blkdebug_{name}"), config.getini(f"blkdebug_{name}"), default)
    names = f"blkdebug_{name} / --blkdebug-{name.replace('_', '-')}"
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:  # nan is not: the core's check refuses it, and inf
        raise pytest.UsageError(f"{names}: invalid value {text!r} (a number of seconds > 0)")
    try:
        return check_timeout(names, seconds)  # the core's: nan and inf are refused too
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def _seed(config: pytest.Config) -> tuple[int, bool]:
    """The session's seed and whether the user chose it. An xdist worker takes
    the controller's (``workerinput``), so every worker derives the same
    per-test seeds; otherwise command line > ini > one drawn at random."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "blkdebug_seed" in workerinput:
        return int(workerinput["blkdebug_seed"]), bool(workerinput["blkdebug_seed_given"])
    text = _pick(config.getoption("blkdebug_seed"), config.getini("blkdebug_seed"), None)
    if text is None:
        return random.SystemRandom().randrange(1 << 32), False
    try:
        text = str(text).strip()
        # Decimal as printed (leading zeros allowed: base 0 refuses "010"),
        # or 0x... / 0o... / 0b...
        seed = int(text, 10) if text.isdecimal() else int(text, 0)
        if seed < 0:
            raise ValueError
    except ValueError:
        raise pytest.UsageError(
            f"blkdebug_seed / --blkdebug-seed: invalid value {text!r} (an integer >= 0)"
        ) from None
    return seed, True


def _pick(cli: Any, ini: Any, default: Any) -> Any:
    """Command line > ini > default (an empty ini value counts as unset)."""
    if cli is not None:
        return cli
    if ini is not None and ini != "":
        return ini
    return default


def report_shows_passes(config: pytest.Config) -> bool:
    """Whether ``-r`` asks for passed tests' sections (``P``, or ``A``; ``N`` resets)."""
    shown = False
    for char in getattr(config.option, "reportchars", "") or "":
        if char in "AP":
            shown = True
        elif char in "aN":
            shown = False
    return shown
