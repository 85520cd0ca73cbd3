"""Adapters that put real storage libraries on a Disk (SQLite via APSW, littlefs)."""

from __future__ import annotations
