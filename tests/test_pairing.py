"""Pairing and splitting, on the study's own scored generations."""

import json

import pytest

import config
from common.pairing import STUDY_PAIRS, check_pairs, pair_record, pair_scored, split_by_prompt, strip_prompt


@pytest.fixture(scope="module")
def study_records(study_data_dir):
    return json.loads((study_data_dir / config.SCORED_FILE).read_text())


def test_study_file_gives_exactly_the_studys_dataset(study_records):
    pairs = pair_scored(study_records, keep_degenerate=True)
    assert len(study_records) == 602
    assert len(pairs) == 602 * 6 == 3612
    assert all(pair["chosen_reward"] >= pair["rejected_reward"] for pair in pairs)
    # The study kept 55 pairs with an empty continuation (the answer was just the prompt), 5 of them tied.
    assert sum(pair["chosen_reward"] == pair["rejected_reward"] for pair in pairs) == 5
    assert sum(not pair["chosen"].strip() or not pair["rejected"].strip() for pair in pairs) == 55


def test_default_pairing_drops_the_studys_ties_and_empties(study_records):
    pairs = pair_scored(study_records)
    assert len(pairs) == 3557
    assert all(pair["chosen_reward"] > pair["rejected_reward"] for pair in pairs)
    assert all(pair["chosen"].strip() and pair["rejected"].strip() for pair in pairs)
    # Continuations only: no pair repeats its prompt at the start of an answer.
    assert not any(
        p["chosen"].startswith(p["prompt"]) or p["rejected"].startswith(p["prompt"]) for p in pairs
    )


def test_pairs_follow_the_rank_scheme():
    scores = [0.1, 0.9, 0.5, 0.3, 0.7, -0.2]  # ranks: 1(0.9) 4(0.7) 2(0.5) 3(0.3) 0(0.1) 5(-0.2)
    answers = [f"P{i}" for i in range(6)]
    pairs = pair_record("P", answers, scores)
    got = [(p["chosen"], p["rejected"]) for p in pairs]
    assert got == [("1", "3"), ("1", "0"), ("1", "5"), ("4", "5"), ("2", "5"), ("3", "5")]


def test_ties_and_empty_answers_are_skipped():
    pairs = pair_record("P", ["P a", "P b", "P", "P d"], [1.0, 1.0, 0.5, 0.0], pairs=[(0, 1), (0, 2), (0, 3)])
    # (0,1) ties; (0,2) has an empty continuation; only (0,3) remains.
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(" a", " d")]


def test_strip_prompt_keeps_answers_that_do_not_start_with_it():
    assert strip_prompt("Great film", "Great film, truly.") == ", truly."
    assert strip_prompt("Great film", "Other text") == "Other text"


@pytest.mark.parametrize(
    ("pairs", "k", "message"),
    [([(0, 6)], 6, "out of range"), ([(3, 1)], 6, "above"), ([(0, 1)], 1, "at least 2")],
)
def test_bad_pair_schemes(pairs, k, message):
    with pytest.raises(ValueError, match=message):
        check_pairs(pairs, k)


def test_split_is_by_prompt_deterministic_and_about_a_fifth(study_records):
    pairs = pair_scored(study_records)
    train, test = split_by_prompt(pairs, test_size=0.2, seed=0)
    assert len(train) + len(test) == 3557
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in test}
    test_prompts = len({p["prompt"] for p in test})
    assert 0.15 < test_prompts / len({p["prompt"] for p in pairs}) < 0.25
    assert split_by_prompt(list(reversed(pairs)), 0.2, 0)[1] == list(reversed(test))  # order-independent
    assert split_by_prompt(pairs, 0.2, seed=1)[1] != test


def test_study_pairs_constant():
    assert STUDY_PAIRS == ((0, 3), (0, 4), (0, 5), (1, 5), (2, 5), (3, 5))
