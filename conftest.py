"""Top-level conftest: pytester for the plugin's own tests, and the package
importable from a plain checkout."""

from __future__ import annotations

pytest_plugins = ["pytester"]
