"""The documentation's examples run as written.

README's quick start and every ``python`` block in docs/ that starts with a
``# docs-test: NAME`` line are written to a test file and run by pytester with
the plugin, so an example that stops working fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def quick_start() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    return BLOCK.search(section).group(1)


def doc_examples() -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / "docs").glob("*.md")):
        for block in BLOCK.findall(path.read_text()):
            first = block.splitlines()[0] if block.strip() else ""
            if first.startswith("# docs-test:"):
                found.append((f"{path.name}:{first.split(':', 1)[1].strip()}", block))
    return found


def test_readme_quick_start_is_at_most_ten_lines_and_passes(pytester):
    code = quick_start()
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 10, f"quick start has {len(lines)} lines"
    pytester.makepyfile(test_quick_start=code)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_docs_have_runnable_examples():
    assert len(doc_examples()) >= 2


@pytest.mark.parametrize("name,code", doc_examples(), ids=[n for n, _ in doc_examples()])
def test_doc_example_passes(pytester, name, code):
    pytester.makepyfile(test_example=code)
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    assert result.parseoutcomes().get("passed", 0) >= 1


def test_readme_sample_report_is_what_the_quick_start_prints(pytester):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## What a report looks like", 1)[1]
    shown = re.search(r"```text\n(.*?)```", section, re.DOTALL).group(1).splitlines()
    pytester.makepyfile(test_quick_start=quick_start() + '    assert False, "show the report"\n')
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    lines = result.stdout.lines
    start = next(
        i for i, line in enumerate(lines) if line.startswith("---") and " blkdebug " in line
    )
    printed = lines[start : start + len(shown)]

    def normal(line: str) -> str:  # the image path differs from run to run
        return re.sub(r"^disk \S+", "disk IMAGE", line)

    assert [normal(line) for line in printed] == [normal(line) for line in shown]
