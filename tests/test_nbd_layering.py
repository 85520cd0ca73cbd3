"""The NBD server sits below the core; only ``nbd.cli`` sits above it.

``core.disk`` imports ``nbd.server`` for ``Disk.serve_nbd`` (an ordinary,
downward import), so the server's modules must import nothing from the
package outside ``nbd``'s lower modules -- not even lazily or for typing --
and nothing in ``core`` may reach ``nbd.cli``. See ``pytest_blkdebug/nbd``'s
docstring.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_blkdebug"
LOWER_NBD = ["__init__", "protocol", "backend", "handshake", "connection", "server"]


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (functions and
    ``TYPE_CHECKING`` blocks included), as absolute dotted names."""
    package = "pytest_blkdebug." + ".".join(path.relative_to(PACKAGE).parent.parts)
    package = package.rstrip(".")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("module", LOWER_NBD)
def test_the_server_imports_nothing_of_the_package_outside_its_own_layer(module: str) -> None:
    allowed = {f"pytest_blkdebug.nbd.{m}" for m in LOWER_NBD} | {"pytest_blkdebug.nbd"}
    ours = {
        name
        for name in _imports(PACKAGE / "nbd" / f"{module}.py")
        if name.startswith("pytest_blkdebug")
    }
    # "from . import protocol as P" names pytest_blkdebug.nbd.protocol too
    outside = {n for n in ours if not any(n == a or n.startswith(a + ".") for a in allowed)}
    assert not outside, f"nbd.{module} imports {sorted(outside)}"
    for name in ours:
        assert not name.startswith("pytest_blkdebug.nbd.cli"), name
    stdlib = {n.split(".")[0] for n in _imports(PACKAGE / "nbd" / f"{module}.py")} - {
        "pytest_blkdebug",
        "__future__",
    }
    assert stdlib <= sys.stdlib_module_names, stdlib - sys.stdlib_module_names


def test_core_reaches_nbd_only_through_the_server() -> None:
    for path in sorted((PACKAGE / "core").glob("*.py")):
        for name in _imports(path):
            if name.startswith("pytest_blkdebug.nbd"):
                assert name.split(".")[2] == "server", f"{path.name} imports {name}"
