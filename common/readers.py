"""Reading the files users hand in (JSON, JSONL, CSV, model folders) so that a malformed one fails in one
clear line naming it.

Every file an entry point reads as input goes through here: a file cut short, emptied or overwritten with
other bytes is an InputError (`error: <file>: ...`, exit status 2), never a traceback from deep inside a
parser. OSErrors with an errno (permission, disk) are the system's and pass through (exit status 4).
"""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import pandas as pd

from common.errors import InputError, first_line, is_system_error


def read_json_records(path: Path | str) -> object:
    """A .json document or the records of a .jsonl file; InputError if missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not part of the JSON
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.split("\n") if line.strip()]
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:  # deeply nested [[[[...
        raise InputError(f"{path}: malformed JSON ({first_line(error)})") from None


def read_json_object(path: Path | str) -> dict:
    """A .json file holding one object (a config, a record): InputError if missing, malformed or not an
    object, so that a caller's `.get` or `[key]` never meets a list, a string or null."""
    value = read_json_records(path)
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object, got {json_type(value)}")
    return value


def json_type(value: object) -> str:
    """What a parsed JSON value is, in JSON's words."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


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


# The files transformers, tokenizers and PEFT read from a model folder: a full model's, a tokenizer's, an
# adapter's. Other files in such a folder (a run's trainer_state.json, a manifest) are not read by loading it.
MODEL_JSON_FILES = ("config.json", "generation_config.json", "adapter_config.json", "tokenizer.json",
                    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
                    "model.safetensors.index.json", "pytorch_model.bin.index.json")  # fmt: skip
PICKLE_WEIGHTS = ("pytorch_model.bin", "adapter_model.bin")


def check_safetensors(path: Path | str) -> None:
    """InputError unless `path` is a whole safetensors file: its header parses and its tensors cover the
    file exactly (safetensors checks both when opening; a file cut short fails here, not mid-load)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as error:
        raise InputError(f"{path}: damaged safetensors file ({first_line(error)})") from None


def check_pickle_weights(path: Path | str) -> None:
    """InputError for a PyTorch checkpoint that is neither a whole zip archive (torch.save's format since
    1.6) nor a legacy pickle stream; the tensors themselves are read by the restricted unpickler."""
    path = Path(path)
    with path.open("rb") as handle:
        head = handle.read(2)
    if head.startswith(b"\x80"):  # a legacy (pre-zip) checkpoint: a pickle stream, checked as it loads
        return
    try:
        with zipfile.ZipFile(path):  # reads the central directory at the end: a file cut short fails
            pass
    except zipfile.BadZipFile as error:
        raise InputError(f"{path}: damaged PyTorch checkpoint ({first_line(error)})") from None


def check_model_folder(folder: Path | str) -> None:
    """InputError naming the first damaged file among those loading a local model, tokenizer or adapter
    folder reads: its JSON configs and vocabulary, its safetensors weights, its pickle weights.

    transformers and PEFT would fail on such a file with their own exception types (or, for a tokenizer,
    with a bare `Exception`), naming the folder at best.
    """
    folder = Path(folder)
    for name in MODEL_JSON_FILES:
        if (folder / name).is_file():
            read_json_records(folder / name)
    for path in sorted(folder.glob("*.safetensors")):
        check_safetensors(path)
    for name in PICKLE_WEIGHTS:
        if (folder / name).is_file():
            check_pickle_weights(folder / name)
    merges = folder / "merges.txt"
    if merges.is_file():
        try:
            merges.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise InputError(f"{merges}: not UTF-8 text ({first_line(error)})") from None


def check_saved_dataset(folder: Path | str) -> None:
    """InputError naming the first damaged file of a `save_to_disk` folder: its JSON records (dataset_dict,
    state, dataset_info) and its Arrow tables, read whole (datasets memory-maps them and would otherwise
    fail, or read garbage, only once a damaged row is reached)."""
    import pyarrow as pa

    folder = Path(folder)
    for path in sorted(folder.rglob("*.json")):
        read_json_records(path)
    for path in sorted(folder.rglob("*.arrow")):
        try:
            with pa.memory_map(str(path)) as source:
                pa.ipc.open_stream(source).read_all().validate(full=True)
        except (pa.ArrowException, ValueError, OSError) as error:  # an empty file: ArrowInvalid, a ValueError
            if is_system_error(
                error
            ):  # a cut-short body is pyarrow's OSError without an errno; EACCES is not
                raise
            raise InputError(f"{path}: damaged Arrow table ({first_line(error)})") from None
