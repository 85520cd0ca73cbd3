"""The documentation's examples run as written.

Every ``python`` block in README.md and docs/*.md is a test. A page is read
top to bottom as a small project in a fresh directory; HTML comments right
above a block (invisible when rendered, one per line, no blank line between
them and the block) say how the block takes part:

- ``<!-- file: PATH -->``, or a first line ``# PATH`` (``# applog.py``,
  ``# rules/a.toml``): the block, in any language, is the file PATH of the
  page's project; the blocks below it see the file;
- ``<!-- append: PATH -->``: the block is added to the end of PATH (a later
  ``def`` replaces an earlier one, an indented line continues a function);
- ``<!-- expect: failed=1 passed=0 -->``: the outcomes of the block's pytest
  run (default: no failure or error, at least one test passed);
- ``<!-- output: above -->`` before a ``text``/``console`` block: its lines,
  in order, are lines of the output of the python block above it;
  ``<!-- output: pytest ARGS -->``: of ``pytest ARGS`` run in the page's
  project at that point; ``<!-- output: shell -->``: of the block's own
  ``$ `` commands, run there with bash (``$ `` lines, blank lines and
  ``...`` are skipped;
  temporary paths, durations and the closing line's padding are folded);
- ``<!-- requires: NAME -->``: skip where the program or module NAME is missing;
- ``<!-- no-run: REASON -->``: the block is not run; the reason is shown as
  the test's skip reason (``pytest -rs``).

A block that is a test module (it defines ``test_*`` functions) runs under
pytest with the plugin, in process (only the tests it defines when it was
appended to a file); any other block runs as a script in the project
directory. A block without a marker that fails fails its test. docs/reference.md's
``<!-- example NAME PATH -->`` blocks are run by tests/test_plugin_reference.py.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
FENCE = re.compile(r"^```(\S*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*([a-z-]+)(:?)\s*(.*?)\s*-->\s*$")
FILE_LINE = re.compile(r"^#\s+([\w./-]+\.(?:py|ini|toml|cfg|conf))\s*$")
KNOWN = {"file", "append", "expect", "output", "requires", "no-run"}


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    body: str
    directives: dict[str, str] = field(default_factory=dict)
    legacy: list[str] = field(default_factory=list)  # test_plugin_reference's comments

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}"

    @property
    def target(self) -> str | None:
        """The project file this block is (or is added to), if any."""
        if "file" in self.directives:
            return self.directives["file"]
        if "append" in self.directives:
            return self.directives["append"]
        first = self.body.splitlines()[0] if self.body.strip() else ""
        match = FILE_LINE.match(first)
        return match.group(1) if match else None


def parse(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        block = Block(page, i + 1, opening.group(1), "\n".join(lines[i + 1 : end]) + "\n")
        j = i - 1
        while j >= 0 and (found := DIRECTIVE.match(lines[j])):
            name, colon, value = found.groups()
            if colon:
                block.directives[name] = value
            else:
                block.legacy.append(name)
            j -= 1
        blocks.append(block)
        i = end + 1
    return blocks


ALL = {page: parse(page) for page in PAGES}
PYTHON = [b for blocks in ALL.values() for b in blocks if b.lang == "python"]
RUN_ELSEWHERE = [b for b in PYTHON if "example" in b.legacy]
OURS = [b for b in PYTHON if "example" not in b.legacy]
PYTEST_OUTPUTS = [
    b
    for blocks in ALL.values()
    for b in blocks
    if b.directives.get("output", "above").split()[0] == "pytest"
]
SHELL_OUTPUTS = [
    b for blocks in ALL.values() for b in blocks if b.directives.get("output") == "shell"
]


# -- the markers themselves -------------------------------------------------


def test_every_python_block_is_run_or_says_why_not() -> None:
    for block in PYTHON:
        unknown = set(block.directives) - KNOWN
        assert not unknown, f"{block.id}: unknown marker {sorted(unknown)}"
        if "no-run" in block.directives:
            assert block.directives["no-run"], f"{block.id}: no-run needs a reason"
    for blocks in ALL.values():
        for block in blocks:
            assert not set(block.directives) - KNOWN, f"{block.id}: {block.directives}"
            if "output" in block.directives:
                assert block.lang in ("text", "console", ""), f"{block.id}: output of {block.lang}"
    # docs/reference.md's examples are run by tests/test_plugin_reference.py
    from tests.test_plugin_reference import EXAMPLES

    bodies = {body for example in EXAMPLES.values() for _, body in example["files"]}
    for block in RUN_ELSEWHERE:
        assert block.body in bodies, f"{block.id} is not run by test_plugin_reference"
    assert len(OURS) >= 20 and len(RUN_ELSEWHERE) >= 10


# -- running the blocks -----------------------------------------------------


def normal(line: str) -> str:
    line = re.sub(r"/tmp/\S+", "/tmp/PATH", line)  # temporary directories differ per run
    line = re.sub(r"\bin \d+\.\d+s\b", "in N.NNs", line)
    line = re.sub(r"\d\d\.\d\d sec \(.*/sec and .* ops/sec\)", "TIME (RATE)", line)  # qemu-io
    closing = re.fullmatch(r"=+ (\d+ \w+.*) =+", line.strip())
    if closing:  # the counts, without the width-filling '=' and the in-process warnings
        line = re.sub(r", \d+ warnings?", "", closing.group(1))
    return " ".join(line.split())


def assert_shows(block: Block, output: list[str]) -> None:
    """Every line of ``block`` is a line of ``output``, in the same order."""
    got = [normal(line) for line in output]
    at = 0
    for line in block.body.splitlines():
        if not line.strip() or line.startswith("$ ") or line.strip() == "...":
            continue
        wanted = normal(line)
        try:
            at = got.index(wanted, at) + 1
        except ValueError:
            shown = "\n".join(output)
            pytest.fail(
                f"{block.id}: line not printed (in this order):\n{line}\n--- output:\n{shown}"
            )


def requirement_missing(block: Block) -> str | None:
    for name in block.directives.get("requires", "").split():
        if shutil.which(name) is None and importlib.util.find_spec(name) is None:
            return name
    return None


def build_project(pytester: pytest.Pytester, block: Block) -> None:
    """Write the files the blocks above ``block`` on its page make."""
    for earlier in ALL[block.page]:
        if earlier.line >= block.line:
            break
        write_file(pytester, earlier)


def write_file(pytester: pytest.Pytester, block: Block) -> Path | None:
    if block.target is None or "no-run" in block.directives or requirement_missing(block):
        return None
    path = pytester.path / block.target
    path.parent.mkdir(parents=True, exist_ok=True)
    if "append" in block.directives:
        assert path.exists(), f"{block.id}: appends to {block.target}, which no block above made"
        path.write_text(path.read_text() + "\n\n" + block.body)
    else:
        path.write_text(block.body)
    return path


def defined_tests(code: str) -> list[str]:
    tree = ast.parse(textwrap.dedent(code))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith(
            "test"
        ):
            names.append(node.name)
    return names


def expected(block: Block) -> dict[str, int] | None:
    spec = block.directives.get("expect")
    if spec is None:
        return None
    return {key: int(value) for key, value in (pair.split("=") for pair in spec.split())}


def check_outcomes(block: Block, result: pytest.RunResult) -> None:
    outcomes = result.parseoutcomes()
    seen = {
        "passed": outcomes.get("passed", 0),
        "failed": outcomes.get("failed", 0),
        "errors": outcomes.get("errors", outcomes.get("error", 0)),
    }
    wanted = expected(block)
    out = result.stdout.str()
    if wanted is None:
        assert seen["failed"] == seen["errors"] == 0 and seen["passed"] >= 1, out
        assert result.ret == 0, out
    else:
        wanted.setdefault("errors", 0)
        assert {k: seen.get(k, outcomes.get(k, 0)) for k in wanted} == wanted, out


def outputs_after(block: Block) -> list[Block]:
    """The ``output: above`` blocks that follow ``block`` (before the next python block)."""
    found = []
    blocks = ALL[block.page]
    for later in blocks[blocks.index(block) + 1 :]:
        if later.lang == "python":
            break
        if later.directives.get("output") == "above":
            found.append(later)
    return found


@pytest.mark.parametrize("block", OURS, ids=[b.id for b in OURS])
def test_doc_block_runs(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    block: Block,
) -> None:
    run_block(pytester, monkeypatch, capsys, block)


def run_block(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    block: Block,
) -> None:
    if "no-run" in block.directives:
        pytest.skip(f"not run: {block.directives['no-run']}")
    missing = requirement_missing(block)
    if missing:
        pytest.skip(f"{missing} is not installed")
    build_project(pytester, block)
    path = write_file(pytester, block)
    code = path.read_text() if path is not None else block.body
    own_tests = defined_tests(block.body)
    if path is None:
        stem = f"{block.page.stem.replace('-', '_')}_{block.line}"
        name = f"test_{stem}.py" if own_tests else f"{stem}.py"
        path = pytester.path / name
        path.write_text(code)
    pytester.syspathinsert()
    monkeypatch.chdir(pytester.path)
    if path.name.startswith("test_") and defined_tests(code):
        args = [str(path.relative_to(pytester.path))]
        if own_tests and "append" in block.directives:
            args += ["-k", " or ".join(own_tests)]
        result = pytester.runpytest("-p", "no:cacheprovider", *args)
        check_outcomes(block, result)
        output = result.stdout.lines
    elif path.suffix == ".py":
        runpy.run_path(str(path), run_name="__main__")
        output = capsys.readouterr().out.splitlines()
    else:
        output = []
    for shown in outputs_after(block):
        assert_shows(shown, output)


# The harness itself: a block that errors fails its test unless it is marked.

BROKEN_PAGE = """\
# A page

```python
raise RuntimeError("this example is broken")
```

```python
def test_broken():
    assert 1 == 2
```

<!-- no-run: shows a broken call on purpose -->
```python
raise RuntimeError("not run")
```

<!-- expect: failed=1 passed=0 -->
```python
def test_fails_as_the_page_says():
    assert 1 == 2
```
"""


@pytest.fixture
def broken_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Block]:
    page = tmp_path / "broken.md"
    page.write_text(BROKEN_PAGE)
    blocks = parse(page)
    monkeypatch.setitem(ALL, page, blocks)
    return blocks


def test_an_unmarked_block_that_errors_fails(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    broken_page: list[Block],
) -> None:
    script, tests, marked, expected_failure = broken_page
    with pytest.raises(RuntimeError, match="this example is broken"):
        run_block(pytester, monkeypatch, capsys, script)
    with pytest.raises(AssertionError):
        run_block(pytester, monkeypatch, capsys, tests)
    with pytest.raises(pytest.skip.Exception, match="not run: shows a broken call on purpose"):
        run_block(pytester, monkeypatch, capsys, marked)
    run_block(pytester, monkeypatch, capsys, expected_failure)


@pytest.mark.parametrize("block", PYTEST_OUTPUTS, ids=[b.id for b in PYTEST_OUTPUTS])
def test_doc_pytest_output_is_what_pytest_prints(pytester: pytest.Pytester, block: Block) -> None:
    args = shlex.split(block.directives["output"])[1:]
    build_project(pytester, block)
    pytester.syspathinsert()
    result = pytester.runpytest("-p", "no:cacheprovider", *args)
    assert_shows(block, result.stdout.lines)


def commands(block: Block) -> list[str]:
    """The ``$ `` lines of a console block, continuation lines joined."""
    found: list[str] = []
    lines = iter(block.body.splitlines())
    for line in lines:
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\"):
                command = command[:-1] + " " + next(lines).strip()
            found.append(command)
    return found


def output_lines(block: Block) -> Block:
    """The block without its commands (and their continuation lines)."""
    kept, continued = [], False
    for line in block.body.splitlines():
        if line.startswith("$ ") or continued:
            continued = line.endswith("\\")
            continue
        kept.append(line)
    return dataclasses.replace(block, body="\n".join(kept) + "\n")


@pytest.mark.parametrize("block", SHELL_OUTPUTS, ids=[b.id for b in SHELL_OUTPUTS])
def test_doc_shell_output_is_what_the_commands_print(
    pytester: pytest.Pytester, block: Block
) -> None:
    missing = requirement_missing(block)
    if missing:
        pytest.skip(f"{missing} is not installed")
    build_project(pytester, block)
    # the console scripts of the environment running the tests, active or not
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    output: list[str] = []
    for command in commands(block):
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=pytester.path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        output += (done.stdout + done.stderr).splitlines()
    assert_shows(output_lines(block), output)


# -- README's quick start and its report --------------------------------------


def quick_start() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    found = BLOCK.search(section)
    assert found is not None
    return found.group(1)


def test_readme_quick_start_is_at_most_ten_lines_and_passes(pytester: pytest.Pytester) -> None:
    code = quick_start()
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 10, f"quick start has {len(lines)} lines"
    pytester.makepyfile(test_quick_start=code)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_docs_have_runnable_examples() -> None:
    runnable = [b for b in OURS if "no-run" not in b.directives]
    assert len(runnable) >= 2
    assert any(b.page.name == "tutorial.md" and defined_tests(b.body) for b in runnable)


def test_readme_sample_report_is_what_the_quick_start_prints(pytester: pytest.Pytester) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## What a report looks like", 1)[1]
    found = re.search(r"```text\n(.*?)```", section, re.DOTALL)
    assert found is not None
    shown = found.group(1).splitlines()
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
