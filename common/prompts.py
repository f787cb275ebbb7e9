"""Stage 1: prompts, the first sentence of positive IMDb reviews.

From the Hub (`stanfordnlp/imdb`, train split, label 1) or a local file: a JSON list of strings (the
study's `positive_reviews_first_sent.json`), JSON/JSONL objects or CSV/parquet with a `prompt` column.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
from pyarrow import ArrowException

from common.errors import InputError, first_line, is_system_error
from common.imdb import positive_first_sentences
from common.readers import read_text_csv


def _read_file(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(f"{path}: no such prompt file")
    try:
        if path.suffix == ".csv":
            rows = read_text_csv(path).to_dict("records")
        elif path.suffix == ".parquet":
            rows = pd.read_parquet(path).to_dict("records")
        elif path.suffix == ".jsonl":
            rows = [
                json.loads(line) for line in path.read_text(encoding="utf-8-sig").split("\n") if line.strip()
            ]
        elif path.suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8-sig"))
        else:
            raise InputError(f"{path}: unsupported prompt file type (use .json, .jsonl, .csv or .parquet)")
    # ValueError covers JSON, UTF-8 and CSV errors; pyarrow reports a damaged parquet file as OSError.
    except (ValueError, OSError, RecursionError, ArrowException) as error:
        if is_system_error(error):
            raise
        raise InputError(f"{path}: cannot parse ({first_line(error)})") from None
    if not isinstance(rows, list):
        raise InputError(f"{path}: expected a list of prompts")
    prompts = []
    for row in rows:
        if isinstance(row, str):
            prompts.append(row)
        elif isinstance(row, dict) and isinstance(row.get("prompt"), str):
            prompts.append(row["prompt"])
        else:
            raise InputError(f"{path}: every entry must be a string or have a string 'prompt' column")
    return prompts


def load_prompts(source: str) -> list[str]:
    """Prompts from a file, or from reviews (Hub id or dataset folder); stripped, non-empty, de-duplicated."""
    path = Path(source)
    raw = (
        positive_first_sentences(source)
        if path.is_dir() or not (path.suffix or path.exists())
        else _read_file(path)
    )
    prompts = list(dict.fromkeys(text.strip() for text in raw if text and text.strip()))
    if not prompts:
        raise InputError(f"{source}: no non-empty prompts")
    return prompts


def sample_prompts(prompts: list[str], n_train: int, n_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """Disjoint random samples: prompts to build pairs from, and held-out prompts for evaluation."""
    if n_train < 1:
        raise InputError(f"--num_prompts must be >= 1, got {n_train}")
    if n_train + n_eval > len(prompts):
        raise InputError(
            f"asked for {n_train} + {n_eval} eval prompts; the source has only {len(prompts)} distinct ones"
        )
    chosen = random.Random(seed).sample(prompts, n_train + n_eval)
    return chosen[:n_train], chosen[n_train:]
