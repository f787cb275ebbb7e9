"""The study's logits processors, vectorised: the same rules as transformers' processors, without their loops.

transformers' NoRepeatNGramLogitsProcessor rebuilds every row's n-gram table in Python at every step,
which costs more than the model's forward pass once prompts are batched. Here one tensor comparison
finds, for all rows at once, each earlier n-gram whose first n-1 tokens equal the last n-1 tokens.

Its SequenceBiasLogitsProcessor (and NoBadWordsLogitsProcessor, the same with a bias of -inf) runs
five tensor operations per biased multi-token sequence at every step: with the study's sentiment words
and banned markup, hundreds of small kernels per step, and per group in diverse beam search. Here the
sequences of each length are matched against the rows' last tokens at once. (transformers 5 vectorised
its own the same way; these stay as the tested equal of both.)
"""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import LogitsProcessor, NoBadWordsLogitsProcessor, SequenceBiasLogitsProcessor


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


class _SequencesOfEachLengthAtOnce:
    """transformers' sequence-bias `__call__` with one comparison per sequence length, not per sequence.

    Mixed into transformers' own classes, so their validation, their EOS filter (bad words) and their
    single-token bias vector stay theirs.
    """

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.prepared_bias_variables:
            self._prepare_bias_variables(scores)
            self._by_length = self._group_by_length(scores.device)
        bias = torch.zeros_like(scores)
        bias += self.length_1_bias
        for prefixes, last_tokens, values in self._by_length:
            width = prefixes.shape[1]
            if width > input_ids.shape[1]:  # a prefix longer than the context: skipped, as transformers 5
                continue
            # (rows, sequences): whether the row ends in the sequence's prefix
            matches = (input_ids[:, None, -width:] == prefixes[None]).all(-1)
            # where, not a product: a bias of -inf times a mismatch (0) would be NaN
            bias.index_add_(1, last_tokens, torch.where(matches, values, 0.0))
        return scores + bias

    def _group_by_length(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per length of the multi-token sequences: their prefixes, last tokens and biases."""
        groups = defaultdict(list)
        for ids, value in self.sequence_bias.items():
            if len(ids) > 1:
                groups[len(ids)].append((ids, value))
        return [
            (
                torch.tensor([ids[:-1] for ids, _ in members], device=device),
                torch.tensor([ids[-1] for ids, _ in members], device=device),
                torch.tensor([value for _, value in members], dtype=torch.float, device=device),
            )
            for _, members in sorted(groups.items())
        ]


class SequenceBias(_SequencesOfEachLengthAtOnce, SequenceBiasLogitsProcessor):
    """Add a bias to the token that would complete each given sequence."""


class NoBadWords(_SequencesOfEachLengthAtOnce, NoBadWordsLogitsProcessor):
    """Ban the token that would complete each given sequence (EOS alone is never banned)."""
