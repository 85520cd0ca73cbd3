"""Shared set-up for the test modules.

pytester's in-process runs drop the modules first imported inside them, and
the hypothesis plugin imports ``hypothesis.internal.observability`` at the end
of every run: importing it once here, before any run, spares each in-process
run a fresh (assertion-rewritten) import of it.
"""

from __future__ import annotations

import pytest

try:
    import hypothesis.internal.observability  # noqa: F401
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    pass


@pytest.fixture(autouse=True)
def _inner_runs_as_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner pytest runs (pytester, doc examples) print as on a developer's
    terminal, whatever runs the outer one: on CI (the ``CI`` or
    ``BUILD_NUMBER`` variable) pytest stops cutting the short test summary's
    lines to the terminal's width, and the tests that read those lines
    (docs/tutorial.md's sample output, error-counting tests) would differ."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BUILD_NUMBER", raising=False)
