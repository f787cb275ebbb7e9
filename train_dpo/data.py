"""Load a preference dataset (prompt / chosen / rejected) from wherever it lives.

Accepted: a `save_to_disk` directory (what `dataset/main.py` writes), a `.jsonl`/`.json` file of
pairs, a `.parquet` file, the study's scored-generations JSON (paired on the fly with the study's
scheme and split by prompt), or a Hugging Face Hub dataset id.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from datasets.exceptions import DatasetGenerationError
from pyarrow import ArrowException

import config
from common.errors import InputError, first_line, is_system_error
from common.pairing import pair_scored, split_by_prompt, validate_scored
from common.readers import check_saved_dataset, read_json_records

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
        # An empty split would be a table without columns: leave it out (a few prompts may all be train).
        return DatasetDict(
            {name: Dataset.from_list(split) for name, split in (("train", train), ("test", test)) if split}
        )
    try:
        return DatasetDict({"train": Dataset.from_list(rows)})
    except (ArrowException, ValueError, TypeError, OverflowError) as error:  # text mixed with numbers; 2**63
        raise InputError(f"{path}: rows do not form a table ({first_line(error)})") from None


def build_command(hf_dir: Path) -> str:
    """The dataset/main.py command that writes a preference dataset to `hf_dir`."""
    out_dir = hf_dir.parent.parent
    flags = {config.DATASET_DIR.resolve(): "", config.TINY_DATASET_DIR.resolve(): " --preset tiny"}
    return "poetry run python dataset/main.py" + flags.get(out_dir.resolve(), f" --out_dir {out_dir}")


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
        check_saved_dataset(path)  # a damaged file of it: named in one line
        try:
            loaded = load_from_disk(str(path))
        except FileNotFoundError:
            raise InputError(f"{path}: not a dataset saved with save_to_disk") from None
        except Exception as error:  # a damaged folder fails in a dozen ways (JSON, Arrow, missing keys)
            if is_system_error(error):
                raise
            raise InputError(f"{path}: damaged save_to_disk dataset ({first_line(error)})") from None
        data = loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
    elif path.suffix in (".json", ".jsonl", ".parquet"):
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        if path.suffix == ".parquet":
            try:
                data = DatasetDict({"train": Dataset.from_parquet(str(path))})
            except (DatasetGenerationError, ArrowException, ValueError, OSError) as error:
                if is_system_error(error):
                    raise
                raise InputError(f"{path}: cannot read as parquet ({first_line(error)})") from None
        else:
            data = _from_json(path, test_size, seed)
    elif spec.count("/") == 1 and not spec.startswith((".", "/")):
        try:
            data = load_dataset(spec)
        except Exception as error:  # the Hub client raises many types; all mean "could not load it"
            raise InputError(
                f"{spec}: no such file or directory, nor a loadable Hub dataset ({first_line(error)})"
            ) from None
    elif path.parts[-2:] == ("dataset", "hf"):  # where dataset/main.py saves: not built yet
        raise InputError(f"{spec}: no preference dataset here yet; build it with `{build_command(path)}`")
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
        for column in REQUIRED_COLUMNS:
            if getattr(table.features[column], "dtype", None) not in ("string", "large_string"):
                raise InputError(
                    f"{spec}: split '{split}' column '{column}' holds {table.features[column]}, not text"
                )
            if table.data.column(column).null_count:
                raise InputError(f"{spec}: split '{split}' column '{column}' has rows without a value")
        try:  # Arrow files are read lazily: damaged offsets or UTF-8 would only fail mid-training
            table.data.validate(full=True)
        except ArrowException as error:
            raise InputError(f"{spec}: split '{split}' is damaged ({first_line(error)})") from None
    return data
