"""Evaluation metrics as pure functions: diversity, calibration, and bootstrap confidence intervals."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy import stats


def unigram_entropy(token_lists: Sequence[Sequence[int]]) -> float:
    """Entropy (nats) of the unigram distribution of all tokens of all generations: the study's metric."""
    counts = Counter(token for tokens in token_lists for token in tokens)
    total = sum(counts.values())
    if total == 0:
        return float("nan")
    return -sum(c / total * math.log(c / total) for c in counts.values())


def distinct_n(token_lists: Sequence[Sequence[int]], n: int) -> float:
    """Distinct n-grams / all n-grams over every generation (Li et al., 2016)."""
    grams = [tuple(tokens[i : i + n]) for tokens in token_lists for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def preference_probability(chosen_fprime: np.ndarray, rejected_fprime: np.ndarray, beta: float) -> np.ndarray:
    """P(chosen preferred) = sigma(beta (f'(u_w) - f'(u_l))), the Bradley-Terry model f-DPO implies."""
    return 1.0 / (1.0 + np.exp(-beta * (np.asarray(chosen_fprime) - np.asarray(rejected_fprime))))


def preference_correct(prob_chosen: Sequence[float]) -> np.ndarray:
    """1 where the chosen answer is predicted, 0 where the rejected one is, 0.5 for a tie."""
    p = np.asarray(prob_chosen, dtype=float)
    return np.where(p > 0.5, 1.0, np.where(p < 0.5, 0.0, 0.5))


def expected_calibration_error(prob_chosen: Sequence[float], n_bins: int = 10) -> float:
    """ECE of predicted preferences when the chosen answer is the true preference.

    Each pair predicts the side it gives more probability, with confidence max(p, 1 - p); pairs are
    binned by confidence in [0.5, 1] and ECE = sum_b (n_b / N) |accuracy_b - mean confidence_b|.
    A tie (p = 0.5) is a coin flip: half right.
    """
    p = np.asarray(prob_chosen, dtype=float)
    if p.size == 0:
        return float("nan")
    confidence = np.maximum(p, 1.0 - p)
    correct = preference_correct(p)
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def mean_ci(values: Sequence[float], confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval of the mean (scipy), NaN where undefined."""
    x = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    if x.size < 2 or np.all(x == x[0]):
        return float(x.mean()), float(x.mean()), float(x.mean())
    result = stats.bootstrap(
        (x,), np.mean, confidence_level=confidence, n_resamples=2000, method="percentile", random_state=seed
    )
    return float(x.mean()), float(result.confidence_interval.low), float(result.confidence_interval.high)
