"""The vectorised n-gram ban equals transformers' own processor."""

import pytest
import torch
from transformers import NoRepeatNGramLogitsProcessor

from dataset.processors import NoRepeatNGram


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
