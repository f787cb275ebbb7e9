"""Calibration of a preference probability: which side a pair predicts, reliability bins, ECE.

A pair's implied probability p that the chosen answer is preferred predicts the side it gives more
probability, with confidence max(p, 1 - p) in [0.5, 1]; a tie (p = 0.5) is a coin flip, half right. These
functions take plain arrays, so evaluate.py (one run's pairs) and the frontier analysis (a bootstrap over
many runs' pairs) bin the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def margin_correct(margin: Sequence[float]) -> np.ndarray:
    """1 where the chosen answer has the larger implicit reward, 0 where the rejected has, 0.5 for a tie."""
    m = np.asarray(margin, dtype=float)
    return np.where(m > 0, 1.0, np.where(m < 0, 0.0, np.where(m == 0, 0.5, np.nan)))


def preference_correct(prob_chosen: Sequence[float]) -> np.ndarray:
    """1 where the chosen answer is predicted, 0 where the rejected one is, 0.5 for a tie."""
    return margin_correct(np.asarray(prob_chosen, dtype=float) - 0.5)


def reliability_bins(prob_chosen: Sequence[float], n_bins: int = 10) -> pd.DataFrame:
    """Reliability-diagram data: per confidence bin in [0.5, 1], its count, mean confidence and accuracy.

    Each pair predicts the side it gives more probability, with confidence max(p, 1 - p); a tie
    (p = 0.5) is a coin flip, half right. Empty bins are kept (count 0, NaN means) so every run has the
    same rows. Non-finite probabilities are left out of the bins (count them with `mean_ci`).
    """
    p = np.asarray(prob_chosen, dtype=float)
    p = p[np.isfinite(p)]
    confidence = np.maximum(p, 1.0 - p)
    correct = preference_correct(p)
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    bins = confidence_bins(confidence, n_bins)
    rows = []
    for b in range(n_bins):
        in_bin = bins == b
        count = int(in_bin.sum())
        rows.append({"bin": b, "lo": edges[b], "hi": edges[b + 1], "count": count,
                     "confidence": confidence[in_bin].mean() if count else float("nan"),
                     "accuracy": correct[in_bin].mean() if count else float("nan")})  # fmt: skip
    return pd.DataFrame(rows)


def confidence_bins(confidence: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """The bin of each confidence in [0.5, 1] cut into `n_bins` equal bins (right edges inclusive, 0.5 in
    the first)."""
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    return np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)


def expected_calibration_error(prob_chosen: Sequence[float], n_bins: int = 10) -> float:
    """ECE = sum_b (n_b / N) |accuracy_b - mean confidence_b| over `reliability_bins`."""
    bins = reliability_bins(prob_chosen, n_bins)
    total = bins["count"].sum()
    if total == 0:
        return float("nan")
    filled = bins[bins["count"] > 0]
    return float((filled["count"] / total * (filled["accuracy"] - filled["confidence"]).abs()).sum())
