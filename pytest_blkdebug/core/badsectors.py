"""Bad sectors (``BadSector`` rules, Linux dm-dust): reads fail until written.

A ``BadMap`` is an immutable set of disjoint runs of bad sectors, each owned
by the rule that made it bad (the first-defined, where rules overlap),
sorted by start. Immutable because the request check reads it without the
engine's lock, like the active index: a heal builds a new map and the
engine swaps the reference. Heals are rare (a store that touches a bad
sector); the test "does this store touch a bad sector?" is one bisection.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from .active import Slot

Run = tuple[int, int, Slot]  # (first sector, end sector, owner)


class BadMap:
    """Disjoint runs of bad sectors, sorted; reads that touch one fail."""

    __slots__ = ("runs", "starts")

    def __init__(self, runs: list[Run]) -> None:
        self.runs = tuple(runs)
        self.starts = [r[0] for r in self.runs]

    @classmethod
    def build(cls, slots: list[Slot], existing: BadMap | None = None) -> BadMap | None:
        """The map of ``slots`` (BadSector rules, in definition order) added
        to ``existing`` (what earlier rules still have bad: a sector they
        lost to a heal stays healed, one they still own stays theirs)."""
        runs: list[Run] = list(existing.runs) if existing is not None else []
        for slot in slots:
            first, end = slot.start // 512, slot.end // 512
            for s, e, _ in sorted(runs):  # cut out what earlier rules already own
                if s >= end or e <= first:
                    continue
                if s > first:
                    runs.append((first, s, slot))
                first = max(first, e)
                if first >= end:
                    break
            if first < end:
                runs.append((first, end, slot))
        return cls(sorted(runs, key=lambda r: r[0])) if runs else None

    def _first_overlap(self, first: int, end: int) -> int:
        """Index of the first run overlapping sectors [first, end), or -1."""
        i = bisect_right(self.starts, first) - 1
        if i >= 0 and self.runs[i][1] > first:
            return i
        i += 1
        if i < len(self.runs) and self.runs[i][0] < end:
            return i
        return -1

    def touches(self, offset: int, length: int) -> bool:
        """Whether a request ``[offset, offset+length)`` touches a bad sector."""
        if length <= 0:
            return False
        return self._first_overlap(offset >> 9, ((offset + length - 1) >> 9) + 1) >= 0

    def find(self, offset: int, length: int) -> Slot | None:
        """The rule owning the first bad sector a read touches."""
        if length <= 0:
            return None
        i = self._first_overlap(offset >> 9, ((offset + length - 1) >> 9) + 1)
        return self.runs[i][2] if i >= 0 else None

    def healed(self, offset: int, length: int) -> BadMap | None:
        """The map after a store over ``[offset, offset+length)``: every
        sector it touches is good again (a drive remaps a sector on write)."""
        first, end = offset >> 9, ((offset + length - 1) >> 9) + 1
        lo = max(0, bisect_right(self.starts, first) - 1)
        hi = bisect_left(self.starts, end)
        kept: list[Run] = list(self.runs[:lo])
        for s, e, owner in self.runs[lo:hi]:
            if s < first:
                kept.append((s, min(e, first), owner))
            if e > end:
                kept.append((max(s, end), e, owner))
        kept.extend(self.runs[hi:])
        return BadMap(kept) if kept else None

    def owners(self) -> set[Slot]:
        return {r[2] for r in self.runs}

    def sectors(self) -> list[tuple[str, int, int]]:
        """(rule name, first sector, count) for every run still bad, in order."""
        return [(owner.name, s, e - s) for s, e, owner in self.runs]
