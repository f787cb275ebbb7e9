"""Reading the files users hand in (JSON, JSONL, CSV) so that a malformed one fails in one clear line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd

from common.errors import InputError, first_line


def read_json_records(path: Path) -> object:
    """A .json document or the records of a .jsonl file; InputError if missing or malformed."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not part of the JSON
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.split("\n") if line.strip()]
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:  # deeply nested [[[[...
        raise InputError(f"{path}: malformed JSON ({first_line(error)})") from None


def read_text_csv(path: Path) -> pd.DataFrame:
    """A CSV whose every cell stays the text written: "01", "1e5" or "true" are not turned into numbers.

    Raises InputError for a record with more or fewer fields than the header: pandas would quietly make
    a surplus field the index, and read a missing one as "". Lets ValueError (unparsable CSV, bad
    UTF-8) through for the caller to name.
    """
    check_field_counts(path)
    return pd.read_csv(path, keep_default_na=False, dtype=str, encoding="utf-8-sig")


def check_field_counts(path: Path) -> None:
    """InputError naming the line that ends the first record whose field count differs from the header's."""
    limit = csv.field_size_limit()
    csv.field_size_limit(1 << 30)  # a long answer is no error; the module's default limit is 128 KiB
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            records = csv.reader(handle)
            header = next(records, [])
            for record in records:
                if record and len(record) != len(header):  # blank lines are skipped, as pandas does
                    fields = f"{len(record)} field{'s' * (len(record) != 1)}"
                    raise InputError(
                        f"{path}: line {records.line_num} has {fields}; the header has {len(header)}"
                    )
    except csv.Error as error:
        raise ValueError(f"line {records.line_num}: {error}") from None
    finally:
        csv.field_size_limit(limit)
