"""The house gates: ruff (lint and format) and mypy are clean.

They run as tests so CI, which runs the README's test command, enforces them.
A tool that is not installed skips with its name (``pip install -e '.[test]'``
installs both).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["pytest_blkdebug", "tests", "example_suite", "benchmarks", "conftest.py"]


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    # The interpreter running the tests, so a virtual environment that is not
    # activated (the README's commands) still finds its own ruff and mypy.
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed")
    argv = [sys.executable, "-m", tool, *args]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_check_is_clean():
    result = run("ruff", "check", *SOURCES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean():
    result = run("ruff", "format", "--check", *SOURCES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean():
    result = run("mypy", "pytest_blkdebug")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("tool", ["ruff", "mypy"])
def test_the_gates_run_the_pinned_version(tool):
    # An unpinned mypy once gave a flaky INTERNAL ERROR: the test extra pins
    # both tools exactly, and the gates above must be running those versions.
    from importlib import metadata

    pins = [
        req
        for req in metadata.requires("pytest-blkdebug") or []
        if req.startswith(f"{tool}==") and 'extra == "test"' in req
    ]
    assert len(pins) == 1, f"the test extra pins {tool} exactly: {pins}"
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed")
    wanted = pins[0].split(";")[0].split("==")[1].strip()
    assert metadata.version(tool) == wanted, f"{tool} {metadata.version(tool)} != pinned {wanted}"


# -- issue 12 item 30: the hypothesis workaround lives in one conftest ----------------


def test_the_hypothesis_import_workaround_is_only_in_the_conftest():
    # It was copied into five test modules; tests/conftest.py holds it once.
    needle = "import hypothesis.internal." + "observability"
    holders = sorted(
        str(path.relative_to(ROOT))
        for folder in ("tests", "example_suite")
        for path in (ROOT / folder).rglob("*.py")
        if needle in path.read_text()
    )
    assert holders == ["tests/conftest.py"]


# -- issue 12 item 31: references lead somewhere ---------------------------------------

#: names cited on purpose that are not files of the repository: the site's
#: name for README.md, a placeholder in docs/hooks.py, a test's own page
NOT_FILES = {"index.md", "X.md", "docs/X.md", "broken.md"}
#: documents that were cited but never in the repository (spelt in two
#: pieces so this file does not cite them)
GONE = ["blkdebug-" + "semantics", "qemu-" + "observations"]


def cited_pages() -> list[tuple[str, str]]:
    """(file, cited .md path) for every .md path cited outside URLs."""
    cited = []
    files = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "conftest.py"]
    for folder in ("pytest_blkdebug", "tests", "example_suite", "benchmarks", "docs"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".toml")]
    for path in files:
        for line in path.read_text().splitlines():
            for match in re.finditer(r"(?<![\w/.:-])((?:\.\./|docs/)?[\w-]+\.md)\b", line):
                cited.append((str(path.relative_to(ROOT)), match.group(1)))
    return cited


def test_every_cited_page_is_in_the_repository():
    missing = sorted(
        {
            (where, name)
            for where, name in cited_pages()
            if name not in NOT_FILES
            and not (ROOT / name).exists()
            and not (ROOT / "docs" / name).exists()
            and not (ROOT / "docs" / name.removeprefix("../")).exists()
            and not (ROOT / name.removeprefix("../")).exists()
        }
    )
    assert missing == [], f"cited pages that are not in the repository: {missing}"


def test_no_citation_of_documents_that_were_never_in_the_repository():
    this = Path(__file__).resolve()
    found = [
        (str(path.relative_to(ROOT)), gone)
        for folder in ("pytest_blkdebug", "tests", "example_suite", "benchmarks", "docs")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in (".py", ".md", ".toml", ".ini") and path.resolve() != this
        for gone in GONE
        if gone in path.read_text()
    ]
    for top in ("README.md", "BENCHMARKS.md", "pyproject.toml", "mkdocs.yml", "conftest.py"):
        if (ROOT / top).exists():
            found += [(top, gone) for gone in GONE if gone in (ROOT / top).read_text()]
    assert found == [], f"cite docs/events.md or docs/differences.md instead: {found}"
