"""Fault sweeps, the library half: what a point is and what it leaves.

Everything a sweep needs that is not pytest: the values ``check`` and the
caller see (``SweepRequest``, ``SweepOutcome``, ``SweepResult``), the
engine of one point (``PointEngine``: counts the requests the sweep's rule
failed, stops a crash recording at the fault), the rule a point N uses,
the crash states a point's ``check`` sees, the per-point directory
copying, and the failure message. The pytest side (the ``blkdebug_sweep``
fixture that runs the points as subtests, its option and report hooks) is
``plugin/sweep.py``.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .crash import Recording
from .crashstates import Crash
from .decision import Decision
from .disk import Disk, create_image
from .engine import Engine
from .errors import InjectedError, RuleError
from .events import IOTYPES, EventRegistry
from .rules import InjectError, errno_name

__all__ = [
    "CRASH_STATES",
    "IMAGE",
    "MODES",
    "RULE_NAME",
    "Body",
    "Check",
    "PointEngine",
    "Prep",
    "SweepOutcome",
    "SweepRequest",
    "SweepResult",
    "copy_tree",
    "crash_states",
    "describe",
    "empty",
    "failure_message",
    "make_rule",
]

#: The sweep's rule is called this in reports and in ``InjectedError.rule``.
RULE_NAME = "sweep"
Body = Callable[[Disk], object]
Prep = Callable[[Disk], object]
Check = Callable[[Disk, "SweepOutcome"], object]
#: ``mode=``: fail the Nth request, or lose power there.
MODES = ("error", "crash")
#: ``crash_states=``: which crash images of a point ``check`` sees.
CRASH_STATES = ("edges", "all")
#: The sweep's image, in each point's directory.
IMAGE = "disk.img"


# ---------------------------------------------------------------------------
# Values: a point's request, its outcome, the whole sweep's result
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepRequest:
    """The request a sweep point failed: ``operation`` is the iotype name
    (``read``, ``write``, ``write-zeroes``, ``discard``, ``flush``)."""

    operation: str
    offset: int
    length: int

    def __str__(self) -> str:
        if self.operation == "flush":
            return "flush"
        return f"{self.operation} of {self.length} bytes at offset {self.offset}"


@dataclass
class SweepOutcome:
    """What happened at one point, as ``check(disk, outcome)`` sees it.

    ``hit``: the rule failed a request (else N was never reached: this is the
    run without a fault, the sweep's last). ``request``: the first request it
    failed; ``failed`` all of them (more than one only with ``persist``).
    ``error``: what ``body`` raised (None: it returned ``value``).
    In crash mode, ``crash`` is the crash state whose image ``check`` has.
    """

    n: int
    hit: bool
    request: SweepRequest | None
    failed: list[SweepRequest]
    error: BaseException | None
    value: object = None
    #: Crash mode: the crash state ``check`` is looking at, and how many the point has.
    crash: Crash | None = None
    crashes: int = 0

    @property
    def raised(self) -> bool:
        return self.error is not None

    @property
    def injected(self) -> InjectedError | None:
        """The sweep's ``InjectedError`` if it reached the caller (directly or
        as the cause or context of what ``body`` raised), else None."""
        seen: set[int] = set()
        exc = self.error
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            if isinstance(exc, InjectedError) and exc.rule == RULE_NAME:
                return exc
            exc = exc.__cause__ or exc.__context__
        return None


@dataclass
class SweepResult:
    """What a sweep ran.

    ``requests[n]``: the request point N failed, for each N that reached the
    fault; ``points``: how many did (for a whole sweep, the workload's
    matching requests); ``runs``: every N that ran, the last one being the
    run that reached no fault; ``failures``: the N whose point failed.
    """

    requests: dict[int, SweepRequest] = field(default_factory=dict)
    runs: list[int] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    #: Crash mode: how many crash images ``check`` saw.
    images: int = 0

    @property
    def points(self) -> int:
        return len(self.requests)

    def line(self, what: str = "") -> str:
        """One summary line: ``19 points (write, flush), 20 runs, 0 failed``."""
        text = f"{self.points} points{f' ({what})' if what else ''}, {len(self.runs)} runs"
        if self.images:
            text += f", {self.images} crash images"
        text += f", {len(self.failures)} failed"
        if self.failures:
            shown = ", ".join(f"N={n}" for n in self.failures[:10])
            text += f" ({shown}{', ...' if len(self.failures) > 10 else ''})"
        return text


# ---------------------------------------------------------------------------
# One point: its rule, its engine, its crash states
# ---------------------------------------------------------------------------


def make_rule(rule: dict[str, Any], n: int, persist: bool) -> InjectError:
    """The rule of point N: ``rule``'s attributes, failing the Nth matching
    request (or, with ``persist``, every one from the Nth on)."""
    attrs = dict(rule, name=RULE_NAME, after=n - 1)
    if not persist:
        attrs["count"] = 1
    try:
        made = InjectError(**attrs)
    except TypeError as exc:
        allowed = ", ".join(
            f for f in InjectError.__dataclass_fields__ if f not in ("name", "after", "count")
        )
        raise RuleError(f"blkdebug_sweep: {exc} (rule attributes: {allowed}, persist)") from None
    # A rule that may let the Nth request pass would end the sweep there,
    # its later points never run and never counted.
    if made.probability != 1:
        raise RuleError(
            f"blkdebug_sweep: probability={made.probability} would let point N's request "
            "pass at random, ending the sweep there (a sweep fails exactly the Nth request)"
        )
    if not (made.errno or made.delay or made.delay_jitter or made.lie):
        raise RuleError(
            "blkdebug_sweep: errno=0 with no delay or lie does nothing to a request: "
            "no point would ever be reached"
        )
    return made


class PointEngine(Engine):
    """The engine of one point: records the requests the sweep's rule
    failed (its ``after=N-1`` lets the first N-1 through), and is disarmed
    once ``body`` is over so that ``check`` sees no fault."""

    def __init__(self, rule: InjectError | None, registry: EventRegistry, seed: int) -> None:
        super().__init__([] if rule is None else [rule], registry=registry, seed=seed)
        self.sweep_rule = rule
        self._sweep_lock = threading.Lock()
        self.failed: list[SweepRequest] = []
        self.disarmed = False
        #: Crash mode: the recording the fault stops (the power is lost there).
        self.recording: Recording | None = None

    def decide(self, iotype: int, offset: int, length: int) -> Decision | None:
        if self.disarmed:
            return None
        decision = super().decide(iotype, offset, length)
        if decision is not None and decision.rule == RULE_NAME and effective(decision):
            with self._sweep_lock:
                if self.recording is not None:  # before the request stores anything
                    self.recording.stop()
                self.failed.append(SweepRequest(IOTYPES[iotype], offset, length))
        return decision


def effective(decision: Decision) -> bool:
    """Whether the decision does something to the request (a rule that
    matched and let it through, ``errno=0`` with no effect, does not; a
    delay does)."""
    return bool(
        decision.errno
        or decision.corrupt
        or decision.lost
        or decision.misdirect is not None
        or decision.delay
    )


def crash_states(recording: Recording, seed: int, which: str) -> list[Crash]:
    """The crash states a power loss at the end of ``recording`` can leave:
    every state of the last flush epoch (``which="all"``), or only its two
    edges, every volatile write lost and every one kept (``"edges"``)."""
    crashes = recording.crashes(seed=seed)
    # The power went at the end of the recording: the last epoch's states
    # (some are listed under an earlier id that leaves the same images).
    last = f"e{crashes.epochs - 1}-"
    states = [c for c in crashes if any(i.startswith(last) for i in (c.id, *c.same_as))]
    if which == "edges":
        edges = {f"{last}none", f"{last}all"}
        states = [c for c in states if edges & {c.id, *c.same_as}]
    return states


# ---------------------------------------------------------------------------
# A point's directory, and what a failure says
# ---------------------------------------------------------------------------


def copy_tree(src: Path, dst: Path, skip: Collection[Path] = ()) -> None:
    """Copy the template directory into ``dst`` (which exists): sparse or
    reflinked files, but not those whose copy would be at a path in ``skip``."""
    for entry in os.scandir(src):
        target = dst / entry.name
        if entry.is_dir(follow_symlinks=False):
            target.mkdir()
            copy_tree(Path(entry.path), target, skip)
        elif entry.is_file(follow_symlinks=False) and target not in skip:
            create_image(target, entry.stat().st_size, entry.path)


def empty(folder: Path) -> None:
    """Remove what a point left in its directory."""
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            os.unlink(entry.path)


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def fault(rule: InjectError) -> str:
    """What the rule does to a request: ``EIO``, ``corrupt=bitflip``, ``lost``..."""
    lie = getattr(rule, "lie", None)
    if lie == "lost":
        return "lost"
    if lie is not None:
        return f"{lie}={getattr(rule, lie)}"
    return errno_name(rule.errno)


def failure_message(
    n: int, outcome: SweepOutcome, rule: InjectError | None, exc: BaseException
) -> str:
    if outcome.request is None or rule is None:
        where = "not reached (no fault was injected)"
    elif outcome.crash is not None:
        where = f"power lost at {outcome.request}, crash state {outcome.crash.id}"
    else:
        more = f" and {len(outcome.failed) - 1} more" if len(outcome.failed) > 1 else ""
        where = f"{fault(rule)} injected into {outcome.request}{more}"
    if outcome.error is None:
        raised = "body returned"
    elif outcome.error is outcome.injected:
        raised = "body raised it"
    else:
        raised = f"body raised {describe(outcome.error)}"
    return f"N={n}: {where}; {raised}; check failed: {describe(exc)}"
