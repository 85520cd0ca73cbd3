"""A newcomer's first hour (issue 12): the README's commands work on a fresh
machine, what docs/api.md promises about ``disk.fileobj()`` holds, and
docs/events.md and docs/rule-files.md quote the unknown-event errors as printed.

Item 18: Debian 12 and Ubuntu 24.04 refuse ``pip install`` into the system
Python (PEP 668), so each README command makes a virtual environment and runs
pip and pytest from it. The static checks below run everywhere; the full run
(a fresh clone, no virtual environment active, ``env -i``) is opt-in, as it
installs packages: ``BLKDEBUG_README_RUN=1 pytest tests/test_first_hour.py``.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import pytest_blkdebug as bd

ROOT = Path(__file__).resolve().parent.parent


def ci_commands() -> dict[str, str]:
    """The command line right after each ``<!-- ci: NAME -->`` in README.md."""
    lines = (ROOT / "README.md").read_text().splitlines()
    commands = {}
    for i, line in enumerate(lines):
        found = re.match(r"<!--\s*ci:\s*(\S+)\s*-->", line)
        if found:
            assert lines[i + 1].startswith("$ "), f"README.md:{i + 2}: a '$ ' command line"
            commands[found.group(1)] = lines[i + 1][2:]
    return commands


def test_the_readme_has_the_two_ci_commands() -> None:
    commands = ci_commands()
    assert sorted(commands) == ["examples", "tests"]
    assert commands["examples"].endswith("pytest example_suite")
    assert re.search(r"pytest( -n \S+)?$", commands["tests"])


@pytest.mark.parametrize("name", ["examples", "tests"])
def test_each_readme_command_installs_into_its_own_virtual_environment(name: str) -> None:
    steps = [step.strip() for step in ci_commands()[name].split("&&")]
    venv = [i for i, step in enumerate(steps) if re.fullmatch(r"python3 -m venv (\S+)", step)]
    assert venv, f"{name}: no 'python3 -m venv DIR' step: pip would target the system Python"
    where = steps[venv[0]].split()[-1]
    tools = [step for step in steps if re.match(r"(\S*/)?(pip3?|pytest|python3?)\b", step)]
    tools.remove(steps[venv[0]])
    assert tools, f"{name}: nothing runs from the virtual environment"
    for step in tools:
        assert step.startswith(f"{where}/bin/"), f"{name}: {step!r} does not run from {where}"
        assert steps.index(step) > venv[0], f"{name}: {step!r} runs before the venv exists"
    assert "--break-system-packages" not in ci_commands()[name]
    assert "python3-venv" in ci_commands()[name], "Debian's python3 has no venv module without it"


@pytest.mark.skipif(
    os.environ.get("BLKDEBUG_README_RUN") != "1", reason="set BLKDEBUG_README_RUN=1 (installs)"
)
@pytest.mark.parametrize("name", ["examples", "tests"])
def test_each_readme_command_passes_on_a_fresh_clone(name: str, tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    clone = tmp_path / "fresh"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    command = ci_commands()[name]
    if os.geteuid() != 0:  # apt-get needs root: the rest runs as written
        command = "python3 -m venv" + command.split("&& python3 -m venv", 1)[1]
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    result = subprocess.run(
        ["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True, timeout=3600
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


# -- item 29: os.fsync(f.fileno()) on disk.fileobj() -----------------------------------


def test_fileobj_has_no_descriptor_and_its_sync_is_the_disks_flush(tmp_path: Path) -> None:
    """docs/api.md: ``os.fsync(f.fileno())`` cannot work (there is no
    descriptor to sync through the engine); ``f.sync()`` is the disk's
    flush, which a rule on flush_to_disk fails as a failing fsync would."""
    rule = bd.InjectError("flush_to_disk", once=True, name="fsync")
    with bd.Disk.create(tmp_path / "img", 4096, rules=[rule]) as disk:
        f = disk.fileobj()
        f.write(b"hello")
        with pytest.raises(io.UnsupportedOperation, match=r"call its sync\(\)"):
            os.fsync(f.fileno())
        assert disk.dirty
        with pytest.raises(OSError):
            f.sync()
        assert disk.rule("fsync").hits == 1
        f.sync()
        assert not disk.dirty
    page = (ROOT / "docs" / "api.md").read_text()
    section = page.split("## `DiskFile`", 1)[1].split("\n## ", 1)[0]
    assert "os.fsync(f.fileno())" in section and "f.sync()" in section


# -- item 29: events.md and rule-files.md agree on unknown events ---------------------


def quoted(page: str, word: str) -> list[str]:
    """The error messages quoted in `code spans` of docs/PAGE's prose that
    mention WORD (lines joined)."""
    prose = re.sub(r"```.*?```", "", (ROOT / "docs" / page).read_text(), flags=re.DOTALL)
    text = " ".join(prose.split())
    spans = re.findall(r"`([^`]+)`", text)
    return [s for s in spans if word in s and ("unknown event" in s or "invalid param" in s)]


def test_events_and_rule_files_pages_quote_what_an_unknown_event_really_gives() -> None:
    from pytest_blkdebug.rulefiles import loads_ini, loads_toml

    outputs = []
    for load, text, path in [
        (loads_toml, '[[inject-error]]\nevent = "wirte_aio"\n', "rules/a.toml"),
        (loads_ini, '[inject-error]\nevent = "wirte_aio"\n', "rules.ini"),
    ]:
        with pytest.raises(bd.RuleFileError) as info:
            load(text, path=path)
        outputs += [str(info.value), str(info.value.hint)]
    with pytest.raises(bd.RuleError) as error:
        bd.Engine([bd.InjectError("wirte_aio")])
    outputs.append(str(error.value))
    ini_text = "invalid parameter value: wirte_aio"  # QEMU's own
    for page in ("events.md", "rule-files.md"):
        spans = quoted(page, "wirte_aio")
        assert spans, f"docs/{page} quotes no unknown-event error"
        wrong = [s for s in spans if not any(s in out for out in outputs)]
        assert wrong == [], f"docs/{page} quotes errors nothing prints: {wrong}"
        assert any("did you mean 'write_aio'" in s for s in spans), page
    assert any(ini_text in s for s in quoted("events.md", "wirte_aio"))
    assert ini_text in (ROOT / "docs" / "rule-files.md").read_text()
