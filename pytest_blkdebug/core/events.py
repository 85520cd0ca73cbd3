"""Event names and I/O types, and the registry that validates them.

Events are how code announces what it is about to do; rules are keyed by
them. QEMU's 48 names are always known; each engine also accepts the custom
names its user registers. A registry belongs to one engine, so a name
registered in one test never leaks into the next.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from .errors import RuleError, brief

#: QEMU 7.2's blkdebug event names, in QEMU's own (enum) order.
QEMU_EVENTS: tuple[str, ...] = (
    "l1_update",
    "l1_grow_alloc_table",
    "l1_grow_write_table",
    "l1_grow_activate_table",
    "l2_load",
    "l2_update",
    "l2_update_compressed",
    "l2_alloc_cow_read",
    "l2_alloc_write",
    "read_aio",
    "read_backing_aio",
    "read_compressed",
    "write_aio",
    "write_compressed",
    "vmstate_load",
    "vmstate_save",
    "cow_read",
    "cow_write",
    "reftable_load",
    "reftable_grow",
    "reftable_update",
    "refblock_load",
    "refblock_update",
    "refblock_update_part",
    "refblock_alloc",
    "refblock_alloc_hookup",
    "refblock_alloc_write",
    "refblock_alloc_write_blocks",
    "refblock_alloc_write_table",
    "refblock_alloc_switch_table",
    "cluster_alloc",
    "cluster_alloc_bytes",
    "cluster_free",
    "flush_to_os",
    "flush_to_disk",
    "pwritev_rmw_head",
    "pwritev_rmw_after_head",
    "pwritev_rmw_tail",
    "pwritev_rmw_after_tail",
    "pwritev",
    "pwritev_zero",
    "pwritev_done",
    "empty_image_prepare",
    "l1_shrink_write_table",
    "l1_shrink_free_l2_clusters",
    "cor_write",
    "cluster_alloc_space",
    "none",
)
QEMU_EVENT_SET = frozenset(QEMU_EVENTS)

#: The six request types, in QEMU's BlkdebugIOType order. A rule's iotype set
#: is stored as a bit mask over these positions.
IOTYPES: tuple[str, ...] = ("read", "write", "write-zeroes", "discard", "flush", "block-status")
READ, WRITE, WRITE_ZEROES, DISCARD, FLUSH, BLOCK_STATUS = range(6)
IOTYPE_INDEX: dict[str, int] = {name: i for i, name in enumerate(IOTYPES)}
#: QEMU's default for a rule without ``iotype``: everything but block-status.
DEFAULT_IOTYPES: frozenset[str] = frozenset(IOTYPES[:5])

# Custom names must survive a round trip through a QEMU-style ini value and a
# JUnit property name, so keep them to a conservative character set.
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


def iotype_mask(iotypes: Iterable[str]) -> int:
    """Bit mask for a set of iotype names (names already validated)."""
    mask = 0
    for name in iotypes:
        mask |= 1 << IOTYPE_INDEX[name]
    return mask


def unknown_name_message(kind: str, name: str, known: Iterable[str]) -> str:
    """``unknown event 'wirte_aio' (did you mean 'write_aio'?)``."""
    close = difflib.get_close_matches(str(name), list(known), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown {kind} {brief(name)}{hint}"


class EventRegistry:
    """The event names one engine accepts: QEMU's plus registered ones.

    The custom names are a dict (insertion-ordered, constant-time lookup):
    a list made registering n names cost n**2 (16,000 names took 5 s).
    """

    __slots__ = ("_custom",)

    def __init__(self, custom: Iterable[str] = ()) -> None:
        self._custom: dict[str, None] = {}
        register_events(self, custom)

    def register(self, name: str) -> str:
        """Accept ``name`` as an event; registering a name twice is harmless."""
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise RuleError(
                f"invalid event name {name!r}: use letters, digits, '_', '.' or '-', "
                "starting with a letter or '_'"
            )
        if name not in QEMU_EVENT_SET:
            self._custom[name] = None
        return name

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in QEMU_EVENT_SET or name in self._custom)

    @property
    def custom(self) -> tuple[str, ...]:
        """The registered non-QEMU names, in registration order."""
        return tuple(self._custom)

    @property
    def names(self) -> tuple[str, ...]:
        return QEMU_EVENTS + tuple(self._custom)

    def check(self, name: object) -> str:
        """Return ``name`` if known, else raise ``RuleError`` with close matches."""
        if name in self:
            return name  # type: ignore[return-value]
        raise RuleError(unknown_name_message("event", str(name), self.names))


def register_events(target: object, names: Iterable[str]) -> tuple[str, ...]:
    """Register ``names`` with an EventRegistry, or with the registry of
    anything that has one (an Engine, a Disk). Returns the names."""
    registry = getattr(target, "registry", target)
    if not isinstance(registry, EventRegistry):
        raise TypeError(f"expected an EventRegistry, Engine or Disk, not {target!r}")
    if isinstance(names, str):  # would register each of its letters
        raise TypeError(f"events must be a list of names, not a string: events=[{names!r}]")
    names = tuple(names)
    for name in names:
        registry.register(name)
    return names
