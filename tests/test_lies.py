"""A disk that lies: each lie shown by reading the image behind the Disk.

``os.pread(disk.fileno(), ...)`` reads the image file itself, bypassing the
engine: it shows what the medium holds, while ``disk.read`` shows what the
code under test is told. A corrupted read returns altered data while the
image keeps the truth; a corrupted write stores altered data and succeeds; a
lost write is acknowledged and not stored; a misdirected write lands
elsewhere; a bad sector fails reads until it is written.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_blkdebug import Disk, InjectedError, InjectError
from pytest_blkdebug.core.rules import BadSector

#: 4 KiB with every byte value, so any change shows.
PATTERN = bytes(range(256)) * 16
OTHER = bytes(255 - b for b in PATTERN)


def make(tmp_path: Path, *rules: InjectError | BadSector, seed: int = 1) -> Disk:
    return Disk.create(tmp_path / f"lie{seed}.img", "1M", rules=list(rules), seed=seed)  # type: ignore[arg-type]


def image(disk: Disk, offset: int, length: int) -> bytes:
    """What the image file holds, read behind the engine."""
    return os.pread(disk.fileno(), length, offset)


def flipped_bits(a: bytes, b: bytes) -> list[int]:
    """The bit positions where ``a`` and ``b`` differ."""
    return [
        i * 8 + bit
        for i, (x, y) in enumerate(zip(a, b, strict=True))
        for bit in range(8)
        if (x ^ y) >> bit & 1
    ]


# -- corrupt on read: the code is told a lie, the image keeps the truth ------------


def read_lie(tmp_path: Path, kind: str, seed: int = 1) -> tuple[bytes, Disk]:
    rule = InjectError("read_aio", corrupt=kind, once=True, name="lie")
    disk = make(tmp_path, rule, seed=seed)
    disk.write(4096, PATTERN)
    return disk.read(4096, len(PATTERN)), disk


def test_read_bitflip_flips_exactly_one_bit_and_the_image_keeps_the_truth(
    tmp_path: Path,
) -> None:
    got, disk = read_lie(tmp_path, "bitflip")
    with disk:
        assert len(flipped_bits(got, PATTERN)) == 1
        assert image(disk, 4096, len(PATTERN)) == PATTERN
        assert disk.read(4096, len(PATTERN)) == PATTERN  # once: the next read is true
        assert disk.rule("lie").hits == 1


def test_bitflip_is_seeded(tmp_path: Path) -> None:
    def bit(seed: int) -> int:
        got, disk = read_lie(tmp_path, "bitflip", seed=seed)
        disk.close()
        (position,) = flipped_bits(got, PATTERN)
        return position

    assert bit(3) == bit(3)
    assert len({bit(seed) for seed in range(3, 9)}) > 1  # other seeds, other bits


def test_read_zero_returns_zeroes_and_the_image_keeps_the_truth(tmp_path: Path) -> None:
    got, disk = read_lie(tmp_path, "zero")
    with disk:
        assert got == bytes(len(PATTERN))
        assert image(disk, 4096, len(PATTERN)) == PATTERN


def test_read_garbage_returns_seeded_bytes_and_the_image_keeps_the_truth(tmp_path: Path) -> None:
    got, disk = read_lie(tmp_path, "garbage", seed=5)
    with disk:
        assert len(got) == len(PATTERN) and got != PATTERN
        assert len(set(got)) > 200  # random bytes, not a pattern or zeroes
        assert image(disk, 4096, len(PATTERN)) == PATTERN
    again, disk = read_lie(tmp_path, "garbage", seed=5)
    disk.close()
    assert again == got  # the same seed, the same garbage


# -- corrupt on write: the request succeeds, the image holds altered data ----------


@pytest.mark.parametrize("kind", ["bitflip", "zero", "garbage"])
def test_write_corruption_is_stored_and_the_write_succeeds(tmp_path: Path, kind: str) -> None:
    rule = InjectError("write_aio", corrupt=kind, iotype="write", once=True, name="lie")
    with make(tmp_path, rule) as disk:
        disk.write(4096, PATTERN)  # no error
        stored = image(disk, 4096, len(PATTERN))
        assert stored != PATTERN
        assert disk.read(4096, len(PATTERN)) == stored  # later reads see what was stored
        if kind == "bitflip":
            assert len(flipped_bits(stored, PATTERN)) == 1
        elif kind == "zero":
            assert stored == bytes(len(PATTERN))
        disk.write(4096, PATTERN)  # once: the next write is stored as written
        assert image(disk, 4096, len(PATTERN)) == PATTERN


# -- lost and misdirected writes -----------------------------------------------------


def test_lost_write_is_acknowledged_and_not_stored(tmp_path: Path) -> None:
    rule = InjectError("write_aio", lost=True, once=True, name="lost")
    with make(tmp_path, rule) as disk:
        disk.write(4096, PATTERN)  # acknowledged
        assert image(disk, 4096, len(PATTERN)) == bytes(len(PATTERN))  # the old contents
        assert disk.rule("lost").hits == 1
        disk.write(4096, PATTERN)
        assert image(disk, 4096, len(PATTERN)) == PATTERN


def test_misdirected_write_lands_at_the_other_offset(tmp_path: Path) -> None:
    disk = make(tmp_path)
    disk.write(4096, OTHER)
    disk.write(65536, OTHER)
    disk.close()
    rule = InjectError("write_aio", misdirect=65536, once=True, name="misdirect")
    with Disk(tmp_path / "lie1.img", rules=[rule], seed=1) as disk:
        disk.write(4096, PATTERN)
        assert image(disk, 4096, len(PATTERN)) == OTHER  # its own place keeps the old data
        assert image(disk, 65536, len(PATTERN)) == PATTERN  # the other place got it
        assert disk.read(65536, len(PATTERN)) == PATTERN


# -- bad sectors (dm-dust): reads fail until the sector is written -------------------


def test_bad_sector_fails_reads_until_written_then_heals(tmp_path: Path) -> None:
    with make(tmp_path, BadSector(sector=8, sectors=2, name="dust")) as disk:
        assert disk.read(0, 4096) == bytes(4096)  # sectors 0-7: fine
        with pytest.raises(InjectedError) as err:
            disk.read(4096, 512)  # sector 8
        assert err.value.rule == "dust" and err.value.errno == 5
        with pytest.raises(InjectedError):
            disk.read(4096 + 512, 512)  # sector 9, still bad
        assert [s[1:] for s in disk.engine.bad_sectors] == [(8, 2)]

        disk.write(4096, PATTERN[:512])  # rewriting sector 8 remaps it
        assert disk.read(4096, 512) == PATTERN[:512] == image(disk, 4096, 512)
        with pytest.raises(InjectedError):
            disk.read(4096 + 512, 512)  # sector 9 was not written: still bad
        assert [s[1:] for s in disk.engine.bad_sectors] == [(9, 1)]


# -- the trace and the report say what a lie did ---------------------------------------------


def test_the_report_says_a_write_was_lost_not_let_through(tmp_path: Path) -> None:
    """The trace recorded a lie like an errno-0 rule, so the report said
    "ok (let through by rule 'lost', errno=0)" for a write that was never
    stored; a request passed by ``after`` also read "errno=0" though its
    rule's errno is EIO."""
    from pytest_blkdebug.report import format_trace

    rules = [
        InjectError("none", iotype="write", lost=True, once=True, name="lost"),
        InjectError("none", iotype="read", after=1, once=True, name="later"),
        InjectError("none", iotype="flush", errno=0, delay=0.01, name="slow"),
    ]
    with Disk.create(tmp_path / "t.img", 4096, rules=rules) as disk:
        disk.write(0, PATTERN[:512])
        disk.read(0, 512)  # passed: after=1
        disk.flush()
        effects = [(e.kind, e.rule, e.errno, e.effect) for e in disk.trace if e.kind != "event"]
        assert effects == [
            ("write", "lost", 0, "lost"),
            ("read", "later", 0, "skipped"),
            ("flush", "slow", 0, "delay"),
        ]
        text = "\n".join(format_trace(disk))
        assert "not stored: lost by rule 'lost'" in text
        assert "let through by rule 'later': after/probability" in text
        assert "errno=0" not in text
