"""MkDocs hooks for this site (see mkdocs.yml).

The repository's README.md is the site's home page and BENCHMARKS.md one of
its pages, so the links between them and docs/ work both when the Markdown is
read in the repository and in the built site: ``docs/tutorial.md`` in README
and ``../BENCHMARKS.md`` in a page are rewritten to the site's own paths.
Sphinx roles in docstrings (``:meth:`open```) show as plain code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
FROM_ROOT = {"README.md": "index.md", "BENCHMARKS.md": "BENCHMARKS.md"}


def on_files(files: Files, config: Any) -> Files:
    for name, uri in FROM_ROOT.items():
        files.append(File.generated(config, uri, abs_src_path=str(ROOT / name)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if page.file.src_uri == "index.md":  # README: docs/X.md is X.md in the site
        return re.sub(r"\]\(docs/", "](", markdown)
    return re.sub(r"\]\(\.\./(BENCHMARKS\.md|README\.md)", _root_link, markdown)


def _root_link(match: re.Match[str]) -> str:
    return f"]({FROM_ROOT[match.group(1)]}"


ROLE = re.compile(r":(?:meth|func|class|attr|mod|data|exc|obj):(<code>)")


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    return ROLE.sub(r"\1", html)
