"""A TOML file a person wrote (the configuration, a catalog, a rules file, a simulated world), read as UTF-8 after a
byte-order mark if it has one: Windows Notepad's "UTF-8 with BOM" and PowerShell 5's `Out-File -Encoding utf8`
write one, and `tomllib` refused it as "Invalid statement (at line 1, column 1)" of a first line that reads right.
A file in UTF-16 or UTF-32 (PowerShell 5's `>` writes UTF-16; without a mark, its NUL bytes tell) or with a byte
that is not UTF-8 is a `TOMLFileError` saying so and how to fix it, as is one that is not TOML or nests its arrays
or inline tables so deeply (hundreds of levels) that `tomllib`'s recursive parser raised `RecursionError`;
`OSError`s (no such file, a folder) are the caller's to word.
"""

from __future__ import annotations

import codecs
import tomllib
from pathlib import Path
from typing import Any

_OTHER_ENCODINGS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),  # FF FE 00 00 first
                    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


class TOMLFileError(ValueError):
    """A TOML file that is not UTF-8 text or not TOML (the message says which, without the file's name)."""


def load_toml_file(path: Path) -> dict[str, Any]:
    """The TOML file at `path` as a dict; `TOMLFileError` when it is not UTF-8 or not TOML, `OSError` when it
    cannot be read."""
    return loads_toml(path.read_bytes())


def loads_toml(raw: bytes) -> dict[str, Any]:
    """TOML bytes as a dict (`load_toml_file`)."""
    for bom, name in _OTHER_ENCODINGS:
        if raw.startswith(bom):
            raise TOMLFileError(f"the file is {name.upper()} text (it starts with the byte-order mark "
                                f"{' '.join(f'0x{b:02x}' for b in bom)}), not UTF-8: save it as UTF-8, or convert "
                                f"it, e.g. iconv -f {name} -t utf-8")
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    if b"\x00" in raw:  # never in TOML text; every other byte of UTF-16 (`'port'.encode('utf-16-le')`)
        line = raw.count(b"\n", 0, raw.index(b"\x00")) + 1
        raise TOMLFileError(f"line {line} has a NUL byte (0x00), which TOML text never has: "
                            "UTF-16 or UTF-32 text without a byte-order mark? Save it as UTF-8, or convert it, e.g. "
                            "iconv -f utf-16le -t utf-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise TOMLFileError(f"line {line} is not UTF-8 (its byte {column} is 0x{raw[exc.start]:02x}): save the file "
                            "as UTF-8, or convert it, e.g. iconv -f windows-1252 -t utf-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TOMLFileError(f"not valid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively: ~500 levels exhaust it
        raise TOMLFileError("cannot be read: its arrays or inline tables are nested too deeply (hundreds of "
                            "levels; a configuration nests a few)") from None
