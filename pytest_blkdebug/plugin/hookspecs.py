"""Hooks that pytest-blkdebug adds to pytest (``pytest_blkdebug_*``).

Implement them in a ``conftest.py`` or a plugin. They are added in the
plugin's ``pytest_addhooks``, so they exist only while the plugin is loaded:
under ``-p no:blkdebug`` pytest would reject an implementation as an unknown
hook unless it is marked ``@pytest.hookimpl(optionalhook=True)``.

Hooks that concern one test are called through ``item.ihook``, so an
implementation in ``tests/db/conftest.py`` applies only to the tests under
``tests/db``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ..core.disk import Disk


def pytest_blkdebug_register_events(config: pytest.Config) -> list[str]:  # type: ignore[empty-body]
    """Return extra event names every disk in the session accepts.

    Called once per directory of tests (the first time a test there builds a
    disk), so conftest files deeper in the tree can add their own names. The
    lists of all implementations are combined; the names join those of the
    ``blkdebug_events`` option and of ``@pytest.mark.blkdebug(events=...)``.
    Names use letters, digits, ``_``, ``.`` and ``-``; a bad name fails the
    test that needed it, naming the name.

    Example (``conftest.py``)::

        def pytest_blkdebug_register_events(config):
            return ["journal_commit", "checkpoint"]
    """


def pytest_blkdebug_rule_hit(item: pytest.Item, disk: Disk, rule_name: str) -> None:
    """Called each time a rule fires: an inject-error rule decided a request,
    or a set-state rule fired on its event.

    Runs in the thread that did the I/O (an asyncio loop's executor thread,
    an NBD server thread), so keep it short and thread-safe. With disks that
    share one engine, ``disk`` is the first disk made on that engine. Only
    disks made by the plugin's fixtures report hits.

    Example (``conftest.py``)::

        HITS = []

        def pytest_blkdebug_rule_hit(item, disk, rule_name):
            HITS.append((item.nodeid, rule_name, disk.state))
    """


@pytest.hookspec(firstresult=True)
def pytest_blkdebug_make_image(
    item: pytest.Item, path: str, size: int, template: str | None
) -> str | None:
    """Build the image file for a disk and return its path, or ``None`` to
    leave it to the next implementation (first non-``None`` result wins).

    ``path`` is where the plugin would put the image (in the test's
    ``tmp_path``), ``size`` the configured size in bytes, ``template`` the
    absolute path of ``@pytest.mark.blkdebug(template=...)`` or of the
    factory's ``template=`` argument (``None`` if there is none). The returned
    file is opened as it is; its size is the file's size. The plugin's own
    implementation runs last (``trylast``): a sparse file of ``size`` bytes,
    or a cheap copy of the template (reflink or sparse copy) resized to
    ``size``.

    Example (``conftest.py``): format every image with a filesystem::

        import subprocess

        def pytest_blkdebug_make_image(item, path, size, template):
            if item.get_closest_marker("ext4") is None:
                return None
            with open(path, "wb") as f:
                f.truncate(size)
            subprocess.run(["mkfs.ext4", "-q", "-F", path], check=True)
            return path
    """
