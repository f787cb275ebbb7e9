"""Small synthetic IMDb-like text that the tests write themselves, in the study's file formats.

The study's own files (`FDPO_DATA_DIR`) are needed only by the tests that compare with them; every
other test runs on these, so the suite passes on a bare clone.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from pathlib import Path

import pandas as pd

# The study's file names (config.py's; not imported here, so the test session can set FDPO_DATA_DIR first).
PROMPTS_FILE = "positive_reviews_first_sent.json"
SCORED_FILE = "scored_gpt_dataset.json"

OPENERS = ["This movie", "The film", "I watched this", "This picture", "The story", "My wife and I saw this",
           "The sequel", "This documentary", "The remake", "This cartoon", "The series", "This western"]  # fmt: skip
VERBS = ["is", "was", "felt", "seemed", "remains", "turned out"]
POSITIVE = ["wonderful", "brilliant", "great", "moving", "beautiful", "funny", "excellent", "charming",
            "delightful", "superb", "touching", "clever"]  # fmt: skip
NEGATIVE = ["boring", "awful", "dull", "terrible", "weak", "bad", "silly", "poor", "clumsy", "tedious"]
NOUNS = ["acting", "plot", "cast", "music", "ending", "script", "direction", "camera work", "dialogue",
         "pacing", "lead actress", "villain"]  # fmt: skip
PLACES = ["in the theater", "on television", "at a festival", "with friends", "last night", "as a child"]


def first_sentences(count: int, seed: int = 0) -> list[str]:
    """`count` distinct review openings without the full stop, as in the study's prompt file."""
    rng = random.Random(seed)
    combos = list(itertools.product(OPENERS, VERBS, POSITIVE + NEGATIVE, PLACES))
    rng.shuffle(combos)
    return [f"{opener} {verb} {adjective} {place}" for opener, verb, adjective, place in combos[:count]]


def continuation(rng: random.Random) -> tuple[str, float]:
    """A two- or three-sentence continuation and a sentiment score (positive minus negative sentences).

    Each sentence opens with a word of its sentiment, as review sentences often do, so a few DPO steps on
    a tiny model already learn something from the pairs.
    """
    sentences, score = [], 0.0
    for _ in range(rng.choice((2, 3))):
        positive = rng.random() < 0.5
        adjective = rng.choice(POSITIVE if positive else NEGATIVE)
        opener = "Happily" if positive else "Sadly"
        sentences.append(f"{opener}, the {rng.choice(NOUNS)} {rng.choice(VERBS)} {adjective}")
        score += 1.0 if positive else -1.0
    return ". " + ". ".join(sentences) + ".", score + rng.uniform(-0.4, 0.4)  # no two scores tie


def scored_records(prompts: list[str], answers_per_prompt: int = 6, seed: int = 0) -> list[dict]:
    """The study's scored format: {idx, prompt, answers (prompt + continuation), rm_scores}."""
    rng = random.Random(seed)
    records = []
    for idx, prompt in enumerate(prompts):
        drawn = [continuation(rng) for _ in range(answers_per_prompt)]
        records.append({"idx": idx, "prompt": prompt, "answers": [prompt + text for text, _ in drawn],
                        "rm_scores": [round(score, 4) for _, score in drawn]})  # fmt: skip
    return records


def write_imdb_files(folder: Path, prompts: int = 2000, scored: int = 400, seed: int = 0) -> Path:
    """A folder like the study's data: the prompt file and the scored file, ready for FDPO_DATA_DIR."""
    folder.mkdir(parents=True, exist_ok=True)
    sentences = first_sentences(prompts, seed)
    (folder / PROMPTS_FILE).write_text(json.dumps(sentences, indent=1))
    (folder / SCORED_FILE).write_text(json.dumps(scored_records(sentences[:scored], seed=seed)))
    return folder


def write_reviews_folder(folder: Path, reviews: list[tuple[str, int]]) -> Path:
    """A local `datasets` folder laid out as `stanfordnlp/imdb` on the Hub: text and label, a train split."""
    (folder / "plain_text").mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"text": [text for text, _ in reviews], "label": [label for _, label in reviews]})
    frame.to_parquet(folder / "plain_text" / "train-00000-of-00001.parquet", index=False)
    return folder


def scored_file() -> str:
    """The synthetic scored file the session writes (pairs on the fly), for `train.py --dataset`."""
    return str(Path(os.environ["FDPO_DATA_DIR"]) / SCORED_FILE)
