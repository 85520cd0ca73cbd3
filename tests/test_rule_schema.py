"""One rule schema: the table in core/rules.py agrees with the dataclasses,
and drives the TOML reader, both writers, the ini keys, the marker help, the
report's conditions column and docs/rule-files.md."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from pytest_blkdebug.core.errors import RuleError, RuleFileError
from pytest_blkdebug.core.rules import (
    RULE_KINDS,
    SCHEMA,
    BadSector,
    InjectError,
    SetState,
    attribute_help,
    marker_help,
    rule_name,
)
from pytest_blkdebug.rulefiles import dump_ini, dump_toml, loads_ini, loads_toml
from pytest_blkdebug.rulefiles.qemu_ini import _INI_KEYS

DOCS = Path(__file__).resolve().parent.parent / "docs" / "rule-files.md"

EXTENDED = [
    InjectError("write_aio", after=2, count=3, name="a"),
    InjectError("none", probability=0.25, errno="ENOSPC", name="p"),
    InjectError("none", offset=4096, length=8192, iotype=["read", "write"], name="r"),
    InjectError("flush_to_disk", errno=0, delay=0.5, delay_jitter=0.125, name="d"),
    InjectError("read_aio", corrupt="garbage", sector=3, name="c"),
    InjectError("pwritev", lost=True, once=True, name="l"),
    InjectError("pwritev", misdirect=0, iotype="write-zeroes", name="m"),
    SetState("none", 0, name="s"),
    BadSector(100, sectors=8, errno="ENXIO", name="b"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("kind", list(SCHEMA))
def test_schema_rows_are_the_dataclass_fields(kind: str) -> None:
    fields = [f.name for f in dataclasses.fields(RULE_KINDS[kind])]  # type: ignore[arg-type]
    assert [a.name for a in SCHEMA[kind]] == fields


def test_ini_keys_come_from_the_schema() -> None:
    assert set(_INI_KEYS) == {"inject-error", "set-state"}
    assert set(_INI_KEYS["inject-error"]) == {
        "event", "errno", "sector", "once", "immediately", "iotype", "state"
    }  # fmt: skip
    assert set(_INI_KEYS["set-state"]) == {"event", "new_state", "state"}


@pytest.mark.parametrize("kind", list(SCHEMA))
def test_every_attribute_is_documented_and_in_the_marker_help(kind: str) -> None:
    text = DOCS.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    for attr in SCHEMA[kind]:
        assert any(f"`{attr.name}`" in row.split("|")[1] for row in rows), attr.name
        if not attr.required and kind != "bad-sector":
            assert re.search(rf"\b{attr.name}\b", marker_help(kind)), attr.name
    assert [row[0] for row in attribute_help(kind)] == [a.name for a in SCHEMA[kind]]


def test_toml_round_trip_of_every_extension() -> None:
    text = dump_toml(EXTENDED)
    assert loads_toml(text) == EXTENDED
    assert "[[bad-sector]]" in text and "probability = 0.25" in text


def test_dump_ini_refuses_each_extension_naming_it() -> None:
    expected = ["after", "probability", "offset", "delay", "corrupt", "lost", "misdirect"]
    for rule, attribute in zip(EXTENDED, expected, strict=False):
        with pytest.raises(RuleError) as info:
            dump_ini([rule])
        assert info.value.attribute == attribute, rule
        assert f"no {attribute!r}" in str(info.value) and "write TOML" in str(info.value)
    with pytest.raises(RuleError, match="only inject-error and set-state"):
        dump_ini([EXTENDED[-1]])
    assert loads_ini(dump_ini([EXTENDED[-2]])) == [EXTENDED[-2]]


@pytest.mark.parametrize("key", ["after", "count", "probability", "offset", "delay", "lost"])
def test_ini_refuses_extension_keys_as_qemu_does(key: str) -> None:
    with pytest.raises(RuleFileError) as info:
        loads_ini(f'[inject-error]\nevent = "read_aio"\n{key} = "1"\n')
    assert info.value.message == f"Invalid parameter '{key}'"
    assert info.value.hint is not None and "extension" in info.value.hint


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("probability = true", "probability must be a number, not a boolean"),
        ('probability = "half"', "probability must be a number"),
        ("probability = 2", "probability=2 is out of range (0..1)"),
        ("after = 1.5", "after must be an integer"),
        ('corrupt = "flip"', "corrupt must be one of bitflip, zero, garbage, not 'flip'"),
        ("lost = 1", "lost must be true or false"),
        ("delay = -1", "delay=-1 is out of range (0..3600)"),
        ("offset = 5", "offset and length give a byte range: set both"),  # length: not there
    ],
)
def test_toml_errors_for_new_keys_name_the_line(line: str, fragment: str) -> None:
    text = f'[[inject-error]]\nevent = "read_aio"\n{line}\n'
    with pytest.raises(RuleFileError) as info:
        loads_toml(text)
    at_table = info.value.attribute == "length"  # the missing key's table, then
    assert fragment in info.value.message and info.value.line == (1 if at_table else 3)


def test_describe_shows_what_differs_from_the_default() -> None:
    assert [r.describe() for r in EXTENDED[:5]] == [
        "errno=EIO after=2 count=3",
        "errno=ENOSPC probability=0.25",
        "errno=EIO iotype=read,write offset=4096 length=8192",
        "errno=0 delay=0.5 delay_jitter=0.125",
        "errno=0 sector=3 iotype=read corrupt=garbage",
    ]
    assert InjectError("none", once=True).describe() == "errno=EIO once"


def test_one_function_names_unnamed_rules() -> None:
    assert rule_name(InjectError("none"), 1) == "inject-error#2"
    assert rule_name(SetState("none", 1), 0) == "set-state#1"
    assert rule_name(BadSector(1), 4) == "bad-sector#5"
    assert rule_name(InjectError("none", name="x"), 9) == "x"
