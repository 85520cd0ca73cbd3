"""Random rule files and qemu-io scripts, run through real qemu-io and blkdebug-io.

Shared by ``test_conformance.py`` (synchronous requests) and
``test_breakpoint_conformance.py`` (QEMU iotest 046-shaped breakpoint
scripts). A ``Scenario`` is a QEMU ini rule file, an image (size and initial
content) and a list of qemu-io commands. ``run_scenarios`` runs every
scenario through ``qemu-io -f raw -t writeback`` (in a thread pool, with a
timeout) and through ``pytest_blkdebug.cli.main`` in-process, and compares
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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from qemu_helpers import run_qemu_io

from pytest_blkdebug import cli

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
    """A QEMU ini file with 0..max_rules inject-error and set-state rules."""
    groups: list[str] = []
    for i in range(rng.randint(0, max_rules)):
        lines: list[str]
        if rng.random() < 0.65:
            header = f'[inject-error "r{i}"]' if rng.random() < 0.2 else "[inject-error]"
            lines = [header, f'event = "{rng.choice(events)}"']
            if rng.random() < 0.85:
                lines.append(f'errno = "{_weighted(rng, ERRNOS)}"')
            if rng.random() < 0.4:
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
            if rng.random() < 0.85:
                lines.append(f'new_state = "{rng.randint(0, 3)}"')
        groups.append("\n".join(lines) + "\n")
    return "\n".join(groups)


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

    def reproduction(self) -> str:
        prep = f"truncate -s {self.size} img.raw"
        if self.fill:
            prep += f" && qemu-io -f raw -c 'write -P {FILL_BYTE:#x} 0 {self.fill}' img.raw"
        args = " ".join(shlex.quote(a) for a in self.qemu_args())
        rules = (
            f"--- r.ini ---\n{self.rules}--- end of r.ini ---\n"
            if self.rules
            else "(no rule file)\n"
        )
        return f"scenario {self.ident}\n{rules}{prep}\nqemu-io {args}\nblkdebug-io {args}"


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


def run_ours(scenario: Scenario, directory: Path) -> Outcome:
    scenario.prepare(directory)
    out, err = io.StringIO(), io.StringIO()
    args = scenario.qemu_args(str(directory / "r.ini"), str(directory / "img.raw"))
    status = cli.main(args, stdout=out, stderr=err)
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


def compare(scenario: Scenario, theirs: Outcome, ours: Outcome) -> str | None:
    """None if the runs agree, else a report with a reproduction."""
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
            scenario.reproduction(),
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


def run_scenarios(
    scenarios: Sequence[Scenario],
    workdir: Path,
    workers: int = 2,
    check: Callable[[Scenario, Outcome, Outcome], str | None] = compare,
) -> Results:
    """qemu-io in a thread pool; blkdebug-io in this thread meanwhile."""
    results = Results()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_qemu, s, workdir / s.ident / "qemu") for s in scenarios]
        ours = [run_ours(s, workdir / s.ident / "ours") for s in scenarios]
        for scenario, future, mine in zip(scenarios, futures, ours, strict=True):
            try:
                theirs = future.result()
            except Exception as exc:  # a qemu-io timeout is a generator bug: report it
                results.disagreements.append(
                    f"qemu-io did not finish: {exc!r}\n{scenario.reproduction()}"
                )
                continue
            results.ran += 1
            problem = check(scenario, theirs, mine)
            if problem:
                results.disagreements.append(problem)
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
        rules: str | None = random_rules(rng, sectors)
        if not rules and rng.random() < 0.5:
            rules = "" if rng.random() < 0.5 else None
        patterns = [0, FILL_BYTE]
        commands = [random_command(rng, size, patterns) for _ in range(rng.randint(1, 10))]
        fill = rng.choice([0, 4096, 16384])
        scenarios.append(Scenario(f"s{base_seed}-{i}", rules, commands, size, min(fill, size)))
    return scenarios
