"""The bookkeeping every front end does around engines, done once.

A test, a ``blkdebug-nbd`` or ``blkdebug-io`` run and an SQLite VFS all do
the same few things around the core: build an engine from rules (objects or
rule files) and custom events, give it a seed, open disks on it, label each
engine for the report, listen for hits, close everything and tell what was
left suspended, then summarise the counters. Written once here, so the
pytest plugin stays glue and every front end reports the same numbers.

``Harness`` is one run's engines and disks; ``RuleFileCache`` parses a rule
file once per process (a suite may name the same file in every test);
``Summary`` is a run's counters as plain data (dicts, lists, numbers,
strings), so it crosses process boundaries as it is -- pytest-xdist
serialises it as a report attribute -- and ``summary_properties`` turns it
into JUnit properties; ``HitTally`` adds summaries up across a session to
find the rules that never fired. Layering: above ``core``, ``rulefiles``
and ``report``; below ``nbd``, ``qemuio``, ``adapters`` and the plugin.
No pytest here.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypedDict

from .core.disk import DEFAULT_HOLD_TIMEOUT, DEFAULT_WAIT_TIMEOUT, Disk
from .core.engine import Engine, Hold
from .core.errors import RuleError
from .core.events import EventRegistry, register_events
from .core.rules import Rule
from .report import format_report, format_size
from .rulefiles import load_rules

__all__ = [
    "DEFAULT_HOLD_TIMEOUT",
    "DEFAULT_WAIT_TIMEOUT",
    "EngineSummary",
    "Harness",
    "HitTally",
    "RuleCount",
    "RuleFileCache",
    "Summary",
    "assemble_engine",
    "derive_seed",
    "summary_properties",
]

RuleSource = Rule | str | os.PathLike[str]
HitCallback = Callable[[Disk, str], None]

#: Longest wait, in all, for threads that teardown resumed to finish (so an
#: exception they raise is reported with the test that suspended them).
RESUMED_JOIN_TIMEOUT = 2.0


def derive_seed(seed: int, key: str) -> int:
    """A 64-bit seed for ``key`` (a test id) from a session's ``seed``: the
    same pair always gives the same seed, whatever else runs, in any worker."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class RuleFileCache:
    """Rule files parsed once per process, keyed by path, mtime, size and
    the custom events they were read with (a TOML file's ``events`` are
    registered again on every later load, as a fresh parse would)."""

    def __init__(self) -> None:
        self._files: dict[tuple[Any, ...], tuple[list[Rule], tuple[str, ...]]] = {}

    def load(self, path: str | os.PathLike[str], registry: EventRegistry) -> list[Rule]:
        """The rules of ``path``; raises what ``load_rules`` raises."""
        try:
            st = os.stat(path)
        except OSError:  # load_rules says why, naming the file
            return load_rules(path, registry=registry)
        before = registry.custom
        key = (os.fspath(path), st.st_mtime_ns, st.st_size, before)
        cached = self._files.get(key)
        if cached is None:
            rules = load_rules(path, registry=registry)
            cached = self._files[key] = (rules, registry.custom[len(before) :])
        else:
            register_events(registry, cached[1])
        return list(cached[0])


def assemble_engine(
    engine: Engine | Disk | None = None,
    *,
    rules: Iterable[Rule] = (),
    events: Iterable[str] = (),
    seed: int | None = None,
) -> Engine:
    """An engine with ``events`` registered and ``rules`` added: a new one
    (with ``seed``), or the given engine (or a disk's) extended."""
    if isinstance(engine, Disk):
        engine = engine.engine
    events = [events] if isinstance(events, str) else list(events)
    if engine is None:
        return Engine(rules, registry=EventRegistry(events), seed=seed)
    register_events(engine, events)
    engine.add_rules(rules)
    return engine


class RuleCount(TypedDict):
    """One rule's counters; ``generated``: its name is a position, not the user's."""

    name: str
    kind: str
    event: str
    hits: int
    armed: int
    consumed: bool
    generated: bool


class EngineSummary(TypedDict):
    label: str  # "" for a run's first engine, else its first disk's name
    state: int
    injected_delay: float
    rules: list[RuleCount]


class Summary(TypedDict):
    seed: int | None
    engines: list[EngineSummary]


class Harness:
    """One run's engines and disks: labels, seed, hits, rule files, close.

    ``events`` are registered on every engine it makes; ``seed`` goes to
    each; ``on_hit(disk, rule_name)`` is called on every hit (hits before an
    engine's first disk exists are queued until it does); ``cache`` lets
    runs share parsed rule files; ``resolve`` turns a rule-file argument
    into a path (the plugin resolves relative to the test file).
    """

    def __init__(
        self,
        *,
        events: Iterable[str] = (),
        seed: int | None = None,
        cache: RuleFileCache | None = None,
        hold_timeout: float = DEFAULT_HOLD_TIMEOUT,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
        on_hit: HitCallback | None = None,
        resolve: Callable[[str | os.PathLike[str]], Path] | None = None,
    ) -> None:
        self.events = tuple(events)
        self.seed = seed
        self.cache = cache if cache is not None else RuleFileCache()
        self.hold_timeout = hold_timeout
        self.wait_timeout = wait_timeout
        self.on_hit = on_hit
        self.resolve = resolve
        self.disks: list[Disk] = []
        #: Each engine in the order first used, with its report label.
        self.labels: dict[Engine, str] = {}
        self._first_disk: dict[Engine, Disk] = {}
        self._queued: dict[Engine, list[str]] = {}
        self._suspenders: set[threading.Thread] = set()

    # -- building ----------------------------------------------------------------

    def load(
        self, sources: Iterable[RuleSource] | RuleSource, registry: EventRegistry
    ) -> list[Rule]:
        """Rules from rule objects and rule-file paths, in order; a file's
        TOML ``events`` are registered in ``registry``."""
        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        result: list[Rule] = []
        origin: dict[str, tuple[int, str]] = {}  # a named rule's source, for the error
        for position, entry in enumerate(sources):  # type: ignore[arg-type]
            if isinstance(entry, (str, os.PathLike)):
                path = self.resolve(entry) if self.resolve is not None else entry
                rules, where = self.cache.load(path, registry), os.fspath(entry)
            else:
                rules, where = (
                    [entry],
                    f"{type(entry).__name__}(name={getattr(entry, 'name', None)!r})",
                )
            for rule in rules:
                name = getattr(rule, "name", None)
                if name is None:
                    continue
                first, first_where = origin.setdefault(name, (position, where))
                if first != position:
                    raise RuleError(
                        f"duplicate rule name {name!r}: from {first_where} and from {where}",
                        attribute="name",
                    )
            result += rules
        return result

    def engine(
        self,
        rules: Iterable[RuleSource] | RuleSource = (),
        *,
        events: Iterable[str] = (),
        engine: Engine | Disk | None = None,
        label: str | None = None,
    ) -> Engine:
        """A new engine with the run's events, ``events`` and ``rules`` (or the
        given engine, extended), adopted under ``label``."""
        events = [events] if isinstance(events, str) else list(events)
        if isinstance(engine, Disk):
            engine = engine.engine
        if engine is None:
            registry = EventRegistry((*self.events, *events))
            engine = Engine(self.load(rules, registry), registry=registry, seed=self.seed)
        else:
            register_events(engine, events)
            engine.add_rules(self.load(rules, engine.registry))
        return self.adopt(engine, label)

    def adopt(self, engine: Engine, label: str | None = None) -> Engine:
        """Count ``engine`` in the run (once): the first is unlabelled, later
        ones take ``label``. Watches it for hits and suspensions."""
        if engine in self.labels:
            return engine
        self.labels[engine] = (label or "engine") if self.labels else ""
        self._queued[engine] = []
        engine.add_observer(self._observer(engine))
        return engine

    def _observer(self, engine: Engine) -> Callable[[str, object], None]:
        suspenders, queued = self._suspenders, self._queued[engine]
        first = self._first_disk

        def observe(what: str, detail: object) -> None:
            if what == "suspend":
                suspenders.add(threading.current_thread())
            elif what == "hit" and self.on_hit is not None:
                disk = first.get(engine)
                if disk is None:
                    queued.append(str(detail))
                else:
                    self.on_hit(disk, str(detail))

        return observe

    def open(
        self,
        path: str | os.PathLike[str],
        *,
        engine: Engine | None = None,
        label: str | None = None,
        readonly: bool = False,
        durable: bool = False,
        size: int | None = None,
        hold_timeout: float | None = None,
        wait_timeout: float | None = None,
    ) -> Disk:
        """Open the image at ``path`` on ``engine`` (default: a new engine
        with the run's events and no rules)."""
        if engine is None:
            engine = self.engine(label=label)
        else:
            self.adopt(engine, label)
        disk = Disk(
            path,
            engine=engine,
            readonly=readonly,
            durable=durable,
            size=size,
            hold_timeout=self.hold_timeout if hold_timeout is None else hold_timeout,
            wait_timeout=self.wait_timeout if wait_timeout is None else wait_timeout,
        )
        self.disks.append(disk)
        if engine not in self._first_disk:
            self._first_disk[engine] = disk
            queued = self._queued.get(engine) or []
            for name in queued:
                self.on_hit(disk, name)  # type: ignore[misc]
            queued.clear()
        return disk

    # -- ending ------------------------------------------------------------------

    def close(self) -> list[tuple[str, Hold]]:
        """Close every disk (newest first), resuming what is suspended; returns
        the (tag, hold) entries that had to be resumed.

        Then waits (briefly, ``RESUMED_JOIN_TIMEOUT`` in all) for the threads
        it resumed to finish, so that what they raise on the closed disk is
        raised while this run -- the test -- is still the one being reported.
        """
        released: list[tuple[str, Hold]] = []
        for disk in reversed(self.disks):
            released += disk.close()
        if released:
            deadline = time.monotonic() + RESUMED_JOIN_TIMEOUT
            me = threading.current_thread()
            for thread in self._suspenders:
                if thread is not me:
                    thread.join(max(0.0, deadline - time.monotonic()))
        self._suspenders.clear()
        return released

    # -- reporting ----------------------------------------------------------------

    def groups(self) -> list[tuple[str, Engine, list[Disk]]]:
        """(label, engine, its disks) per engine, in the order first used."""
        return [
            (label, e, [d for d in self.disks if d.engine is e]) for e, label in self.labels.items()
        ]

    def section(self, *, seed: str | None = None) -> str:
        """The report text: per engine, the disk (or disks sharing it), state,
        history, rules, trace; the total injected delay when there was one;
        with ``seed`` (a note on how to reproduce it), the run's seed line."""
        parts = []
        for _label, engine, disks in self.groups():
            if len(disks) == 1:  # format_report's own title: the disk and its size
                parts.append(format_report(disks[0]))
            elif disks:
                title = "disks sharing one engine: " + ", ".join(
                    f"{d.path} ({format_size(d.size)})" for d in disks
                )
                parts.append(format_report(engine, title=title))
        text = "\n\n".join(parts)
        delay = sum(_injected_delay(e) for e in self.labels)
        if delay:
            text += f"\ninjected delay: {delay:.3f} s in all"
        if seed is not None and self.labels:
            text += f"\nseed: {self.effective_seed}{seed}"
        return text

    def summary(self) -> Summary:
        """Every engine's counters as plain data (see ``Summary``)."""
        engines: list[EngineSummary] = []
        for label, engine in ((lab, e) for e, lab in self.labels.items()):
            rules: list[RuleCount] = [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "event": s.event,
                    "hits": s.hits,
                    "armed": s.armed,
                    "consumed": s.consumed,
                    "generated": not s.rule.name,
                }
                for s in engine.rules
            ]
            engines.append(
                {
                    "label": label,
                    "state": engine.state,
                    "injected_delay": _injected_delay(engine),
                    "rules": rules,
                }
            )
        return {"seed": self.effective_seed, "engines": engines}

    @property
    def effective_seed(self) -> int | None:
        """The run's seed: the one given, else the first engine's own (an
        engine draws one when none is given); None before any engine."""
        if self.seed is not None:
            return self.seed
        return next((e.seed for e in self.labels), None)


def _injected_delay(engine: Engine) -> float:
    """``engine.injected_delay`` (seconds slept by delay rules), 0 before it exists."""
    return float(getattr(engine, "injected_delay", 0.0))


def summary_properties(summary: Summary) -> list[tuple[str, str | int]]:
    """JUnit XML properties of a run: ``blkdebug.seed``; per engine
    (``blkdebug`` or ``blkdebug[label]``) its state, the injected delay when
    there was one, and per rule its hits and, except set-state rules, armed
    and consumed (0/1)."""
    props: list[tuple[str, str | int]] = []
    if summary["seed"] is not None:
        props.append(("blkdebug.seed", summary["seed"]))
    for engine in summary["engines"]:
        prefix = f"blkdebug[{engine['label']}]" if engine["label"] else "blkdebug"
        props.append((f"{prefix}.state", engine["state"]))
        if engine["injected_delay"]:
            props.append((f"{prefix}.injected_delay", f"{engine['injected_delay']:.6f}"))
        for rule in engine["rules"]:
            props.append((f"{prefix}.rule.{rule['name']}.hits", rule["hits"]))
            if rule["kind"] != "set-state":
                props.append((f"{prefix}.rule.{rule['name']}.armed", rule["armed"]))
                props.append((f"{prefix}.rule.{rule['name']}.consumed", int(rule["consumed"])))
    return props


class HitTally:
    """Hits added up across runs (tests), to name the rules that never fired.

    A named rule is one rule across the session (a rule from a shared file
    that fired in any test is not listed); a generated name (``inject-error#2``)
    is a position, so it is counted per test.
    """

    def __init__(self) -> None:
        # (disk label, rule name[, run id]) -> [total hits, run ids]
        self._hits: dict[tuple[str, ...], list[Any]] = {}
        self._unapplied: list[tuple[str, str]] = []

    def add(self, run: str, summary: Summary) -> None:
        for engine in summary["engines"]:
            for rule in engine["rules"]:
                key: tuple[str, ...] = (engine["label"], rule["name"])
                if rule["generated"]:
                    key += (run,)
                entry = self._hits.setdefault(key, [0, []])
                entry[0] += rule["hits"]
                entry[1].append(run)

    def add_unapplied(self, run: str, markers: Sequence[str]) -> None:
        """Rules that never reached an engine (markers on a test without a disk)."""
        self._unapplied.extend((run, m) for m in markers)

    def unfired_lines(self) -> list[str]:
        """One line per rule that never fired, sorted (a parallel run prints
        what a serial run prints)."""
        unfired = sorted(
            (key, sorted(runs)) for key, (hits, runs) in self._hits.items() if not hits
        )
        lines = []
        for key, runs in unfired:
            disk = f"[{key[0]}] " if key[0] else ""
            if len(key) == 3:
                lines.append(f"{disk}{key[1]} in {key[2]}")
                continue
            shown = ", ".join(runs[:3]) + (", ..." if len(runs) > 3 else "")
            tests = "1 test" if len(runs) == 1 else f"{len(runs)} tests"
            lines.append(f"{disk}{key[1]}: 0 hits in {tests} ({shown})")
        lines += [
            f"{marker} in {run}: not applied (the test uses no blkdebug disk)"
            for run, marker in sorted(self._unapplied)
        ]
        return lines
