"""pytest-blkdebug: QEMU's blkdebug error injection for Python test suites.

Usable without pytest: build rules, open a ``Disk``, drive your storage code
against it and read the engine's state and counters. The pytest plugin
(``pytest_blkdebug.plugin``) is a thin layer of fixtures and markers on top.
"""

from __future__ import annotations

from .disk import Disk, DiskFile, Extent, parse_size
from .engine import Engine, RuleStatus, StateChange, TraceEntry
from .errors import (
    BreakpointError,
    BreakpointTimeout,
    InjectedError,
    RuleError,
    RuleFileError,
)
from .events import IOTYPES, QEMU_EVENTS, EventRegistry
from .rules import Breakpoint, InjectError, Rule, SetState

__all__ = [
    "Breakpoint",
    "BreakpointError",
    "BreakpointTimeout",
    "Disk",
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
    "SetState",
    "StateChange",
    "TraceEntry",
    "parse_size",
    "load_rules",
    "dump_ini",
]


def __getattr__(name: str) -> object:
    # rulefile is imported lazily so the package imports even while a rule
    # file reader's optional dependency (tomli on 3.10) is missing.
    if name in ("load_rules", "dump_ini", "dump_toml", "save_rules", "RuleFileWarning"):
        from . import rulefile

        return getattr(rulefile, name)
    raise AttributeError(f"module 'pytest_blkdebug' has no attribute {name!r}")
