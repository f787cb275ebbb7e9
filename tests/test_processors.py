"""The vectorised processors equal transformers' own; the CPU's static KV cache draws the same samples."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (
    AutoTokenizer,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    SequenceBiasLogitsProcessor,
)

from common.generation import Decoding, study_processors
from common.processors import NoBadWords, NoRepeatNGram, SequenceBias


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("length", [1, 2, 5, 40])
def test_matches_transformers(n, length):
    generator = torch.Generator().manual_seed(n * 100 + length)
    input_ids = torch.randint(0, 6, (16, length), generator=generator)  # small vocab: many repeats
    scores = torch.randn(16, 6, generator=generator)
    expected = NoRepeatNGramLogitsProcessor(n)(input_ids, scores.clone())
    torch.testing.assert_close(NoRepeatNGram(n)(input_ids, scores.clone()), expected)


def test_hand_worked_bigram():
    # "a b a": the bigram (a, b) exists, the sequence ends in a, so b is banned next; nothing else is.
    scores = NoRepeatNGram(2)(torch.tensor([[0, 1, 0]]), torch.zeros(1, 3))
    assert scores.tolist() == [[0.0, float("-inf"), 0.0]]


VOCAB = 6
SEQUENCE = st.lists(st.integers(1, VOCAB - 1), min_size=1, max_size=4).map(tuple)  # transformers: ids > 0


@settings(max_examples=200, deadline=None)
@given(
    biases=st.dictionaries(
        SEQUENCE, st.sampled_from([-1.5, 1.5, 0.25, float("-inf")]), min_size=1, max_size=12
    ),
    length=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_sequence_bias_matches_transformers(biases, length, seed):
    """Small vocabulary and short rows: sequences that share last tokens and prefixes, and that do not fit."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (8, length), generator=generator)
    scores = torch.randn(8, VOCAB, generator=generator)
    as_lists = [[list(ids), value] for ids, value in biases.items()]
    expected = SequenceBiasLogitsProcessor(as_lists)(input_ids, scores.clone())
    assert torch.equal(SequenceBias(as_lists)(input_ids, scores.clone()), expected)
    banned = [list(ids) for ids in biases]
    expected = NoBadWordsLogitsProcessor(banned, eos_token_id=1)(input_ids, scores.clone())
    assert torch.equal(NoBadWords(banned, eos_token_id=1)(input_ids, scores.clone()), expected)


def test_the_study_processors_match_transformers(tiny_model_dir):
    """The study's word lists and markup through the tiny tokenizer, over rows of generated-looking text."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ours = study_processors(tokenizer, Decoding())
    bias, bad = ours[1], ours[2]
    assert isinstance(bias, SequenceBias) and isinstance(bad, NoBadWords)
    assert sum(len(ids) > 1 for ids in bias.sequence_bias) >= 5  # multi-token words are what is vectorised
    theirs = [SequenceBiasLogitsProcessor([[list(ids), v] for ids, v in bias.sequence_bias.items()]),
              NoBadWordsLogitsProcessor([list(ids) for ids in bad.sequence_bias], tokenizer.eos_token_id)]  # fmt: skip
    # Rows that end in the first tokens of biased and banned sequences, so that their last tokens apply.
    prefixes = [ids[:-1] for ids in [*bias.sequence_bias, *bad.sequence_bias] if len(ids) > 1]
    rows = [list(tokenizer(" It was a film and").input_ids[-6:]) + list(p) for p in prefixes]
    width = max(map(len, rows))
    input_ids = torch.tensor([[tokenizer.eos_token_id] * (width - len(r)) + r for r in rows])
    scores = torch.randn(len(rows), len(tokenizer), generator=torch.Generator().manual_seed(0))
    for mine, reference in zip((bias, bad), theirs, strict=True):
        expected = reference(input_ids, scores.clone())
        assert not torch.equal(expected, scores)
        assert torch.equal(mine(input_ids, scores.clone()), expected)


def test_sampling_with_a_static_cache_draws_what_the_dynamic_cache_draws(tiny_model_dir, monkeypatch):
    """The CPU's static KV cache changes the speed of sampling, not one drawn token."""
    import common.generation as generate
    from common.models import load_policy

    policy = load_policy(str(tiny_model_dir), "cpu")
    model, tokenizer = policy.model, policy.tokenizer
    prompts = ["A film", "This movie was one of the best I have seen, and", "Bad."]
    decoding = Decoding(method="sample", k=3, max_new_tokens=24, top_k=50)
    assert generate.static_kv_cache(model.device)
    static = generate.generate_batch(model, tokenizer, prompts, decoding, seed=3)
    monkeypatch.setattr(generate, "static_kv_cache", lambda device: False)
    assert generate.generate_batch(model, tokenizer, prompts, decoding, seed=3) == static
    assert len({text for texts in static for text in texts}) == 9  # nine different draws
