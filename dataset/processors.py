"""A vectorised no-repeat-n-gram ban: the same rule as transformers' processor, without its Python loops.

transformers' NoRepeatNGramLogitsProcessor rebuilds every row's n-gram table in Python at every step,
which costs more than the model's forward pass once prompts are batched. Here one tensor comparison
finds, for all rows at once, each earlier n-gram whose first n-1 tokens equal the last n-1 tokens.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


class NoRepeatNGram(LogitsProcessor):
    """Ban any token that would complete an n-gram already present in the row (prompt included)."""

    def __init__(self, ngram_size: int):
        if ngram_size < 1:
            raise ValueError(f"ngram_size must be >= 1, got {ngram_size}")
        self.n = ngram_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        length = input_ids.shape[1]
        if length < self.n:  # no complete n-gram yet
            return scores
        if self.n == 1:
            return scores.scatter(1, input_ids, float("-inf"))
        windows = input_ids.unfold(1, self.n, 1)  # (rows, length - n + 1, n): every n-gram so far
        current = input_ids[:, length - self.n + 1 :]  # the n-1 tokens a new n-gram would start with
        matches = (windows[:, :, :-1] == current[:, None, :]).all(-1)
        row_index, window_index = matches.nonzero(as_tuple=True)
        banned = windows[row_index, window_index, -1]
        scores = scores.clone()
        scores[row_index, banned] = float("-inf")
        return scores
