"""``@pytest.mark.blkdebug_split(K)``: one test collected as K items.

A crash exploration or a fault sweep is one test with many states or points.
Marked ``blkdebug_split(K)``, the test is collected as K items
(``test_x[split0of4]`` ... ``test_x[split3of4]``); item ``i`` takes every
K-th state or point starting at ``i``, so ``pytest -n auto`` spreads one
large exploration over workers (and, through pytest-xdist's remote workers,
over machines). The split is generic: the crash plugin (``plugin/crash.py``)
and the sweep plugin (``plugin/sweep.py``) read the item's part with
:func:`split_part`, or a test takes the ``blkdebug_split`` fixture.

Every item must list the same states in the same order, so the workload
under test must be deterministic (the same writes for the same inputs).

This module is a pytest plugin of its own, registered by the package's plugin module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, TypeVar

import pytest

__all__ = ["PARAM", "SplitPart", "blkdebug_split", "split_part"]

#: The parameter the marker adds (and the fixture's name).
PARAM = "blkdebug_split"
MARKER_HELP = (
    "blkdebug_split(K): collect the test as K items; item i takes every K-th "
    "crash state or sweep point starting at i (for pytest -n)"
)

T = TypeVar("T")


class SplitPart(NamedTuple):
    """Item ``i`` of ``k`` (a plain ``(i, k)`` tuple too): it takes elements
    ``i``, ``i + k``, ``i + 2k``, ..."""

    i: int
    k: int

    def take(self, items: Sequence[T]) -> list[T]:
        """This part's share of ``items`` (every ``k``-th from ``i``)."""
        return list(items[self.i :: self.k])

    def selects(self, position: int) -> bool:
        """Whether the element at ``position`` (from 0) is this part's."""
        return position % self.k == self.i

    @property
    def id(self) -> str:
        return f"split{self.i}of{self.k}"


WHOLE = SplitPart(0, 1)


def _parts(marker: pytest.Mark, name: str) -> int:
    """K; a bad marker is a ValueError naming the test (it fails at setup)."""
    if len(marker.args) != 1 or marker.kwargs:
        raise ValueError(f"{name}: use @pytest.mark.blkdebug_split(K) with one integer K")
    k = marker.args[0]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name}: blkdebug_split(K) needs an integer K >= 1, not {k!r}")
    return k


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker(PARAM)
    if marker is None:
        return
    if PARAM not in metafunc.fixturenames:
        metafunc.fixturenames.append(PARAM)
    try:
        k = _parts(marker, metafunc.definition.nodeid)
    except ValueError:
        return  # not split: the fixture fails this test at setup, the others run
    parts = [SplitPart(i, k) for i in range(k)]
    metafunc.parametrize(PARAM, parts, ids=[p.id for p in parts])


def split_part(item: pytest.Item) -> SplitPart | None:
    """The part an item of a ``blkdebug_split`` test takes (None: not split)."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    part = callspec.params.get(PARAM)
    return part if isinstance(part, SplitPart) else None


@pytest.fixture
def blkdebug_split(request: pytest.FixtureRequest) -> SplitPart:
    """This item's part: ``SplitPart(i, k)`` (``(0, 1)`` for a test
    without the marker); ``part.take(states)`` is its share. A bad marker
    fails the test here, at setup."""
    part = split_part(request.node)
    if part is None:
        marker = request.node.get_closest_marker(PARAM)
        if marker is not None:
            try:
                _parts(marker, request.node.nodeid)
                error = None
            except ValueError as exc:
                error = str(exc)
            if error is not None:
                pytest.fail(f"blkdebug: {error}", pytrace=False)
    return part or WHOLE
