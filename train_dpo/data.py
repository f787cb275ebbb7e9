"""Load a preference dataset (prompt / chosen / rejected) from wherever it lives.

Accepted: a `save_to_disk` directory (what `dataset/main.py` writes), a `.jsonl`/`.json` file of
pairs, a `.parquet` file, the study's scored-generations JSON (paired on the fly with the study's
scheme and split by prompt), or a Hugging Face Hub dataset id.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from dataset.build import read_json_records, validate_scored
from dataset.pairing import pair_scored, split_by_prompt
from errors import InputError

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")


def _from_json(path: Path, test_size: float, seed: int) -> DatasetDict:
    rows = read_json_records(path)
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise InputError(f"{path}: expected a list of objects")
    if rows and {"answers", "rm_scores"} <= rows[0].keys():  # the study's scored generations
        try:
            rows = pair_scored(validate_scored(rows, str(path)))
        except ValueError as error:  # e.g. fewer answers than the study's pair scheme needs
            raise InputError(f"{path}: {error}") from None
        train, test = split_by_prompt(rows, test_size=test_size, seed=seed)
        return DatasetDict({"train": Dataset.from_list(train), "test": Dataset.from_list(test)})
    return DatasetDict({"train": Dataset.from_list(rows)})


def load_preference_dataset(spec: str, test_size: float = 0.2, seed: int = 0) -> DatasetDict:
    """The pairs at `spec` as a DatasetDict with a `train` split (and `test` when there is one).

    Args:
        spec: a path (directory or file) or a Hub dataset id.
        test_size, seed: the prompt-level split, used only for a scored-generations file.

    Raises:
        InputError: missing file, unreadable format, or no prompt/chosen/rejected columns.
    """
    path = Path(spec)
    if path.is_dir():
        try:
            loaded = load_from_disk(str(path))
        except FileNotFoundError:
            raise InputError(f"{path}: not a dataset saved with save_to_disk") from None
        data = loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
    elif path.suffix in (".json", ".jsonl", ".parquet"):
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        if path.suffix == ".parquet":
            data = DatasetDict({"train": Dataset.from_parquet(str(path))})
        else:
            data = _from_json(path, test_size, seed)
    elif spec.count("/") == 1 and not spec.startswith((".", "/")):
        data = load_dataset(spec)
    else:
        raise InputError(f"{spec}: neither an existing file/directory nor a Hub dataset id")

    if "train" not in data:
        raise InputError(f"{spec}: no 'train' split (found: {', '.join(data)})")
    for split, table in data.items():
        missing = [column for column in REQUIRED_COLUMNS if column not in table.column_names]
        if missing:
            raise InputError(f"{spec}: split '{split}' lacks column(s) {', '.join(missing)}")
        if len(table) == 0:
            raise InputError(f"{spec}: split '{split}' is empty")
    return data
