"""Rule files: QEMU's own blkdebug ini format (read exactly as QEMU 7.2 reads
it, in ``qemu_ini``) and TOML (``loader``), to lists of rules and back."""

from __future__ import annotations

from .loader import (
    INI_SUFFIXES,
    TOML_SUFFIXES,
    RuleFileWarning,
    UnsupportedValueError,
    dump_ini,
    dump_toml,
    load_rules,
    loads_ini,
    loads_toml,
    save_rules,
)

__all__ = [
    "INI_SUFFIXES",
    "TOML_SUFFIXES",
    "RuleFileWarning",
    "UnsupportedValueError",
    "dump_ini",
    "dump_toml",
    "load_rules",
    "loads_ini",
    "loads_toml",
    "save_rules",
]
