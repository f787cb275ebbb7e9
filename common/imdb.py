"""Where IMDb text comes from: the Hub dataset `stanfordnlp/imdb` by default, or a local folder.

The study derived its prompts from IMDb's train split: the first sentence (text before the first '.') of
every positive review. A local folder (`FDPO_DATA_DIR`, or a `--data_dir` flag) holding the study's
own files overrides the Hub: `positive_reviews_first_sent.json` (those first sentences) and
`scored_gpt_dataset.json` (602 prompts x 6 gpt2-imdb continuations with their scores). Offline runs
need one or the other; without either they stop in one line that names both ways out.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import config
from common.errors import InputError, first_line
from common.readers import read_json_records

_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
SFT_SENTENCES = 3  # sentences of each review's opening in the tiny base policy's training text


def first_sentence(review: str) -> str:
    """Text before the first '.', as the study split its reviews (HTML line breaks become spaces)."""
    return _HTML_BREAK.sub(" ", review).split(".", 1)[0].strip()


def review_opening(review: str, sentences: int = SFT_SENTENCES) -> str:
    """The first `sentences` sentences of a review (HTML line breaks become spaces)."""
    parts = _HTML_BREAK.sub(" ", review).split(".")
    opening = ".".join(parts[:sentences]).strip()
    return opening + "." if len(parts) > sentences else opening


def offline() -> bool:
    """HF_HUB_OFFLINE as every Hugging Face loader reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def offline_hint(source: str) -> str:
    """The one line for IMDb text that cannot be had: both ways out."""
    return (
        f"IMDb text: {source} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; go online, or "
        f"set {config.DATA_DIR_ENV} to a folder holding {config.PROMPTS_FILE} and {config.SCORED_FILE}"
    )


def local_data_dir(data_dir: Path | str | None = None) -> Path | None:
    """The local folder of the study's files (`data_dir`, else FDPO_DATA_DIR), or None when neither is set.

    Raises:
        InputError: the folder is set but lacks one of the two files.
    """
    folder = Path(data_dir).expanduser() if data_dir else config.DATA_DIR
    if folder is None:
        return None
    named = "--data_dir" if data_dir else config.DATA_DIR_ENV
    missing = [name for name in (config.PROMPTS_FILE, config.SCORED_FILE) if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{named} {folder}: no {' or '.join(missing)} there (the study's IMDb files)")
    return folder


def hub_status(name: str, repo_type: str = "model") -> str:
    """'found', 'missing' or 'will download': whether `name` (a local path or Hub id) can be loaded now."""
    path = Path(name).expanduser()
    if path.exists() or looks_local(name):
        return "found" if path.exists() else "missing"
    if cached(name, repo_type):
        return "found"
    return "missing" if offline() else "will download"


def looks_local(name: str) -> bool:
    """A path rather than a Hub id (`org/name`): it starts with . / ~ or has other than one slash."""
    return name.startswith((".", "/", "~")) or name.count("/") != 1


def cached(repo_id: str, repo_type: str) -> bool:
    """Whether the Hub cache (or, for a dataset, `datasets`' own cache) already holds `repo_id`."""
    from huggingface_hub import try_to_load_from_cache

    if repo_type == "model":
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    from datasets import config as datasets_config
    from huggingface_hub import constants

    hub_copy = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}" / "snapshots"
    arrow_copy = Path(datasets_config.HF_DATASETS_CACHE) / repo_id.replace("/", "___")
    return any(path.is_dir() and any(path.iterdir()) for path in (hub_copy, arrow_copy))


def load_reviews(source: str, split: str = "train"):
    """IMDb reviews (`text`, `label`) from a Hub id or a local `datasets` folder with the Hub's schema."""
    from datasets import load_dataset

    status = hub_status(source, "dataset")
    if status == "missing":
        raise InputError(f"{source}: no such folder" if looks_local(source) else offline_hint(source))
    try:
        reviews = load_dataset(source, split=split)
    except Exception as error:  # the Hub client raises many types; all mean "could not load it"
        raise InputError(f"{source}: cannot load IMDb reviews ({first_line(error)})") from None
    if not {"text", "label"} <= set(reviews.column_names):
        raise InputError(f"{source}: needs 'text' and 'label' columns (the schema of {config.IMDB_DATASET})")
    return reviews


def positive_first_sentences(source: str) -> list[str]:
    """The study's prompts: the first sentence of every positive (label 1) review of the train split."""
    reviews = load_reviews(source)
    return [
        first_sentence(text)
        for text, label in zip(reviews["text"], reviews["label"], strict=True)
        if label == 1
    ]


def default_prompt_source() -> str:
    """The prompt file of the local folder when one is set, else the Hub dataset."""
    folder = config.DATA_DIR
    return str(folder / config.PROMPTS_FILE) if folder else config.IMDB_DATASET


def texts(data_dir: Path | str | None = None) -> list[str]:
    """Review text to train the tiny tokenizer and base policy on.

    From the local folder: the study's first sentences and its scored continuations (~1.2M tokens).
    From the Hub: the opening sentences of every train review, both labels, as gpt2-imdb saw all of IMDb.
    """
    folder = local_data_dir(data_dir)
    if folder is None:
        return [
            opening for opening in map(review_opening, load_reviews(config.IMDB_DATASET)["text"]) if opening
        ]
    found, scored = read_local_files(folder)
    return [*found, *(answer for record in scored for answer in record["answers"])]


def read_local_files(folder: Path) -> tuple[list[str], list[dict]]:
    """The study's two files in `folder`, parsed and checked: the first sentences (a list of strings) and the
    scored records (common.pairing's schema).

    Raises:
        InputError: one line naming the file that is missing, cut short, emptied or not in its format.
    """
    from common.pairing import load_scored_json  # common.pairing reads no IMDb text; imported on use

    prompts_path = folder / config.PROMPTS_FILE
    found = read_json_records(prompts_path)
    if not isinstance(found, list) or not found or not all(isinstance(text, str) for text in found):
        raise InputError(f"{prompts_path}: expected a non-empty JSON list of strings (the first sentences)")
    return found, load_scored_json(folder / config.SCORED_FILE)


def text_fingerprint(data_dir: Path | str | None = None) -> str:
    """What `texts` reads, named by content: the SHA-256 of the local files (so a base policy is rebuilt when
    they change, and reused when the same files sit in another folder), else the Hub dataset's id."""
    folder = local_data_dir(data_dir)
    if folder is None:
        return config.IMDB_DATASET
    digest = hashlib.sha256()
    for name in (config.PROMPTS_FILE, config.SCORED_FILE):
        with open(folder / name, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return f"sha256:{digest.hexdigest()}"


def text_source(data_dir: Path | str | None = None) -> str:
    """What `texts` reads, for manifests and plans."""
    folder = local_data_dir(data_dir)
    return str(folder) if folder else config.IMDB_DATASET
