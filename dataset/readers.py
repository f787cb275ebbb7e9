"""Reading the files users hand in (JSON, JSONL, CSV) so that a malformed one fails in one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from errors import InputError, first_line


def read_json_records(path: Path) -> object:
    """A .json document or the records of a .jsonl file; InputError if missing or malformed."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.split("\n") if line.strip()]
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:  # deeply nested [[[[...
        raise InputError(f"{path}: malformed JSON ({first_line(error)})") from None


def read_text_csv(path: Path) -> pd.DataFrame:
    """A CSV whose every cell stays the text written: "01", "1e5" or "true" are not turned into numbers.

    Raises InputError for a row wider than the header (pandas would quietly make the surplus the index),
    and lets pandas' ValueError (unparsable CSV, bad UTF-8) through for the caller to name.
    """
    frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    if not isinstance(frame.index, pd.RangeIndex):
        raise InputError(f"{path}: a row has more fields than the header")
    return frame
