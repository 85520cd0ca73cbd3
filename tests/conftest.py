"""Shared set-up for the test modules.

pytester's in-process runs drop the modules first imported inside them, and
the hypothesis plugin imports ``hypothesis.internal.observability`` at the end
of every run: importing it once here, before any run, spares each in-process
run a fresh (assertion-rewritten) import of it.
"""

from __future__ import annotations

try:
    import hypothesis.internal.observability  # noqa: F401
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    pass
