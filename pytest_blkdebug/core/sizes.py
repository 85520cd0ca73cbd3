"""Sizes as people write them: ``65536``, ``"64M"``, ``"1G"`` (qemu-img's suffixes)."""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
#: the largest size a file can have (``off_t``): larger ones raised a bare
#: ``OverflowError`` from the host, after the image file was created
MAX_SIZE = 2**63 - 1


def parse_size(value: int | str) -> int:
    """``65536``, ``"64M"``, ``"1G"``, ``"512K"`` -> bytes (qemu-img's suffixes),
    at most ``2**63 - 1`` (a file's largest size)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        size = value
    else:
        match = _SIZE_RE.match(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"invalid size {value!r} (use bytes or a K/M/G/T suffix, e.g. '64M')")
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]
    if size > MAX_SIZE:
        raise ValueError(f"invalid size {value!r}: larger than 2**63 - 1 bytes")
    return size
