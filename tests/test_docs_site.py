"""The documentation site builds: ``mkdocs build --strict`` with the API
reference generated from the package's docstrings (mkdocs.yml, docs/api.md),
and docs/api.md's tables name every argument the documented classes take."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_blkdebug as bd

ROOT = Path(__file__).resolve().parent.parent


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python"):
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            found = None
        if found is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[test]')")
    site = tmp_path / "site"
    argv = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    api = (site / "api" / "index.html").read_text()
    for name in ("pytest_blkdebug.Disk", "hold_timeout", "pytest_blkdebug.RuleStatus", "sync"):
        assert name in api, name  # the generated part is there, not just the tables
    assert not re.search(r":(meth|func|class|attr):<code>", api)  # roles shown as code
    assert (site / "index.html").exists() and (site / "BENCHMARKS" / "index.html").exists()


def test_every_page_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:\n", 1)[1].split("\ntheme:", 1)[0]
    listed = set(re.findall(r": (\S+\.md)$", nav, re.MULTILINE))
    pages = {path.name for path in (ROOT / "docs").glob("*.md")}
    assert pages - listed == set(), "add these pages to mkdocs.yml's nav"
    assert listed - pages - {"index.md", "BENCHMARKS.md"} == set(), "nav names missing pages"


def arguments(call: object) -> list[str]:
    return [
        name
        for name, p in inspect.signature(call).parameters.items()  # type: ignore[arg-type]
        if name not in ("self", "cls") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]


@pytest.mark.parametrize(
    ("call", "page"),
    [
        (bd.Disk.__init__, "api.md"),
        (bd.Disk.create, "api.md"),
        (bd.Disk.open, "api.md"),
        (bd.Engine.__init__, "api.md"),
        (bd.Disk.serve_nbd, "nbd.md"),
    ],
    ids=["Disk", "Disk.create", "Disk.open", "Engine", "Disk.serve_nbd"],
)
def test_api_page_names_every_argument(call: object, page: str) -> None:
    missing = [name for name in arguments(call) if name not in table_names(page)]
    assert not missing, f"docs/{page} has no table row for {missing}: add one"


def table_names(page: str) -> set[str]:
    """The `names` in the first cell of the page's table rows."""
    names: set[str] = set()
    for line in (ROOT / "docs" / page).read_text().splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def test_api_page_names_every_rule_status_field() -> None:
    fields = [f.name for f in dataclasses.fields(bd.RuleStatus)] + ["fired"]
    missing = [name for name in fields if name not in table_names("api.md")]
    assert not missing, f"docs/api.md has no RuleStatus row for {missing}"
