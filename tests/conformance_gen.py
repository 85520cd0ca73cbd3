"""Random rule files and qemu-io scripts, run through real qemu-io and blkdebug-io.

Shared by ``test_conformance.py`` (synchronous requests) and
``test_breakpoint_conformance.py`` (QEMU iotest 046-shaped breakpoint
scripts). A ``Scenario`` is a QEMU ini rule file, an image (size and initial
content) and a list of qemu-io commands. ``run_scenarios`` runs every
scenario through ``qemu-io -f raw -t writeback`` (in a thread pool, with a
timeout) and through ``pytest_blkdebug.qemuio.cli.main`` in-process, and compares
stdout without the statistics lines, the exit status and the final image
bytes. Each disagreement carries a reproduction: the rule file, the image
preparation and the exact command lines for both programs.
"""

from __future__ import annotations

import io
import os
import random
import re
import shlex
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from qemu_helpers import run_qemu_io

from pytest_blkdebug.qemuio import cli

SEED_ENV = "BLKDEBUG_CONFORMANCE_SEED"
QEMU_TIMEOUT = 20.0
RULE_EVENTS = (
    "read_aio",
    "write_aio",
    "pwritev",
    "pwritev_zero",
    "pwritev_done",
    "flush_to_os",
    "flush_to_disk",
    "none",
)
IOTYPES = ("read", "write", "write-zeroes", "discard", "flush", "block-status")
#: errno values with their weights: EIO and ENOSPC as in QEMU's iotests, 0
#: (match and let through), and a few others for the message texts.
ERRNOS = ((5, 6), (28, 4), (0, 2), (1, 1), (13, 1), (22, 1), (122, 1), (61, 1))
FILL_BYTE = 0x5A
#: A statistics line: "512 bytes, 1 ops; 00.00 sec (3.548 MiB/sec and 7266.7025 ops/sec)".
STATS_RE = re.compile(r"^\S+ (bytes|KiB|MiB|GiB|TiB|PiB|EiB), \d+ ops; .* ops/sec\)$")


def seed(default: int) -> int:
    """The generator seed: ``BLKDEBUG_CONFORMANCE_SEED`` or the module's default."""
    value = os.environ.get(SEED_ENV, "").strip()
    return int(value, 0) if value else default


# ---------------------------------------------------------------------------
# Rule files
# ---------------------------------------------------------------------------


def _weighted(rng: random.Random, pairs: Sequence[tuple[int, int]]) -> int:
    return rng.choices([v for v, _ in pairs], weights=[w for _, w in pairs])[0]


def random_rules(
    rng: random.Random,
    sectors: Sequence[int],
    events: Sequence[str] = RULE_EVENTS,
    max_rules: int = 4,
) -> str:
    """A QEMU ini file with 0..max_rules inject-error and set-state rules.

    The rules of one file share a few events, so that they meet: set-state
    rules compete on one event, inject-error rules replace each other's
    arming, state conditions gate what the other rules did.
    """
    groups: list[str] = []
    events = rng.sample(list(events), rng.randint(2, min(4, len(events))))
    for i in range(rng.randint(0, max_rules)):
        lines: list[str]
        if rng.random() < 0.55:
            header = f'[inject-error "r{i}"]' if rng.random() < 0.2 else "[inject-error]"
            lines = [header, f'event = "{rng.choice(events)}"']
            if rng.random() < 0.85:
                lines.append(f'errno = "{_weighted(rng, ERRNOS)}"')
            if rng.random() < 0.5:
                lines.append(f'state = "{rng.randint(0, 3)}"')
            if rng.random() < 0.4:
                lines.append(f'sector = "{rng.choice(sectors)}"')
            if rng.random() < 0.5:
                lines.append(f'once = "{rng.choice(["on", "off"])}"')
            if rng.random() < 0.25:
                lines.append(f'immediately = "{rng.choice(["on", "off"])}"')
            if rng.random() < 0.45:
                lines.append(f'iotype = "{rng.choice(IOTYPES)}"')
        else:
            lines = ["[set-state]", f'event = "{rng.choice(events)}"']
            if rng.random() < 0.6:
                lines.append(f'state = "{rng.randint(0, 3)}"')
            if rng.random() < 0.9:
                lines.append(f'new_state = "{rng.randint(0, 3)}"')
        groups.append("\n".join(lines) + "\n")
    return "\n".join(groups)


def competing_rules(rng: random.Random, sectors: Sequence[int]) -> str:
    """Two set-state rules that compete on one event, inject-error rules gated
    on each of their target states, and a few random rules mixed in: the
    first-defined set-state rule, the same-event state rule and the
    persistence of armed rules all show in the outcome."""
    trigger, victim = rng.sample(RULE_EVENTS[:-1], 2)
    targets = rng.sample([0, 1, 2, 3], 2)
    cond = f'state = "{rng.choice([0, 1])}"\n' if rng.random() < 0.5 else ""
    groups = [
        f'[set-state]\nevent = "{trigger}"\n{cond}new_state = "{targets[0]}"\n',
        f'[set-state]\nevent = "{trigger}"\n{cond}new_state = "{targets[1]}"\n',
    ]
    for target, err in zip(targets, (5, 28), strict=True):
        once = f'once = "{rng.choice(["on", "off"])}"\n'
        event = rng.choice([victim, trigger])
        groups.append(
            f'[inject-error]\nevent = "{event}"\nstate = "{target}"\nerrno = "{err}"\n{once}'
        )
    extra = random_rules(rng, sectors, max_rules=2)
    rng.shuffle(groups)
    return "\n".join(groups) + ("\n" + extra if extra else "")


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------


@dataclass
class Scenario:
    """One rule file, one image, one script: everything a run needs."""

    ident: str
    rules: str | None  # ini text; None: a plain image, "": blkdebug::IMAGE
    commands: list[str]
    size: int
    fill: int = 0  # the first ``fill`` bytes are FILL_BYTE, the rest zero
    ordered: bool = True  # False: completion order is free (aio scripts)

    def filename(self, rules: str, image: str) -> str:
        if self.rules is None:
            return image
        return f"blkdebug:{rules if self.rules else ''}:{image}"

    def qemu_args(self, rules: str = "r.ini", image: str = "img.raw") -> list[str]:
        args = ["-f", "raw", "-t", "writeback"]
        for command in self.commands:
            args += ["-c", command]
        return [*args, self.filename(rules, image)]

    def prepare(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if self.rules:
            (directory / "r.ini").write_text(self.rules)
        with open(directory / "img.raw", "wb") as f:
            f.truncate(self.size)
            if self.fill:
                f.write(bytes([FILL_BYTE]) * self.fill)

    def reproduction(self, extra: Sequence[str] = ()) -> str:
        prep = f"truncate -s {self.size} img.raw"
        if self.fill:
            prep += f" && qemu-io -f raw -c 'write -P {FILL_BYTE:#x} 0 {self.fill}' img.raw"
        args = " ".join(shlex.quote(a) for a in self.qemu_args())
        rules = (
            f"--- r.ini ---\n{self.rules}--- end of r.ini ---\n"
            if self.rules
            else "(no rule file)\n"
        )
        ours = " ".join([*extra, args])
        return f"scenario {self.ident}\n{rules}{prep}\nqemu-io {args}\nblkdebug-io {ours}"


@dataclass
class Outcome:
    stdout: str
    stderr: str
    status: int
    image: bytes


def strip_stats(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if not STATS_RE.match(line)]


def run_qemu(scenario: Scenario, directory: Path) -> Outcome:
    scenario.prepare(directory)
    proc = run_qemu_io(scenario.qemu_args(), cwd=directory, timeout=QEMU_TIMEOUT)
    return Outcome(proc.stdout, proc.stderr, proc.returncode, (directory / "img.raw").read_bytes())


def run_ours(scenario: Scenario, directory: Path, extra: Sequence[str] = ()) -> Outcome:
    scenario.prepare(directory)
    out, err = io.StringIO(), io.StringIO()
    args = scenario.qemu_args(str(directory / "r.ini"), str(directory / "img.raw"))
    status = cli.main([*extra, *args], stdout=out, stderr=err)
    return Outcome(out.getvalue(), err.getvalue(), status, (directory / "img.raw").read_bytes())


ORDERED_PREFIXES = ("blkdebug: ", "Could not ")


def _first_byte_difference(a: bytes, b: bytes) -> str:
    if len(a) != len(b):
        return f"image sizes differ: qemu-io {len(a)}, blkdebug-io {len(b)}"
    for i in range(0, len(a), 4096):
        if a[i : i + 4096] != b[i : i + 4096]:
            j = next(k for k in range(i, min(i + 4096, len(a))) if a[k] != b[k])
            return f"images differ from offset {j}: qemu-io {a[j]:#04x}, blkdebug-io {b[j]:#04x}"
    return ""


def compare(
    scenario: Scenario, theirs: Outcome, ours: Outcome, extra: Sequence[str] = ()
) -> str | None:
    """None if the runs agree, else a report with a reproduction (``extra``:
    the options blkdebug-io had on top of qemu-io's)."""
    problems = []
    q_lines, o_lines = strip_stats(theirs.stdout), strip_stats(ours.stdout)
    if scenario.ordered:
        if q_lines != o_lines:
            problems.append("stdout differs")
    else:

        def ordered(lines: list[str]) -> list[str]:
            return [x for x in lines if x.startswith(ORDERED_PREFIXES)]

        if ordered(q_lines) != ordered(o_lines):
            problems.append("breakpoint/error lines differ (in order)")
        if Counter(q_lines) != Counter(o_lines):
            problems.append("stdout lines differ (as a multiset)")
    if theirs.status != ours.status:
        problems.append(f"exit status: qemu-io {theirs.status}, blkdebug-io {ours.status}")
    if theirs.image != ours.image:
        problems.append(_first_byte_difference(theirs.image, ours.image))
    if not problems:
        return None
    return "\n".join(
        [
            "DISAGREEMENT: " + "; ".join(problems),
            scenario.reproduction(extra),
            f"--- qemu-io stdout (exit {theirs.status}) ---",
            theirs.stdout.rstrip(),
            "--- qemu-io stderr ---",
            theirs.stderr.rstrip(),
            f"--- blkdebug-io stdout (exit {ours.status}) ---",
            ours.stdout.rstrip(),
            "--- blkdebug-io stderr ---",
            ours.stderr.rstrip(),
        ]
    )


@dataclass
class Results:
    ran: int = 0
    disagreements: list[str] = field(default_factory=list)
    rerun: list[str] = field(default_factory=list)  # agreed only when qemu-io ran again


def run_scenarios(
    scenarios: Sequence[Scenario],
    workdir: Path,
    workers: int = 2,
    variants: Sequence[Sequence[str]] = ((),),
    reruns: int = 0,
) -> Results:
    """qemu-io in a thread pool; meanwhile blkdebug-io in this thread, once
    per variant (extra options, e.g. ``("--sync-via", "aio")``).

    ``reruns``: a scenario that disagrees runs through qemu-io again, up to
    that many times, and counts as agreeing if a rerun agrees. Only for
    scripts whose qemu-io outcome can depend on its thread pool's timing
    (see test_aio_conformance.py): a real difference disagrees every time.
    """
    results = Results()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_qemu, s, workdir / s.ident / "qemu") for s in scenarios]
        ours = [
            [run_ours(s, workdir / s.ident / f"ours{i}", v) for i, v in enumerate(variants)]
            for s in scenarios
        ]
        for scenario, future, mine in zip(scenarios, futures, ours, strict=True):
            try:
                theirs = future.result()
            except Exception as exc:  # a qemu-io timeout is a generator bug: report it
                results.disagreements.append(
                    f"qemu-io did not finish: {exc!r}\n{scenario.reproduction()}"
                )
                continue
            results.ran += 1
            for attempt in range(reruns + 1):
                if attempt:
                    theirs = run_qemu(scenario, workdir / scenario.ident / f"qemu-rerun{attempt}")
                problems = [
                    problem
                    for variant, outcome in zip(variants, mine, strict=True)
                    if (problem := compare(scenario, theirs, outcome, variant))
                ]
                if not problems:
                    if attempt:
                        results.rerun.append(scenario.ident)
                    break
            results.disagreements += problems
    return results


def summary(results: Results, limit: int = 5) -> str:
    shown = "\n\n".join(results.disagreements[:limit])
    more = len(results.disagreements) - limit
    tail = f"\n\n... and {more} more" if more > 0 else ""
    return (
        f"{len(results.disagreements)} of {results.ran} scenarios disagree "
        f"(reproduce one with the lines below; rerun with {SEED_ENV}=N)\n\n{shown}{tail}"
    )


# ---------------------------------------------------------------------------
# Synchronous scripts (test_conformance)
# ---------------------------------------------------------------------------

SIZES = ((1 << 20, 4), (65536, 2), (16384, 2), (8192, 1), (4096 + 512 * 3, 1))


def _range(rng: random.Random, size: int) -> tuple[int, int]:
    """An (offset, length): aligned, unaligned, zero-length or past the end."""
    kind = rng.random()
    if kind < 0.4:  # sector aligned, near the start where sector rules point
        return 512 * rng.randint(0, 15), 512 * rng.choice([1, 1, 1, 2, 4, 8])
    if kind < 0.65:  # unaligned
        return rng.randint(0, 8192), rng.choice([1, 2, 100, 511, 513, 1000, 2047])
    if kind < 0.75:  # zero length, sometimes right at the end
        return rng.choice([0, 512, 2048, 2049, size]), 0
    if kind < 0.85:  # touching the end of the image
        length = rng.choice([1, 512, 1024])
        return size - length, length
    if kind < 0.95:  # past the end, or starting beyond it
        return rng.choice([size - 512, size - 1, size, size + 512]), rng.choice([0, 1, 512, 1024])
    return rng.randint(0, max(0, size - 4096)), rng.choice([4096, 12288, 65536])


def _number(rng: random.Random, value: int) -> str:
    """Spell a number as qemu-io users do: decimal, hex or with a k suffix."""
    if value and value % 1024 == 0 and rng.random() < 0.2:
        return f"{value // 1024}k"
    if rng.random() < 0.1:
        return hex(value)
    return str(value)


def random_command(rng: random.Random, size: int, patterns: list[int]) -> str:
    op = rng.choices(
        ["read", "readP", "write", "writeP", "writez", "discard", "flush", "length"],
        weights=[5, 3, 2, 4, 3, 3, 4, 0.3],
    )[0]
    if op == "flush":
        return "flush"
    if op == "length":
        return "length"
    offset, length = _range(rng, size)
    where = f"{_number(rng, offset)} {_number(rng, length)}"
    if op == "read":
        return f"read {where}"
    if op == "readP":
        return f"read -P {rng.choice(patterns):#x} {where}"
    if op == "write":
        patterns.append(0xCD)
        return f"write {where}"
    if op == "writeP":
        pattern = rng.randint(1, 255)
        patterns.append(pattern)
        return f"write -P {pattern:#x} {where}"
    if op == "writez":
        return f"write -z {where}"
    return f"discard {where}"


def sync_scenarios(count: int, base_seed: int) -> list[Scenario]:
    rng = random.Random(base_seed)
    scenarios = []
    for i in range(count):
        size = _weighted(rng, SIZES)
        sectors = [rng.randint(0, 15) for _ in range(3)] + [size // 512 - 1, size // 512 + 4]
        if rng.random() < 0.25:
            rules: str | None = competing_rules(rng, sectors)
        else:
            rules = random_rules(rng, sectors, max_rules=rng.choice([2, 4, 6]))
        if not rules and rng.random() < 0.5:
            rules = "" if rng.random() < 0.5 else None
        patterns = [0, FILL_BYTE]
        commands = [random_command(rng, size, patterns) for _ in range(rng.randint(1, 14))]
        fill = rng.choice([0, 4096, 16384])
        scenarios.append(Scenario(f"s{base_seed}-{i}", rules, commands, size, min(fill, size)))
    return scenarios


# ---------------------------------------------------------------------------
# Breakpoint scripts (test_breakpoint_conformance), shaped like QEMU iotest 046
# ---------------------------------------------------------------------------
#
# Determinism rules the generator keeps, because qemu-io itself is only
# deterministic under them (its aio requests finish in a thread pool):
# * requests that may be in flight together use disjoint 8 KiB slots, so
#   their completion order cannot change the image or a read's data;
# * no rule watches pwritev_done: whether a synchronous request's poll sees
#   an older aio request's completion is up to qemu-io's thread pool, and
#   these scripts issue synchronous requests that may fail while aio requests
#   are in flight (test_aio_conformance covers pwritev_done rules with scripts
#   built to keep that race out); a breakpoint on pwritev_done is followed at
#   once by wait_break, and never shares its tag with a breakpoint on another
#   request;
# * no sync flush while an aio request is in flight (whether QEMU's flush
#   sees the write as done depends on the thread pool);
# * nothing that would hang qemu-io: no aio_flush, no sync request raising a
#   pending breakpoint's event and no end of script while a request is
#   suspended, no wait_break for a tag nothing will reach.

BREAK_EVENTS = ("read_aio", "write_aio", "pwritev", "pwritev_zero", "pwritev_done")
RULE_EVENTS_AIO = tuple(e for e in RULE_EVENTS if e != "pwritev_done")
#: Breakpoint names qemu-io refuses, and valid ones a raw image never raises.
BAD_EVENTS = ("read_aoi", "READ_AIO", "flush", "write", "bogus_event")
IDLE_EVENTS = ("l2_load", "cluster_alloc", "refblock_load")
SLOT = 8192
TAGS = ("A", "B", "C", "tag1")
_KIND_EVENTS = {
    "read": ("read_aio",),
    "write": ("write_aio", "pwritev", "pwritev_done"),
    "zero": ("pwritev_zero", "pwritev_done"),
}
_TRIGGER = {
    "read_aio": "read",
    "write_aio": "write",
    "pwritev": "write",
    "pwritev_zero": "zero",
    "pwritev_done": "write",
}


class BreakScript:
    """Builds one breakpoint script while tracking what is pending and in flight."""

    def __init__(self, rng: random.Random, size: int) -> None:
        self.rng = rng
        self.size = size
        self.commands: list[str] = []
        self.pending: dict[str, list[str]] = {}  # event -> tags of pending breakpoints
        self.slots = iter(range(2, size // SLOT))
        self.in_flight = False  # aio requests since the last aio_flush
        self.patterns = [0, FILL_BYTE, 0xCD]
        self.extra_rules: list[str] = []  # ini groups a template wants appended
        self.trigger: tuple[str, int, int, int] = (
            "read",
            0,
            0,
            0,
        )  # last aio: kind, where, pattern

    def add(self, *commands: str) -> None:
        self.commands.extend(commands)

    def _slot_range(self) -> tuple[int, int]:
        base = next(self.slots) * SLOT
        offset = base + self.rng.choice([0, 0, 512, 1024, 100, 7])
        length = self.rng.choice([512, 512, 1024, 4096, 100, 1])
        return offset, min(length, base + SLOT - offset)

    def _safe(self, kind: str) -> bool:
        return not any(self.pending.get(e) for e in _KIND_EVENTS[kind])

    def aio(self, kind: str) -> None:
        """An aio request of ``kind`` on a fresh slot (it may hit a pending breakpoint)."""
        offset, length = self._slot_range()
        pattern = 0
        if kind == "read":
            check = f"-P {self.rng.choice(self.patterns):#x} " if self.rng.random() < 0.4 else ""
            self.add(f"aio_read {check}{offset} {length}")
        elif kind == "write":
            pattern = self.rng.randint(1, 255)
            self.patterns.append(pattern)
            self.add(f"aio_write -P {pattern:#x} {offset} {length}")
        else:
            self.add(f"aio_write -z {offset} {length}")
        self.trigger = (kind, offset, length, pattern)
        for event in _KIND_EVENTS[kind]:
            # The request consumes the breakpoints of the first event that has
            # some and stops there; later ones stay reserved for it (a template
            # that resumes it pops them).
            if self.pending.pop(event, None):
                break
        self.in_flight = True

    def other_aio(self) -> None:
        kinds = [k for k in _KIND_EVENTS if self._safe(k)]
        if kinds:
            self.aio(self.rng.choice(kinds))

    def sync(self, anywhere: bool = False) -> None:
        """A sync request that raises no pending breakpoint's event."""
        choices = ["read", "readP", "write", "zero", "discard"]
        if not self.in_flight:
            choices.append("flush")
        op = self.rng.choice(choices)
        kind = {"readP": "read", "discard": None, "flush": None}.get(op, op)
        if kind is not None and not self._safe(kind):
            op = "discard"
        if op == "flush":
            self.add("flush")
            return
        if anywhere:
            offset, length = _range(self.rng, self.size)
        else:
            offset, length = self._slot_range()
        if op == "read":
            self.add(f"read {offset} {length}")
        elif op == "readP":
            self.add(f"read -P {self.rng.choice(self.patterns):#x} {offset} {length}")
        elif op == "write":
            pattern = self.rng.randint(1, 255)
            self.patterns.append(pattern)
            self.add(f"write -P {pattern:#x} {offset} {length}")
        elif op == "zero":
            self.add(f"write -z {offset} {length}")
        else:
            self.add(f"discard {offset} {length}")

    def brk(self, event: str, tag: str) -> None:
        self.add(f"break {event} {tag}")
        if event in BREAK_EVENTS or event in IDLE_EVENTS:
            self.pending.setdefault(event, []).append(tag)

    def errors(self, used: set[str]) -> None:
        """Breakpoint commands qemu-io refuses: unknown events and tags."""
        free = [t for t in ("Z", "nope", "X1") if t not in used]
        for _ in range(self.rng.randint(1, 2)):
            what = self.rng.random()
            if what < 0.35:
                self.add(f"break {self.rng.choice(BAD_EVENTS)} {self.rng.choice(TAGS)}")
            elif what < 0.7:
                self.add(f"resume {self.rng.choice(free)}")
            else:
                self.add(f"remove_break {self.rng.choice(free)}")

    def peek_held_write(self, event: str, held: tuple[str, int, int, int]) -> None:
        """Read the slot of ``held``, a write still held before its data went
        out (between two resumes of one request): it must show the old bytes."""
        kind, offset, length, pattern = held
        if kind != "read" and event != "pwritev_done" and self._safe("read"):
            self.add(f"read -P {pattern:#x} {offset} {length}")

    def flush_aio(self) -> None:
        self.add("aio_flush")
        self.in_flight = False

    def middle(self, used: set[str]) -> None:
        """What happens while a request is suspended: more requests, errors."""
        for _ in range(self.rng.randint(0, 3)):
            if self.rng.random() < 0.6:
                self.other_aio()
            else:
                self.sync()
        if self.rng.random() < 0.3:
            self.errors(used)


def _tpl_basic(b: BreakScript, rng: random.Random) -> None:
    """046's shape: break, a request that raises the event, wait, more, resume."""
    event, tag = rng.choice(BREAK_EVENTS), rng.choice(TAGS)
    b.brk(event, tag)
    b.aio(_TRIGGER[event])
    b.add(f"wait_break {tag}")
    b.middle({tag})
    b.add(f"resume {tag}" if rng.random() < 0.7 else f"remove_break {tag}")


def _tpl_two_tags(b: BreakScript, rng: random.Random) -> None:
    """Two tags on one event: one request suspended under both, two resumes."""
    event = rng.choice(BREAK_EVENTS)
    first, second = rng.sample(TAGS, 2)
    b.brk(event, first)
    b.brk(event, second)
    b.aio(_TRIGGER[event])
    held = b.trigger
    waits = [first, second]
    rng.shuffle(waits)
    b.add(*(f"wait_break {t}" for t in waits[: rng.randint(1, 2)]))
    b.middle({first, second})
    order = [first, second]
    rng.shuffle(order)
    verb = "resume" if rng.random() < 0.75 else "remove_break"
    b.add(f"{verb} {order[0]}")
    if rng.random() < 0.5:
        b.peek_held_write(event, held)  # one resume of two: still held
    b.add(f"{verb} {order[1]}")


def _tpl_one_tag_twice(b: BreakScript, rng: random.Random) -> None:
    """Two breakpoints with one tag: the first request consumes both."""
    event = rng.choice(BREAK_EVENTS[:4])
    tag = rng.choice(TAGS)
    b.brk(event, tag)
    b.brk(event, tag)
    b.aio(_TRIGGER[event])
    held = b.trigger
    if rng.random() < 0.6:
        b.aio(_TRIGGER[event])  # not suspended: both breakpoints are gone
    b.add(f"wait_break {tag}")
    b.middle({tag})
    if rng.random() < 0.8:
        b.add(f"resume {tag}")
        if rng.random() < 0.5:
            b.peek_held_write(event, held)  # one resume of two: still held
        b.add(f"resume {tag}")
        if rng.random() < 0.5:
            b.add(f"resume {tag}")  # nothing left: an error
    else:
        b.add(f"remove_break {tag}")


def _tpl_tag_on_two_events(b: BreakScript, rng: random.Random) -> None:
    """One tag on two requests' events: resume takes the most recent first."""
    kinds = rng.sample(["read", "write", "zero"], 2)
    events = [rng.choice([e for e in _KIND_EVENTS[k] if e != "pwritev_done"]) for k in kinds]
    tag = rng.choice(TAGS)
    for event in events:
        b.brk(event, tag)
    if rng.random() < 0.6:
        # Armed by the second request before it suspends: whichever request
        # resumes first is checked first and takes the error.
        b.extra_rules.append(f'[inject-error]\nevent = "{events[1]}"\nerrno = "28"\nonce = "on"\n')
    b.aio(kinds[0])
    b.add(f"wait_break {tag}")
    b.aio(kinds[1])
    b.middle({tag})
    if rng.random() < 0.7:
        b.add(f"resume {tag}", f"resume {tag}")
    else:
        b.add(f"remove_break {tag}")


def _tpl_chain(b: BreakScript, rng: random.Random) -> None:
    """Two events of one request: resuming the first runs it into the second."""
    kind = rng.choice(["write", "zero"])
    first, second = _KIND_EVENTS[kind][0], rng.choice(_KIND_EVENTS[kind][1:])
    tag1, tag2 = rng.sample(TAGS, 2)
    b.brk(first, tag1)
    b.brk(second, tag2)
    b.aio(kind)
    b.add(f"wait_break {tag1}")
    b.middle({tag1, tag2})
    b.add(f"resume {tag1}", f"wait_break {tag2}", f"resume {tag2}")
    b.pending.pop(second, None)


def _tpl_pending_removed(b: BreakScript, rng: random.Random) -> None:
    """A suspended request plus a pending breakpoint with its tag: remove_break
    resumes the one and drops the other, so a later request goes through."""
    kinds = rng.sample(["read", "write", "zero"], 2)
    tag = rng.choice(TAGS)
    hit = rng.choice([e for e in _KIND_EVENTS[kinds[0]] if e != "pwritev_done"])
    b.brk(hit, tag)
    b.aio(kinds[0])
    b.add(f"wait_break {tag}")
    later = rng.choice(
        IDLE_EVENTS + tuple(e for e in _KIND_EVENTS[kinds[1]] if e != "pwritev_done")
    )
    b.brk(later, tag)
    b.middle({tag})
    b.add(f"remove_break {tag}")
    b.pending.clear()
    b.aio(kinds[1])


def _tpl_errors(b: BreakScript, rng: random.Random) -> None:
    """Unknown events and tags; a breakpoint that is never hit."""
    b.errors(set())
    if rng.random() < 0.5:
        event = rng.choice(IDLE_EVENTS + BREAK_EVENTS)
        b.brk(event, rng.choice(TAGS))
        for _ in range(rng.randint(0, 2)):
            b.sync()
        if rng.random() < 0.5:
            b.add(f"remove_break {b.pending[event][0]}")
            b.pending.clear()
    b.errors(set())


TEMPLATES = (
    (_tpl_basic, 5),
    (_tpl_two_tags, 2),
    (_tpl_one_tag_twice, 2),
    (_tpl_tag_on_two_events, 2),
    (_tpl_chain, 2),
    (_tpl_pending_removed, 1),
    (_tpl_errors, 1),
)


def breakpoint_scenarios(count: int, base_seed: int) -> list[Scenario]:
    rng = random.Random(base_seed)
    scenarios = []
    for i in range(count):
        size = rng.choice([1 << 20, 1 << 20, 262144])
        template = rng.choices([t for t, _ in TEMPLATES], weights=[w for _, w in TEMPLATES])[0]
        plain = template is _tpl_errors and rng.random() < 0.3
        sectors = [rng.randint(0, 15), rng.randint(32, 80), rng.randint(32, 80)]
        rules: str | None = (
            "" if rng.random() < 0.4 else random_rules(rng, sectors, RULE_EVENTS_AIO, max_rules=3)
        )
        b = BreakScript(rng, size)
        for _ in range(rng.randint(0, 3)):
            b.sync(anywhere=True)
        template(b, rng)
        if b.in_flight or rng.random() < 0.5:
            b.flush_aio()
        for _ in range(rng.randint(0, 3)):
            b.sync(anywhere=True)
        if b.extra_rules and not plain:
            rules = "\n".join(filter(None, [rules, *b.extra_rules]))
        fill = rng.choice([0, 65536])
        scenarios.append(
            Scenario(
                f"b{base_seed}-{i}-{template.__name__[5:]}",
                None if plain else rules,
                b.commands,
                size,
                fill,
                ordered=False,
            )
        )
    return scenarios
