"""The house gates: ruff (lint and format) and mypy are clean.

They run as tests so CI, which runs the README's test command, enforces them.
A tool that is not installed skips with its name (``pip install -e '.[test]'``
installs both).
"""

from __future__ import annotations

import importlib.util
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
