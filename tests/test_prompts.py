"""Prompt loading from every accepted source, and the errors for bad ones."""

import json

import pandas as pd
import pytest

import config
from common.errors import InputError
from common.imdb import first_sentence
from common.prompts import load_prompts, sample_prompts


def test_the_studys_prompt_file(study_data_dir):
    prompts = load_prompts(str(study_data_dir / config.PROMPTS_FILE))
    assert 12_000 < len(prompts) <= 12_500  # duplicates removed
    assert len(set(prompts)) == len(prompts) and all(p == p.strip() and p for p in prompts)


def test_first_sentence_splits_like_the_study():
    assert first_sentence("Great movie. Loved it.") == "Great movie"
    assert first_sentence("No full stop<br />at all") == "No full stop at all"


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_file_formats(tmp_path, suffix):
    rows = [{"prompt": " A film "}, {"prompt": ""}, {"prompt": "A film"}, {"prompt": "Another"}]
    path = tmp_path / f"prompts{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    elif suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    assert load_prompts(str(path)) == ["A film", "Another"]


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "missing.json", "no such prompt file"),
        ("[1, 2", "bad.json", "cannot parse"),
        ('[{"text": "x"}]', "cols.json", "string 'prompt' column"),
        ("[]", "empty.json", "no non-empty prompts"),
        ('["", "  "]', "blank.json", "no non-empty prompts"),
        ("a,b\n1,2\n", "cols.csv", "string 'prompt' column"),
        ("x", "prompts.txt", "unsupported prompt file type"),
    ],
)
def test_bad_prompt_files(tmp_path, content, name, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=message) as info:
        load_prompts(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_samples_are_disjoint_and_seeded():
    prompts = [f"p{i}" for i in range(100)]
    train, held_out = sample_prompts(prompts, 30, 20, seed=3)
    assert len(train) == 30 and len(held_out) == 20 and not set(train) & set(held_out)
    assert sample_prompts(prompts, 30, 20, seed=3) == (train, held_out)
    with pytest.raises(InputError, match="only 100 distinct"):
        sample_prompts(prompts, 90, 20, seed=0)


def test_reviews_dataset_gives_first_sentences_of_positive_reviews(tmp_path):
    # The Hub path (`stanfordnlp/imdb`) goes through `datasets.load_dataset`; a local folder takes the same path.
    reviews = pd.DataFrame(
        {
            "text": [
                "Loved it. Truly.",
                "Hated it. Awful.",
                "A gem<br />of a film. Yes.",
                "Loved it. Again.",
            ],
            "label": [1, 0, 1, 1],
        }
    )
    (tmp_path / "imdb").mkdir()
    reviews.to_parquet(tmp_path / "imdb" / "train.parquet")
    assert load_prompts(str(tmp_path / "imdb")) == ["Loved it", "A gem of a film"]
