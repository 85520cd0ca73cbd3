"""The package's layering: imports only run downward, with no cycle.

Every ``import`` and ``from ... import`` in the package is read from the
source (with ``ast``, so imports inside functions, the lazy ones, count too,
and ``if TYPE_CHECKING:`` imports as well: a type-only upward import is
still a dependency a reader must chase). Each module belongs to a layer; a
module may import only modules of its own layer or of a lower one, and the
module graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "pytest_blkdebug"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

#: Lowest first. A module's layer is given by the longest dotted prefix of its
#: name (relative to the package) listed here.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # The NBD server is generic over a small backend protocol (nbdkit's
    # shape), so it sits below the core, which serves a Disk through it.
    ("nbd server", ("nbd",)),
    ("core", ("core",)),
    ("rulefiles", ("rulefiles",)),
    ("library services", ("report", "harness")),
    ("views and tools", ("nbd.cli", "nbd.__main__", "qemuio", "adapters")),
    ("pytest plugin", ("plugin",)),
    ("package entry points", ("__init__", "__main__")),
]


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best < 0:
        raise AssertionError(f"module {module!r} has no layer: add it to LAYERS in {__file__}")
    return best


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def type_only_nodes(tree: ast.AST) -> set[ast.AST]:
    """The import nodes under ``if TYPE_CHECKING:`` (never executed)."""
    nodes: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                nodes.update(ast.walk(child))
    return nodes


def imports_of(path: Path, root: Path = ROOT, *, runtime_only: bool = False) -> set[str]:
    """The package modules ``path`` imports (relative to the package); with
    ``runtime_only``, leave out the ``if TYPE_CHECKING:`` ones."""
    tree = ast.parse(path.read_text(), str(path))
    skip = type_only_nodes(tree) if runtime_only else set()
    name = module_name(path, root)
    here = name.split(".") if name != "__init__" else []
    base = here if is_package(path) else here[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    found.add(alias.name[len(PACKAGE) + 1 :] or "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module is None or not (
                    node.module == PACKAGE or node.module.startswith(PACKAGE + ".")
                ):
                    continue
                target = (
                    node.module[len(PACKAGE) + 1 :].split(".") if node.module != PACKAGE else []
                )
            else:
                anchor = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = anchor + (node.module.split(".") if node.module else [])
            for alias in node.names:
                # ``from . import protocol`` imports a submodule when one exists.
                candidate = [*target, alias.name]
                if resolve(candidate, root) is not None:
                    found.add(".".join(candidate))
                else:
                    found.add(".".join(target) if target else "__init__")
    return found


def resolve(parts: list[str], root: Path = ROOT) -> Path | None:
    path = root.joinpath(*parts)
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def graph(*, runtime_only: bool = False) -> dict[str, set[str]]:
    modules = all_modules()
    return {
        name: imports_of(path, runtime_only=runtime_only) & modules.keys() - {name}
        for name, path in modules.items()
    }


def test_every_module_has_a_layer() -> None:
    for name in all_modules():
        layer_of(name)


def test_imports_only_run_downward() -> None:
    upward = [
        f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for name, targets in graph().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(name)
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycle() -> None:
    """No cycle among the imports that run (module level or lazy). Type-only
    imports cannot form a cycle at run time; they still obey the layers."""
    edges = graph(runtime_only=True)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_checker_finds_lazy_relative_and_type_only_imports(tmp_path: Path) -> None:
    """The reader itself, on a made-up package: every spelling is found."""
    pkg = tmp_path / PACKAGE
    (pkg / "core").mkdir(parents=True)
    (pkg / "plugin").mkdir()
    for init in (pkg, pkg / "core", pkg / "plugin"):
        (init / "__init__.py").write_text("")
    (pkg / "plugin" / "options.py").write_text("")
    (pkg / "plugin" / "hookspecs.py").write_text("")
    (pkg / "core" / "disk.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..plugin import hookspecs\n"
        "def serve():\n    from pytest_blkdebug.plugin.options import x\n"
        "    import pytest_blkdebug.core\n"
    )
    found = imports_of(pkg / "core" / "disk.py", pkg)
    assert found == {"plugin.hookspecs", "plugin.options", "core"}
    runtime = imports_of(pkg / "core" / "disk.py", pkg, runtime_only=True)
    assert runtime == {"plugin.options", "core"}


#: The front ends that must build engines and open disks through ``harness``
#: (issue 9: the bookkeeping of engines, rules and events written once). The
#: sweep plugin is not among them: each sweep point makes its own counting
#: engine on purpose (plugin/sweep.py).
FRONT_ENDS = ("qemuio", "nbd/cli.py", "adapters")
ASSEMBLY_CALLS = {"Engine", "load_rules", "loads_ini", "loads_toml"}


def assembly_calls(path: Path) -> list[str]:
    """``Engine(...)``, ``load_rules(...)`` and friends called in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in ASSEMBLY_CALLS:
                found.append(f"{path.name}:{node.lineno}: {name}(...)")
    return found


def test_front_ends_assemble_engines_through_the_harness(tmp_path: Path) -> None:
    paths: list[Path] = []
    for entry in FRONT_ENDS:
        target = ROOT / entry
        paths += sorted(target.rglob("*.py")) if target.is_dir() else [target]
    assert len(paths) > 3
    offenders = [line for path in paths for line in assembly_calls(path)]
    assert offenders == [], "build engines with harness.Harness:\n" + "\n".join(offenders)
    # The check sees a direct construction, by name or through a module.
    sample = tmp_path / "sample.py"
    sample.write_text("from x import Engine, rulefiles\ne = Engine()\nrulefiles.load_rules('a')\n")
    assert assembly_calls(sample) == ["sample.py:2: Engine(...)", "sample.py:3: load_rules(...)"]
