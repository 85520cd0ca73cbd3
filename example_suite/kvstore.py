"""A small journaled key-value store: the kind of storage code blkdebug tests.

It is written the way real storage engines are (a write-ahead journal with
commit records, checkpoints into alternating slots, recovery on open), and it
announces its own I/O with events so rules can aim at it, exactly as QEMU's
qcow2 driver raises ``l2_update`` before writing an L2 table:

- ``journal_append``: before writing one put/delete record;
- ``journal_commit``: before writing the commit record of a transaction;
- ``checkpoint``: before writing a snapshot of the whole table.

Layout on the disk (little-endian):

- sectors 0 and 1: two superblock slots ``(magic, generation, snapshot
  offset, snapshot length, snapshot crc, crc)``; the valid slot with the
  highest generation is current. A checkpoint writes the *other* slot, so a
  failed or torn superblock write leaves the previous one in charge.
- ``SNAPSHOT_BASE``: two snapshot halves; generation ``g`` lives in half
  ``g % 2``, so a checkpoint never overwrites the snapshot in use.
- ``JOURNAL_BASE`` onwards: records ``(magic, payload length, epoch, seq,
  txn, type, crc)`` + payload. The epoch is the generation the record
  follows; recovery replays records of the current epoch with consecutive
  sequence numbers, applies a transaction only when its commit record (with
  the right record count) is there, and stops at the first record that does
  not fit.

Error policy: an ``OSError`` during a commit or checkpoint marks the store
failed (``StoreFailed`` afterwards) and is re-raised. A caller recovers by
reopening, as a process would after a crash: the write may or may not have
reached the disk, and only recovery can say which (PostgreSQL's lesson from
"fsyncgate": never retry a failed flush and assume the data is safe).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Mapping

from pytest_blkdebug import Disk

EVENTS = ("journal_append", "journal_commit", "checkpoint")

SUPER = struct.Struct("<4sQQII")  # magic, generation, snapshot offset, length, crc
SUPER_MAGIC = b"KVSB"
SLOT_SIZE = 512
SNAPSHOT_BASE = 4096
SNAPSHOT_MAX = 1 << 20
JOURNAL_BASE = SNAPSHOT_BASE + 2 * SNAPSHOT_MAX
RECORD = struct.Struct("<4sIQQQB")  # magic, payload length, epoch, seq, txn, type
RECORD_MAGIC = b"KVJR"
CRC = struct.Struct("<I")
PUT, DELETE, COMMIT = 1, 2, 3


class CorruptStore(Exception):
    """No valid superblock or snapshot: the store cannot be opened."""


class StoreFailed(Exception):
    """A write failed earlier; reopen the store to recover."""


def _crc(*parts: bytes) -> int:
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc


def _record(epoch: int, seq: int, txn: int, kind: int, payload: bytes) -> bytes:
    header = RECORD.pack(RECORD_MAGIC, len(payload), epoch, seq, txn, kind)
    return header + payload + CRC.pack(_crc(header, payload))


def _put_payload(key: str, value: str | None) -> bytes:
    return json.dumps([key, value]).encode()


class KVStore:
    """A dict that survives crashes: ``commit({...})``, ``checkpoint()``, ``open()``."""

    def __init__(self, disk: Disk) -> None:
        self.disk = disk
        self.data: dict[str, str] = {}
        self.generation = 0
        self.journal_pos = JOURNAL_BASE
        self.seq = 0
        self.txn = 0
        self.failed: BaseException | None = None

    # -- creation and recovery ----------------------------------------------------

    @classmethod
    def format(cls, disk: Disk) -> KVStore:
        """An empty store: generation 1, an empty snapshot, an empty journal."""
        store = cls(disk)
        store._write_generation(1, {}, announce=False)
        return store

    @classmethod
    def open(cls, disk: Disk) -> KVStore:
        """Recover: the newest valid superblock, its snapshot, then the journal."""
        store = cls(disk)
        slots = disk.read(0, 2 * SLOT_SIZE)
        best = None
        for i in range(2):
            raw = slots[i * SLOT_SIZE : i * SLOT_SIZE + SUPER.size + CRC.size]
            fields = SUPER.unpack_from(raw)
            if fields[0] != SUPER_MAGIC or CRC.unpack_from(raw, SUPER.size)[0] != _crc(
                raw[: SUPER.size]
            ):
                continue
            if best is None or fields[1] > best[1]:
                best = fields
        if best is None:
            raise CorruptStore(f"no valid superblock on {disk.path}")
        _, generation, offset, length, snap_crc = best
        snapshot = disk.read(offset, length)
        if _crc(snapshot) != snap_crc:
            raise CorruptStore(f"snapshot of generation {generation} fails its CRC")
        store.data = json.loads(snapshot)
        store.generation = generation
        store._replay()
        return store

    def _replay(self) -> None:
        pos, expected_seq, pending = JOURNAL_BASE, None, []
        applied_pos, applied_seq = pos, 0
        while pos + RECORD.size + CRC.size <= self.disk.size:
            header = self.disk.read(pos, RECORD.size)
            magic, length, epoch, seq, txn, kind = RECORD.unpack(header)
            end = pos + RECORD.size + length + CRC.size
            if magic != RECORD_MAGIC or epoch != self.generation or end > self.disk.size:
                break
            if expected_seq is not None and seq != expected_seq:
                break
            rest = self.disk.read(pos + RECORD.size, length + CRC.size)
            payload = rest[:length]
            if CRC.unpack_from(rest, length)[0] != _crc(header, payload):
                break
            if kind == COMMIT:
                if (
                    pending
                    and all(t == txn for t, _ in pending)
                    and (json.loads(payload) == len(pending))
                ):
                    for _, (key, value) in pending:
                        if value is None:
                            self.data.pop(key, None)
                        else:
                            self.data[key] = value
                    applied_pos, applied_seq, self.txn = end, seq, txn
                pending = []
            else:
                pending.append((txn, json.loads(payload)))
            expected_seq, pos = seq + 1, end
        self.journal_pos, self.seq = applied_pos, applied_seq

    # -- reading -----------------------------------------------------------------

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.data.get(key, default)

    def snapshot(self) -> dict[str, str]:
        return dict(self.data)

    # -- writing -----------------------------------------------------------------

    def _check(self) -> None:
        if self.failed is not None:
            raise StoreFailed(f"an earlier write failed ({self.failed}); reopen the store")

    def commit(self, changes: Mapping[str, str | None] | Iterable[tuple[str, str | None]]) -> None:
        """Apply puts (and deletes: value ``None``) atomically and durably."""
        self._check()
        ops = list(changes.items() if isinstance(changes, Mapping) else changes)
        if not ops:
            return
        txn, seq, pos = self.txn + 1, self.seq, self.journal_pos
        try:
            for key, value in ops:
                seq += 1
                rec = _record(
                    self.generation,
                    seq,
                    txn,
                    DELETE if value is None else PUT,
                    _put_payload(key, value),
                )
                self.disk.event("journal_append")
                self.disk.write(pos, rec)
                pos += len(rec)
            seq += 1
            rec = _record(self.generation, seq, txn, COMMIT, json.dumps(len(ops)).encode())
            self.disk.event("journal_commit")
            self.disk.write(pos, rec)
            pos += len(rec)
            self.disk.flush()
        except OSError as exc:
            self.failed = exc
            raise
        for key, value in ops:
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
        self.txn, self.seq, self.journal_pos = txn, seq, pos

    def checkpoint(self) -> None:
        """Write the table as a snapshot of the next generation and empty the journal."""
        self._check()
        try:
            self._write_generation(self.generation + 1, self.data, announce=True)
        except OSError as exc:
            self.failed = exc
            raise

    def _write_generation(
        self, generation: int, data: Mapping[str, str], *, announce: bool
    ) -> None:
        snapshot = json.dumps(data, sort_keys=True).encode()
        if len(snapshot) > SNAPSHOT_MAX:
            raise ValueError(f"table too large for a snapshot ({len(snapshot)} bytes)")
        offset = SNAPSHOT_BASE + (generation % 2) * SNAPSHOT_MAX
        if announce:
            self.disk.event("checkpoint")
        self.disk.write(offset, snapshot)
        self.disk.flush()
        head = SUPER.pack(SUPER_MAGIC, generation, offset, len(snapshot), _crc(snapshot))
        self.disk.write((generation % 2) * SLOT_SIZE, head + CRC.pack(_crc(head)))
        self.disk.flush()
        self.generation, self.journal_pos = generation, JOURNAL_BASE
