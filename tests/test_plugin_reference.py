"""docs/reference.md runs as written.

The page's examples are marked with HTML comments (invisible when rendered):

- ``<!-- example NAME PATH -->`` before a code block: a file of example NAME;
- ``<!-- run NAME [ARGS...] -> passed=1 errors=1 -->``: run pytest with ARGS
  over the example's files and expect exactly those outcomes;
- ``<!-- output NAME -->`` before a code block: every line of the block
  (spacing folded; lines with a temporary path skipped) is part of a line of
  the output of the example's first run;
- ``<!-- requires NAME PROGRAM -->``: skip the example when PROGRAM is absent.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference.md"
BLOCK_AFTER = r"\s*```[a-z]*\n(.*?)```"
EXAMPLE = re.compile(r"<!-- example (\S+) (\S+) -->" + BLOCK_AFTER, re.DOTALL)
OUTPUT = re.compile(r"<!-- output (\S+) -->" + BLOCK_AFTER, re.DOTALL)
RUN = re.compile(r"<!-- run (\S+)(.*?) -> (.*?) -->")
REQUIRES = re.compile(r"<!-- requires (\S+) (\S+) -->")


def parse() -> dict[str, dict[str, list]]:
    text = REFERENCE.read_text()
    examples: dict[str, dict[str, list]] = defaultdict(
        lambda: {"files": [], "runs": [], "outputs": [], "requires": []}
    )
    for name, path, body in EXAMPLE.findall(text):
        examples[name]["files"].append((path, body))
    for name, args, outcome in RUN.findall(text):
        expected = {k: int(v) for k, v in (pair.split("=") for pair in outcome.split())}
        examples[name]["runs"].append((shlex.split(args), expected))
    for name, body in OUTPUT.findall(text):
        examples[name]["outputs"].append(body)
    for name, program in REQUIRES.findall(text):
        examples[name]["requires"].append(program)
    return dict(examples)


EXAMPLES = parse()


def test_reference_covers_every_fixture_marker_option_and_hook() -> None:
    text = REFERENCE.read_text()
    names = [
        "blkdebug_disk",
        "blkdebug_disk_factory",
        "blkdebug_nbd",
        "inject_error",
        "set_state",
        "blkdebug_rules",
        "@pytest.mark.blkdebug(",
        "--blkdebug-rules",
        "blkdebug_events",
        "--blkdebug-events",
        "blkdebug_image_size",
        "--blkdebug-image-size",
        "blkdebug_report",
        "--blkdebug-report",
        "blkdebug_strict",
        "--blkdebug-strict",
        "blkdebug_wait_timeout",
        "--blkdebug-wait-timeout",
        "--blkdebug-no-rules",
        "blkdebug_hold_timeout",
        "--blkdebug-hold-timeout",
        "blkdebug_seed",
        "--blkdebug-seed",
        "--blkdebug-sweep",
        "--blkdebug-crash",
        "blkdebug_sweep",
        "blkdebug_crash",
        "blkdebug_split",
        "pytest_blkdebug_register_events",
        "pytest_blkdebug_rule_hit",
        "pytest_blkdebug_make_image",
    ]
    for name in names:
        assert f"`{name}" in text, name
    assert len(EXAMPLES) >= 10
    for name, example in EXAMPLES.items():
        assert example["files"] and example["runs"], f"example {name!r} has no files or runs"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_reference_example(pytester: pytest.Pytester, name: str) -> None:
    example = EXAMPLES[name]
    for program in example["requires"]:
        if shutil.which(program) is None:
            pytest.skip(f"{program} not installed")
    for path, body in example["files"]:
        target = pytester.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)
    first = None
    for args, expected in example["runs"]:
        result = pytester.runpytest("-p", "no:cacheprovider", *args)
        result.assert_outcomes(**expected)
        first = first or result
    assert first is not None
    out = [" ".join(line.split()) for line in first.stdout.lines]
    for block in example["outputs"]:
        for line in block.splitlines():
            if "/tmp/" in line or not line.strip():
                continue
            wanted = " ".join(line.split())
            assert any(wanted in got for got in out), line
