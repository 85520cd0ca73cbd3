"""The plugin's markers: their help lines, and how a test's markers become
its ``Plan`` (rules in definition order, disk options, custom events).

Kept apart from ``plugin.py`` (the pytest hooks and fixtures) so that every
question about a marker -- which markers there are, in what order they apply
(module -> class -> function, each as written), which arguments each takes
and the error naming the marker when one is wrong -- is answered in one
file. ``plugin.pytest_configure`` calls ``add_marker_help``;
``plugin.DiskFactory`` calls ``build_plan`` once per test, and a
``MarkerError`` fails that test at setup.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from ..core.errors import RuleError, error_text
from ..core.events import EventRegistry, register_events
from ..core.limits import check_timeout
from ..core.rules import Rule, make_rule, marker_help, rule_name
from ..core.sizes import parse_size
from ..harness import DEFAULT_HOLD_TIMEOUT, DEFAULT_WAIT_TIMEOUT
from .options import Settings

__all__ = [
    "BLKDEBUG_MARKER_ARGS",
    "CONFIG_MARKER",
    "RULE_MARKERS",
    "MarkerError",
    "Plan",
    "PlanSession",
    "BlkdebugMarkerWarning",
    "add_marker_help",
    "build_plan",
    "check_disk_name",
    "resolve_path",
    "unapplied_markers",
]

RULE_MARKERS = ("inject_error", "set_state", "blkdebug_rules")
CONFIG_MARKER = "blkdebug"
BLKDEBUG_MARKER_ARGS = (
    "size",
    "events",
    "template",
    "strict",
    "name",
    "rules",
    "wait_timeout",
    "hold_timeout",
)


def add_marker_help(config: pytest.Config) -> None:
    """Register the markers (``pytest --markers``; no warning under ``--strict-markers``)."""
    config.addinivalue_line("markers", marker_help("inject-error"))  # from the rule schema
    config.addinivalue_line("markers", marker_help("set-state"))
    config.addinivalue_line(
        "markers",
        "blkdebug_rules(*paths): rule files (QEMU ini or TOML) for this test's blkdebug "
        "disks, relative to the test file's directory, then the rootdir.",
    )
    config.addinivalue_line(
        "markers",
        "blkdebug(size=None, events=(), template=None, strict=None, name='disk', rules=True, "
        "wait_timeout=None, hold_timeout=None): configure this test's blkdebug disk "
        "(rules=False: ignore the blkdebug_rules option's files; hold_timeout: how long a "
        "request may stay suspended at a breakpoint).",
    )


class PlanSession(Protocol):
    """What ``build_plan`` needs from the plugin's per-session state
    (``plugin._Session``): the options and its cached rule file reader."""

    settings: Settings

    def load_file(self, path: Path, registry: EventRegistry) -> list[Rule]: ...

    def hook_events(self, item: pytest.Item, ihook: Any) -> tuple[str, ...]: ...


def _marks_as_written(item: pytest.Item) -> list[tuple[pytest.Mark, Any]]:
    """This plugin's markers, module -> class -> function, each top to bottom.

    pytest stores stacked decorators bottom-up (the one nearest the function
    is applied first); a ``pytestmark = [...]`` list is kept as written. A
    decorator stores ``Mark`` objects, a list holds ``MarkDecorator``s, which
    is how the two are told apart.
    """
    names = (*RULE_MARKERS, CONFIG_MARKER)
    result: list[tuple[pytest.Mark, Any]] = []
    for node in item.listchain():
        own = [m for m in node.own_markers if m.name in names]
        if len(own) > 1 and isinstance(node, (pytest.Class, pytest.Function)):
            own = _decorator_order(node.obj, own)
        result.extend((m, node) for m in own)
    return result


def _decorator_order(obj: Any, own: list[pytest.Mark]) -> list[pytest.Mark]:
    if isinstance(obj, type):
        raws = [k.__dict__.get("pytestmark") for k in obj.__mro__]
    else:
        raws = [getattr(obj, "pytestmark", None)]
    index = {id(m): i for i, m in enumerate(own)}
    own = list(own)
    for raw in raws:
        if not isinstance(raw, list) or not all(isinstance(m, pytest.Mark) for m in raw):
            continue
        positions = [index[id(m)] for m in raw if id(m) in index]
        for pos, mark in zip(sorted(positions), [own[p] for p in positions][::-1], strict=False):
            own[pos] = mark
    return own


def _mark_text(mark: pytest.Mark, node: Any) -> str:
    args = [repr(a) for a in mark.args] + [f"{k}={v!r}" for k, v in mark.kwargs.items()]
    where = node.nodeid or str(getattr(node, "path", ""))
    return f"@pytest.mark.{mark.name}({', '.join(args)}) [{where}]"


def unapplied_markers(item: pytest.Item, strict: bool) -> tuple[list[str], bool]:
    """A test's markers of this plugin, as written, and whether it is strict
    (``strict``: the session's setting): for a test that made no disk,
    whose markers therefore did nothing."""
    marks = _marks_as_written(item)
    for mark, _node in marks:
        if mark.name == CONFIG_MARKER and isinstance(mark.kwargs.get("strict"), bool):
            strict = mark.kwargs["strict"]  # the nearest marker is the last one
    return [_mark_text(m, node) for m, node in marks], strict


class BlkdebugMarkerWarning(UserWarning):
    """A blkdebug marker had no effect (the test made no blkdebug disk)."""


class MarkerError(Exception):
    """A marker or option could not be turned into rules; fails the test at setup."""


@dataclass
class Plan:
    """What a test's markers ask for, resolved once per test."""

    events: tuple[str, ...]
    rules: list[Rule]
    sources: list[str]
    size: int | None = None
    template: str | None = None
    strict: bool = False
    name: str = "disk"
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT
    hold_timeout: float = DEFAULT_HOLD_TIMEOUT
    #: ``blkdebug(rules=False)``: skip the blkdebug_rules option's files.
    rule_files: bool = True


def resolve_path(value: object, item: pytest.Item, what: str) -> Path:
    """A path from a marker or factory call: absolute, else relative to the
    test file's directory, else to the rootdir."""
    if not isinstance(value, (str, os.PathLike)):
        raise MarkerError(f"{what}: expected a path, not {value!r}")
    path = Path(value)
    candidates = (
        [path] if path.is_absolute() else [item.path.parent / path, item.config.rootpath / path]
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
        if candidate.exists():  # a FIFO or a device would hang or never end
            raise MarkerError(f"{what}: {candidate} is not a regular file")
    raise MarkerError(
        f"{what}: no such file {os.fspath(value)!r} (looked for "
        f"{' and '.join(str(c) for c in candidates)})"
    )


def build_plan(item: pytest.Item, session: PlanSession, ihook: Any) -> Plan:
    """A test's plan: the ``blkdebug`` markers' options (the nearest one wins
    per argument), then its rules in definition order -- the option's rule
    files, then every rule marker module -> class -> function as written.
    Any problem is a ``MarkerError`` naming the marker and where it is."""
    settings = session.settings
    marks = _marks_as_written(item)
    options: dict[str, Any] = {}
    for mark, node in marks:
        if mark.name != CONFIG_MARKER:
            continue
        text = _mark_text(mark, node)
        if mark.args:
            raise MarkerError(
                f"{text}: takes keyword arguments only (allowed: {', '.join(BLKDEBUG_MARKER_ARGS)})"
            )
        for key in mark.kwargs:
            if key not in BLKDEBUG_MARKER_ARGS:
                raise MarkerError(
                    f"{text}: unknown argument {key!r} (allowed: {', '.join(BLKDEBUG_MARKER_ARGS)})"
                )
        options.update((k, (v, text)) for k, v in mark.kwargs.items())
    plan = Plan(
        events=(),
        rules=[],
        sources=[],
        strict=settings.strict,
        wait_timeout=settings.wait_timeout,
        hold_timeout=settings.hold_timeout,
    )
    marker_events: list[str] = []
    for key, (value, text) in options.items():
        try:
            if key == "size":
                plan.size = parse_size(value)
            elif key == "events":
                marker_events = [value] if isinstance(value, str) else list(value)
                EventRegistry(marker_events)
            elif key == "template":
                plan.template = str(resolve_path(value, item, f"{text}: template"))
            elif key in ("strict", "rules"):
                if not isinstance(value, bool):
                    raise ValueError(f"must be True or False, not {value!r}")
                if key == "strict":
                    plan.strict = value
                else:
                    plan.rule_files = value
            elif key == "name":
                check_disk_name(value)
                plan.name = value
            elif key in ("wait_timeout", "hold_timeout"):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise ValueError(f"must be a number of seconds > 0, not {value!r}")
                try:  # nan and inf: not numbers of seconds
                    setattr(plan, key, check_timeout(f"argument {key!r}", value))
                except ValueError as exc:
                    raise MarkerError(f"{text}: {error_text(exc)}") from None
        except (ValueError, TypeError) as exc:
            raise MarkerError(f"{text}: argument {key!r}: {exc}") from None
    registry = EventRegistry(settings.events)
    try:
        register_events(registry, session.hook_events(item, ihook))
    except RuleError as exc:
        raise MarkerError(f"pytest_blkdebug_register_events: {exc}") from None
    register_events(registry, marker_events)

    def add(rules: Iterable[Rule], source: str) -> None:
        for rule in rules:
            plan.rules.append(rule)
            plan.sources.append(source)

    if plan.rule_files:
        for path, origin in settings.rule_files:
            try:
                add(session.load_file(path, registry), f"{origin}: {path}")
            except RuleError as exc:
                raise MarkerError(f"{origin}: {error_text(exc)}") from None
    for mark, node in marks:
        if mark.name == CONFIG_MARKER:
            continue
        text = _mark_text(mark, node)
        if mark.name == "blkdebug_rules":
            if mark.kwargs or not mark.args:
                raise MarkerError(f"{text}: takes one or more rule file paths, positionally")
            for value in mark.args:
                path = resolve_path(value, item, f"{text}: rule file")
                try:
                    add(session.load_file(path, registry), f"{text}: {path}")
                except RuleError as exc:
                    raise MarkerError(f"{text}: {error_text(exc)}") from None
            continue
        add([_marker_rule(mark, text, registry)], text)
    _check_names(plan)
    plan.events = tuple(registry.custom)
    if settings.no_rules:
        plan.rules, plan.sources = [], []
    return plan


def _marker_rule(mark: pytest.Mark, text: str, registry: EventRegistry) -> Rule:
    """``inject_error(event, **attrs)`` / ``set_state(event, new_state, **attrs)``."""
    kind = "inject-error" if mark.name == "inject_error" else "set-state"
    positional = ("event",) if kind == "inject-error" else ("event", "new_state")
    if len(mark.args) > len(positional):
        raise MarkerError(
            f"{text}: takes at most {len(positional)} positional argument(s) "
            f"({', '.join(positional)}); give the others by keyword"
        )
    attrs = dict(mark.kwargs)
    for key, value in zip(positional, mark.args, strict=False):
        if key in attrs:
            raise MarkerError(f"{text}: argument {key!r} given twice")
        attrs[key] = value
    try:
        rule = make_rule(kind, attrs)
        registry.check(rule.event)
    except RuleError as exc:
        raise MarkerError(f"{text}: {error_text(exc)}") from None
    return rule


def _check_names(plan: Plan) -> None:
    seen: dict[str, str] = {}
    for position, (rule, source) in enumerate(zip(plan.rules, plan.sources, strict=False)):
        name = rule_name(rule, position)
        if name in seen:
            raise MarkerError(f"duplicate rule name {name!r}: from {seen[name]} and from {source}")
        seen[name] = source


def check_disk_name(value: object) -> None:
    """A disk's name becomes a file name in ``tmp_path``: no '/', '.' or '..'."""
    if not isinstance(value, str) or not value or "/" in value or value in (".", ".."):
        raise ValueError(f"must be a file name without '/', not {value!r}")
