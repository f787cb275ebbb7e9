"""Where IMDb text comes from: the Hub by default, a local folder of the study's files by override, and one
clear line offline with neither."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic import write_reviews_folder

import config
from common import imdb
from common.errors import InputError
from common.prompts import load_prompts

REPO = Path(__file__).resolve().parents[1]

REVIEWS = [
    ("Loved it. Truly.", 1),
    ("Hated it. Awful.", 0),
    ("A gem<br />of a film. Yes.", 1),
    ("Loved it. Again, and again.", 1),  # the same first sentence: dropped as a duplicate
    (". Starts with a full stop.", 1),  # an empty first sentence: dropped
    ("  Spaced out   . Fine.", 1),
    ("No full stop at all", 1),
    ("Dull<br/>and long. Skip.", 0),
]


@pytest.fixture
def reviews_folder(tmp_path) -> Path:
    return write_reviews_folder(tmp_path / "imdb", REVIEWS)


def test_the_hub_path_gives_the_studys_prompt_rule_exactly(reviews_folder):
    # `stanfordnlp/imdb` goes through `datasets.load_dataset`; a local folder with its schema takes the same path.
    assert load_prompts(str(reviews_folder)) == [
        "Loved it",
        "A gem of a film",
        "Spaced out",
        "No full stop at all",
    ]


def test_without_a_local_folder_the_tiny_text_comes_from_the_hub_reviews(reviews_folder, monkeypatch):
    monkeypatch.setattr(config, "DATA_DIR", None)
    monkeypatch.setattr(config, "IMDB_DATASET", str(reviews_folder))
    assert imdb.default_prompt_source() == str(reviews_folder)
    assert imdb.texts() == ["Loved it. Truly.", "Hated it. Awful.", "A gem of a film. Yes.",
                            "Loved it. Again, and again.", ". Starts with a full stop.", "Spaced out   . Fine.",
                            "No full stop at all", "Dull and long. Skip."]  # fmt: skip
    assert imdb.review_opening("One. Two. Three. Four. Five.") == "One. Two. Three."


def test_a_local_folder_overrides_the_hub(data_dir, monkeypatch):
    monkeypatch.setattr(config, "DATA_DIR", data_dir)
    assert imdb.default_prompt_source() == str(data_dir / config.PROMPTS_FILE)
    assert imdb.text_source() == str(data_dir)
    assert len(imdb.texts()) == 2000 + 400 * 6  # the synthetic prompts and every scored answer


def test_a_local_folder_without_the_studys_files_is_named(tmp_path, monkeypatch):
    (tmp_path / config.PROMPTS_FILE).write_text("[]")
    monkeypatch.setattr(config, "DATA_DIR", tmp_path)
    with pytest.raises(InputError, match=f"FDPO_DATA_DIR {tmp_path}: no {config.SCORED_FILE} there"):
        imdb.texts()


def test_hub_status_says_found_missing_or_will_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert imdb.hub_status(str(tmp_path)) == "found"
    assert imdb.hub_status(str(tmp_path / "nope")) == "missing"
    assert imdb.hub_status("stanfordnlp/imdb", "dataset") == "missing"
    assert imdb.hub_status("lvwerra/gpt2-imdb") == "missing"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert imdb.hub_status("stanfordnlp/imdb", "dataset") == "will download"
    from huggingface_hub import constants

    (Path(constants.HF_HUB_CACHE) / "datasets--stanfordnlp--imdb" / "snapshots" / "0123").mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert imdb.hub_status("stanfordnlp/imdb", "dataset") == "found"


def offline_bare_env(tmp_path) -> dict:
    """A user's shell offline: no local data, an empty Hugging Face cache, every default path unset."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FDPO_")}
    return {
        **env,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "FDPO_MODELS_DIR": str(tmp_path / "m"),
    }


@pytest.mark.parametrize(
    "command",
    [
        ["dataset/main.py", "--preset", "tiny", "--out_dir", "{out}"],
        ["train_dpo/sft.py", "--out_dir", "{out}"],
        ["train_dpo/train.py", "--model", "tiny", "--output_dir", "{out}"],
    ],
    ids=["dataset", "sft", "train"],
)
def test_offline_without_data_is_one_line_naming_both_ways_out(command, tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, *(part.format(out=out) for part in command)]
    result = subprocess.run(argv, cwd=REPO, env=offline_bare_env(tmp_path), capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: IMDb text: stanfordnlp/imdb is not in the local Hugging Face cache")
    assert "go online" in line and "FDPO_DATA_DIR" in line
    assert not out.exists()
