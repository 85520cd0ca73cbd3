"""Checks of the numbers users hand in: timeouts, offsets, lengths.

Bad numbers fail here, with the argument's name, before any event fires or
any rule is consumed: ``nan`` would wait forever, ``inf`` overflows the
thread library, a float offset would pass the range check, and an offset
past 2**63 overflows the system call.
"""

from __future__ import annotations

import operator
import threading

#: Offsets and lengths must stay below this (``off_t`` is signed 64-bit).
MAX_OFFSET = (1 << 63) - 1
#: The longest wait the thread library accepts.
MAX_TIMEOUT = float(threading.TIMEOUT_MAX)


def check_timeout(name: str, value: object) -> float:
    """``value`` as seconds: a real number, finite, > 0 (else TypeError or
    ValueError naming ``name``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if not (0 < seconds <= MAX_TIMEOUT):  # also false for nan
        raise ValueError(
            f"{name} must be a finite number of seconds > 0 (at most {MAX_TIMEOUT:g}), "
            f"got {value!r}"
        )
    return seconds


def check_int(name: str, value: object) -> int:
    """``value`` as an int (anything with ``__index__`` but bool), below
    2**63; negative values pass (the range check turns them into EIO, as in
    QEMU)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if number > MAX_OFFSET:
        raise ValueError(f"{name} {number} is too large (at most 2**63 - 1)")
    return number


def check_request(offset: object, length: object) -> tuple[int, int]:
    """``offset`` and ``length`` as ints whose end is below 2**63."""
    start, size = check_int("offset", offset), check_int("length", length)
    if start + size > MAX_OFFSET:
        raise ValueError(f"offset + length = {start + size} is too large (at most 2**63 - 1)")
    return start, size


__all__ = ["MAX_OFFSET", "MAX_TIMEOUT", "check_int", "check_request", "check_timeout"]
