"""Evaluation metrics against hand-computed values."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from train_dpo.metrics import (
    distinct_n,
    expected_calibration_error,
    mean_ci,
    preference_probability,
    unigram_entropy,
)
from train_dpo.models import completion_stats


def test_unigram_entropy_of_known_distributions():
    assert unigram_entropy([[0, 0], [1, 1]]) == pytest.approx(math.log(2))
    assert unigram_entropy([[7, 7, 7]]) == 0.0
    p = np.array([0.5, 0.25, 0.25])
    assert unigram_entropy([[0, 0, 1], [2]]) == pytest.approx(-(p * np.log(p)).sum())


def test_distinct_n():
    assert distinct_n([[1, 2, 1, 2]], 1) == 2 / 4
    assert distinct_n([[1, 2, 1, 2]], 2) == 2 / 3  # (1,2), (2,1), (1,2)
    assert math.isnan(distinct_n([[1]], 2))


def test_ece_on_a_hand_made_set():
    # Confidences 0.9, 0.9 (both right) and 0.6, 0.6 (one right): |1 - .9| / 2 + |.5 - .6| / 2 = 0.1.
    assert expected_calibration_error([0.9, 0.9, 0.6, 0.4]) == pytest.approx(0.1)
    assert expected_calibration_error([0.5, 0.5]) == 0.0  # ties are coin flips, confidence 0.5
    assert expected_calibration_error([0.99] * 4) == pytest.approx(0.01)


def test_preference_probability_is_bradley_terry_on_f_prime():
    assert preference_probability(np.array([1.0]), np.array([0.0]), beta=2.0)[0] == pytest.approx(
        1 / (1 + math.exp(-2))
    )


def test_mean_ci_covers_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 50), rng.normal(1.0, 1.0, 5000)
    m, lo, hi = mean_ci(small)
    assert lo < m < hi and lo < 1.0 < hi
    _, lo_l, hi_l = mean_ci(large)
    assert hi_l - lo_l < (hi - lo) / 5
    assert mean_ci([2.0]) == (2.0, 2.0, 2.0)


class UniformLM(torch.nn.Module):
    """Every next token equally likely: entropy log V per token, log-prob -log V per token."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=64)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


def test_completion_stats_on_a_known_distribution(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    vocab = len(tokenizer)
    prompts, completions = ["A good film", "Bad"], [" indeed, truly.", " and long and dull"]
    stats = completion_stats(UniformLM(vocab), tokenizer, prompts, completions, batch_size=1)
    n = torch.tensor(
        [len(tokenizer(c, add_special_tokens=False).input_ids) for c in completions], dtype=torch.float64
    )
    torch.testing.assert_close(stats["tokens"], n)
    torch.testing.assert_close(stats["entropy"], n * math.log(vocab))
    torch.testing.assert_close(stats["logps"], -n * math.log(vocab))
