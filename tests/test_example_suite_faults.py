"""The example suite's fault tests depend on their faults.

Runs ``example_suite`` twice in subprocesses: as is (all green) and with
``--blkdebug-no-rules`` (disks made, no rules loaded), where every test not
marked ``no_fault`` must fail. A fault test that still passed without its
rules would prove nothing about the fault.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("apsw")
pytest.importorskip("littlefs")


def run_suite(tmp_path: Path, *extra: str) -> dict[str, str]:
    """Outcome per test id, from a JUnit-free one-line-per-test report."""
    log = tmp_path / f"log{len(extra)}.jsonl"
    plugin = tmp_path / "outcome_log.py"
    plugin.write_text(
        "import json, os\n"
        "def pytest_runtest_logreport(report):\n"
        "    if report.when == 'call' or report.outcome != 'passed':\n"
        "        with open(os.environ['OUTCOME_LOG'], 'a') as f:\n"
        "            f.write(json.dumps([report.nodeid, report.when, report.outcome,"
        " 'no_fault' in report.keywords]) + '\\n')\n"
    )
    env = {**os.environ, "OUTCOME_LOG": str(log), "PYTHONPATH": str(tmp_path)}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "example_suite",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "outcome_log",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    outcomes: dict[str, str] = {}
    no_fault: set[str] = set()
    for line in log.read_text().splitlines():
        nodeid, _when, outcome, marked = json.loads(line)
        if outcomes.get(nodeid) != "failed":
            outcomes[nodeid] = outcome
        if marked:
            no_fault.add(nodeid)
    return {n: ("no_fault:" if n in no_fault else "") + o for n, o in outcomes.items()}


def test_suite_is_green_and_every_fault_test_fails_without_its_rules(tmp_path):
    normal = run_suite(tmp_path)
    assert len(normal) >= 15
    assert all(o.endswith("passed") for o in normal.values()), normal
    without = run_suite(tmp_path, "--blkdebug-no-rules")
    assert without.keys() == normal.keys()
    still_passing = [n for n, o in without.items() if o == "passed"]
    assert still_passing == [], f"fault tests that pass without their faults: {still_passing}"
    assert all(o == "no_fault:passed" for o in without.values() if o.startswith("no_fault:"))
