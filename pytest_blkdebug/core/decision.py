"""What the engine decided for one request: an immutable value.

The engine's request check (``Engine.decide``) returns a ``Decision`` or
None (nothing applies: the request goes through untouched). The request
path's *effect* stage acts on it: wait ``delay`` seconds, fail with
``errno``, or let the request succeed while the disk lies (``corrupt``,
``lost``, ``misdirect``). It is a value, never a mutable slot of the
engine's, so a driver can hold it across a wait without racing the engine.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """The deciding rule's name and what it does to this request."""

    #: The name of the rule that decided the request.
    rule: str
    #: The errno to fail the request with; 0: the request proceeds.
    errno: int = 0
    #: Raise at once in the asyncio view (QEMU's ``immediately``); else yield first.
    immediately: bool = False
    #: Seconds the request waits in the effect stage before it proceeds or fails.
    delay: float = 0.0
    #: ``"bitflip"``, ``"zero"`` or ``"garbage"``: the data read (or stored) is altered.
    corrupt: str | None = None
    #: A write is acknowledged and not stored.
    lost: bool = False
    #: A write is stored at this byte offset instead of its own.
    misdirect: int | None = None
    #: Seeded randomness for the effect (which bit flips, which garbage bytes),
    #: drawn from the deciding rule's own stream so it is reproducible.
    entropy: int = 0

    @property
    def fails(self) -> bool:
        return self.errno != 0
