"""Per-sample evaluation metrics as pure functions: diversity, the implied preference, divergence estimators.

The statistics built on them (intervals over prompts and seeds, calibration bins and ECE) live in
`analysis/intervals.py` and `analysis/calibration.py`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from scipy import special

from train_dpo.divergences import Divergence


def unigram_entropy(token_lists: Sequence[Sequence[int]]) -> float:
    """Entropy (nats) of the unigram distribution of all tokens of all generations.

    The study's formula; which tokens it is applied to (tokenizer, prompt included or not) is the
    caller's choice, and the column name says it.
    """
    counts = Counter(token for tokens in token_lists for token in tokens)
    total = sum(counts.values())
    if total == 0:
        return float("nan")
    return -sum(c / total * math.log(c / total) for c in counts.values())


def distinct_n(token_lists: Sequence[Sequence[int]], n: int) -> float:
    """Distinct n-grams / all n-grams over every generation (Li et al., 2016)."""
    grams = [tuple(tokens[i : i + n]) for tokens in token_lists for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def preference_margin(
    chosen_logratios: np.ndarray, rejected_logratios: np.ndarray, divergence: Divergence, beta: float
) -> np.ndarray:
    """beta (f'(u_w) - f'(u_l)) per pair, in float64: the margin the f-DPO loss acts on. Shapes (P,)."""
    f_prime = divergence.f_prime
    chosen = f_prime(torch.as_tensor(np.asarray(chosen_logratios, dtype=np.float64)))
    rejected = f_prime(torch.as_tensor(np.asarray(rejected_logratios, dtype=np.float64)))
    return (beta * (chosen - rejected)).numpy()


def preference_probability(chosen_fprime: np.ndarray, rejected_fprime: np.ndarray, beta: float) -> np.ndarray:
    """P(chosen preferred) = sigma(beta (f'(u_w) - f'(u_l))), the Bradley-Terry model f-DPO implies.

    Only the sigmoid loss implies it; a hinge-trained policy has no such probability.
    """
    return special.expit(beta * (np.asarray(chosen_fprime) - np.asarray(rejected_fprime)))


# --- divergence estimators: per-sample terms whose mean is the estimate


def f_of_ratio(divergence: Divergence, logratios: Sequence[float]) -> np.ndarray:
    """f(u) per sample, u = exp(log u) in float64 and never clamped.

    Beyond |log u| ~ 709 u over- or underflows and f(u) may come out infinite or NaN; such a sample is
    counted as non-finite by `mean_ci`, not hidden. Shape (N,) -> (N,).
    """
    with np.errstate(over="ignore", under="ignore"):
        u = torch.as_tensor(np.exp(np.asarray(logratios, dtype=np.float64)))
    return divergence.f(u).numpy()


def f_divergence_ref_terms(divergence: Divergence, ref_sample_logratios: Sequence[float]) -> np.ndarray:
    """Terms f(u) whose mean is D_f(pi || pi_ref) = E_{y ~ pi_ref}[f(u)], u = pi(y) / pi_ref(y).

    `ref_sample_logratios`: log u of completions sampled from the reference. The definition of D_f
    itself: no importance weights, so it is the estimator to report.
    """
    return f_of_ratio(divergence, ref_sample_logratios)


def f_divergence_is_terms(divergence: Divergence, policy_sample_logratios: Sequence[float]) -> np.ndarray:
    """Terms f(u) / u whose mean is D_f = E_{y ~ pi}[f(u) / u] (importance weights 1 / u).

    Unbiased, but where pi puts mass the reference does not, 1 / u is huge for some samples and a few
    terms carry the sum: check `effective_sample_size` before trusting it.
    """
    logu = np.asarray(policy_sample_logratios, dtype=np.float64)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return f_of_ratio(divergence, logu) * np.exp(-logu)


def effective_sample_size(terms: Sequence[float]) -> float:
    """(sum |t|)^2 / sum t^2 over the finite terms: how many samples effectively carry a mean.

    Equals N when every term has the same size and 1 when one term carries the whole sum (Kish's
    effective sample size, applied to the terms' magnitudes).
    """
    t = np.abs(np.asarray(terms, dtype=np.float64))
    t = t[np.isfinite(t)]
    if t.size == 0 or not t.any():
        return float(t.size)
    log_t = np.log(t[t > 0])  # in log space: terms of 1e200 would overflow their squares
    return float(np.exp(2 * special.logsumexp(log_t) - special.logsumexp(2 * log_t)))
