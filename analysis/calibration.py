"""Calibration of a preference probability: which side a pair predicts, reliability bins, ECE.

A pair's implied probability p that the chosen answer is preferred predicts the side it gives more
probability, with confidence max(p, 1 - p) in [0.5, 1]; a tie (p = 0.5) is a coin flip, half right. These
functions take plain arrays, so evaluate.py (one run's pairs) and the frontier analysis (a bootstrap over
many runs' pairs) bin the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import optimize, special


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


# --- calibration comparable across runs: the finite-sample floor, and temperature scaling


def ece_floor(confidence: Sequence[float], n_bins: int = 10) -> float:
    """The expected binned ECE of a perfectly calibrated run with these confidences: the ECE that noise
    alone gives `len(confidence)` pairs, so an ECE minus it compares runs of other sizes and confidences.

    Exact, not simulated: in a perfectly calibrated run pair i is right with probability c_i, independently,
    so a bin's count of right pairs S_b is Poisson-binomial; its pmf is built by convolving the pairs'
    Bernoulli pmfs, and E|S_b - sum c_i| is summed over it. ECE's floor is sum_b E|S_b - C_b| / N. A pair
    at confidence exactly 0.5 is a tie, always half right (`preference_correct`), so it adds 0 and only
    counts in N. O(n_b^2) per bin: a run's few hundred pairs take milliseconds.
    """
    c = np.asarray(confidence, dtype=float)
    c = c[np.isfinite(c)]
    if c.size == 0:
        return float("nan")
    bins = confidence_bins(c, n_bins)
    total = 0.0
    for b in range(n_bins):
        inside = c[(bins == b) & (c > 0.5)]
        if inside.size == 0:
            continue
        pmf = np.ones(1)
        for p in inside:  # the Poisson-binomial pmf of the number right, one pair at a time
            pmf = np.convolve(pmf, [1.0 - p, p])
        total += float(np.abs(np.arange(pmf.size) - inside.sum()) @ pmf)
    return total / c.size


def fit_half(prompts: Sequence[str]) -> np.ndarray:
    """True for the prompts on which a temperature is fitted, False for those it is scored on.

    The split is fixed by the prompt's text alone (the first byte of its SHA-256 even: fit), so every run
    and every grid fits on the same held-out prompts and scores on the others, and no pair is scored by a
    temperature fitted to it or to its prompt's other pairs.
    """
    first_bytes = [hashlib.sha256(str(prompt).encode("utf-8")).digest()[0] for prompt in prompts]
    return np.array([byte % 2 == 0 for byte in first_bytes], dtype=bool)


TEMPERATURE_BOUNDS = (1e-2, 1e2)  # a fit at a bound means the half held no pair on the other side


def fit_temperature(logits: Sequence[float]) -> float:
    """The temperature T minimising the log-loss -mean log sigma(z / T) of the chosen answer's logits z.

    Every pair's label is "chosen preferred", so the log-loss is that of P(chosen); a pair predicted
    wrongly (z < 0) is what keeps T from 0. Convex in 1/T; fitted in log T by bounded scalar minimisation
    (scipy.optimize.minimize_scalar) within TEMPERATURE_BOUNDS. NaN without a finite logit.
    """
    z = np.asarray(logits, dtype=float)
    z = z[np.isfinite(z)]
    if z.size == 0:
        return float("nan")
    low, high = np.log(TEMPERATURE_BOUNDS)
    found = optimize.minimize_scalar(
        lambda log_t: float(np.mean(np.logaddexp(0.0, -z * np.exp(-log_t)))),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(found.x))


def chosen_logits(pairs: pd.DataFrame) -> np.ndarray:
    """Each pair's logit of P(chosen): the margin evaluate.py wrote (prob_chosen = sigma(margin)), or the
    probability's logit where there is no margin (clipped, so a saturated probability stays finite)."""
    p = pairs["prob_chosen"].to_numpy(dtype=float) if "prob_chosen" in pairs else np.full(len(pairs), np.nan)
    logit = special.logit(np.clip(p, 1e-15, 1 - 1e-15))
    if "margin" in pairs:
        margin = pairs["margin"].to_numpy(dtype=float)
        logit = np.where(np.isfinite(margin) & np.isfinite(p), margin, logit)
    return np.where(np.isfinite(p), logit, np.nan)
