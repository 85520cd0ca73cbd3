"""pytest-blkdebug: QEMU's blkdebug error injection for Python test suites.

Usable without pytest: build rules, open a ``Disk``, drive your storage code
against it and read the engine's state and counters. The pytest plugin
(``pytest_blkdebug.plugin``) is a thin layer of fixtures and markers on top.
"""

from __future__ import annotations

from .core.crash import Recording
from .core.crashstates import Crash, CrashList
from .core.decision import Decision
from .core.disk import Disk, DiskFile, Extent
from .core.engine import Engine, RuleStatus, RuleView, StateChange, TraceEntry
from .core.errors import (
    BreakpointError,
    BreakpointTimeout,
    InjectedError,
    RuleError,
    RuleFileError,
)
from .core.events import IOTYPES, QEMU_EVENTS, EventRegistry
from .core.rules import BadSector, Breakpoint, InjectError, Rule, SetState
from .core.sizes import parse_size
from .rulefiles import RuleFileWarning, dump_ini, dump_toml, load_rules, save_rules

__all__ = [
    "Crash",
    "CrashList",
    "Recording",
    "BadSector",
    "Breakpoint",
    "BreakpointError",
    "BreakpointTimeout",
    "Disk",
    "Decision",
    "DiskFile",
    "Engine",
    "EventRegistry",
    "Extent",
    "IOTYPES",
    "InjectError",
    "InjectedError",
    "QEMU_EVENTS",
    "Rule",
    "RuleError",
    "RuleFileError",
    "RuleStatus",
    "RuleView",
    "SetState",
    "StateChange",
    "TraceEntry",
    "parse_size",
    "load_rules",
    "dump_ini",
    "dump_toml",
    "save_rules",
    "RuleFileWarning",
]
