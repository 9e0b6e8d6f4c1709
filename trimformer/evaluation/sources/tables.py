"""Read a user's text file as lines or as rows of named columns: ``.txt`` (a text a line),
``.jsonl`` (a JSON object a line), ``.csv`` / ``.tsv`` (a header row, then rows).

Every failure is one line naming the file and the fix: a file that is missing, not in the given
encoding, a malformed JSON line, a column that does not exist.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from trimformer.errors import UsageError

__all__ = ["COLUMN_SUFFIXES", "column", "dict_rows", "read_lines"]

COLUMN_SUFFIXES = (".jsonl", ".csv", ".tsv")


def read_lines(spec: str, path: Path, encoding: str) -> list[str]:
    """The file's lines, decoded (a UTF-8 byte-order mark is dropped)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{spec}: {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{spec}: {path} is a folder; give a text file") from None
    except OSError as exc:
        raise UsageError(f"{spec}: {path} cannot be read ({exc.strerror})") from None
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return raw.decode(codec).splitlines()
    except LookupError:
        raise UsageError(f"{spec}: unknown encoding {encoding!r}; use e.g. utf-8, cp1252") from None
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{spec}: {path} is not {encoding} text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); convert it to UTF-8 or give its encoding with ?encoding=cp1252"
        ) from None


def dict_rows(spec: str, path: Path, encoding: str) -> list[dict[str, Any]]:
    """Rows of a .jsonl, .csv or .tsv file as column name -> value."""
    lines = read_lines(spec, path, encoding)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}:{number} is not JSON ({exc.msg}); fix the line") from None
            if not isinstance(row, dict):
                raise UsageError(f"{path}:{number} is not a JSON object; give one object a line")
            rows.append(row)
        return rows
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(lines, delimiter="\t" if suffix == ".tsv" else ",")
        rows = [row for row in reader if any((v or "").strip() for v in row.values())]
        if reader.fieldnames is None:
            raise UsageError(f"{spec}: {path} is empty; give a header row and data rows")
        return rows
    raise UsageError(
        f"{spec}: {path.name} has no columns; name columns only for {', '.join(COLUMN_SUFFIXES)}"
    )


def column(spec: str, path: Path, rows: list[dict[str, Any]], name: str, option: str) -> list[Any]:
    """One column's values; a row without it is an error naming the columns there are."""
    for number, row in enumerate(rows, start=1):
        if name not in row or row[name] is None:
            have = ", ".join(str(k) for k in row) or "none"
            raise UsageError(
                f"{spec}: row {number} of {path.name} has no column {name!r} (it has: {have}); "
                f"name the right one with ?{option}=NAME"
            )
    return [row[name] for row in rows]
