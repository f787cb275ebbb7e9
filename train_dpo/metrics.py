"""Evaluation metrics as pure functions: diversity, calibration, divergence estimators and intervals.

Intervals are over the units that vary independently. Completions of one prompt share that prompt, so
per-completion means get a cluster bootstrap that resamples prompts (`mean_ci`); a configuration
trained with several seeds gets a between-seed t interval on top (`between_seeds`). Values that are
NaN or infinite are never dropped silently: every interval carries the count it left out.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from scipy import special, stats

from train_dpo.divergences import Divergence

logger = logging.getLogger("metrics")


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


# --- intervals


class Interval(NamedTuple):
    """A mean, its interval, and how many values were left out of both for being NaN or infinite."""

    mean: float
    lo: float
    hi: float
    nonfinite: int


def cluster_resample_indices(n_clusters: int, n_resamples: int, seed: int) -> np.ndarray:
    """Clusters drawn with replacement, one row per resample. Shape (n_resamples, n_clusters)."""
    return np.random.default_rng(seed).integers(0, n_clusters, size=(n_resamples, n_clusters))


def cluster_bootstrap_means(
    values: Sequence[float], clusters: Sequence, n_resamples: int = 2000, seed: int = 0
) -> np.ndarray:
    """Mean over all values of each cluster-bootstrap resample. Shape (N,), (N,) -> (n_resamples,).

    A resample draws clusters (prompts) with replacement and keeps every value of each drawn cluster,
    so completions of one prompt, which are not independent, move together. Clusters are numbered in
    sorted order of their labels (`np.unique`); the draws are `cluster_resample_indices(K, n, seed)`.
    `values` must be finite.
    """
    labels, cluster = np.unique(np.asarray(clusters), return_inverse=True)
    x = np.asarray(values, dtype=np.float64)
    sums = np.bincount(cluster, weights=x, minlength=labels.size)
    counts = np.bincount(cluster, minlength=labels.size)
    drawn = cluster_resample_indices(labels.size, n_resamples, seed)
    return sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)


def mean_ci(
    values: Sequence[float],
    clusters: Sequence | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Mean of the finite values and its percentile bootstrap interval, resampling `clusters`.

    Args:
        values: one value per unit (completion, pair). Shape (N,).
        clusters: the group of each value (its prompt), shape (N,); None makes every value its own
            cluster (the plain bootstrap).
    Returns:
        Interval(mean, lo, hi, nonfinite): NaN where undefined (no finite value; lo and hi with fewer
        than two clusters, one value included: a bootstrap of one cluster only ever redraws it, and its
        zero width would claim a certainty that one prompt cannot give), a zero-width interval when
        the values of two or more clusters are all the same.
    """
    x = np.asarray(values, dtype=np.float64)
    groups = np.arange(x.size) if clusters is None else np.asarray(clusters)
    finite = np.isfinite(x)
    nonfinite = int((~finite).sum())
    x, groups = x[finite], groups[finite]
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), nonfinite)
    mean = float(x.mean())
    if np.unique(groups).size < 2:
        return Interval(mean, float("nan"), float("nan"), nonfinite)
    if np.all(x == x[0]):
        return Interval(mean, mean, mean, nonfinite)
    means = cluster_bootstrap_means(x, groups, n_resamples, seed)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(mean, float(lo), float(hi), nonfinite)


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean over seeds and its Student-t interval, mean +- t_{n-1} s / sqrt(n).

    Each seed is one draw of the whole pipeline (training order, LoRA init, sampling), the unit a claim
    about a configuration generalises over; the prompt bootstrap cannot see that variation.
    """
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    x = x[finite]
    nonfinite = int((~finite).sum())
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), nonfinite)
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, float("nan"), float("nan"), nonfinite)
    if np.all(x == x[0]):
        return Interval(mean, mean, mean, nonfinite)
    lo, hi = stats.t.interval(confidence, x.size - 1, loc=mean, scale=stats.sem(x))
    return Interval(mean, float(lo), float(hi), nonfinite)


# What makes two runs the same configuration (the study's grid and a frontier grid differ in learning rate).
CONFIG_KEYS = ("loss", "divergence", "alpha", "beta", "learning_rate")


def between_seeds(
    table: pd.DataFrame, metrics: Sequence[str], keys: Sequence[str] = CONFIG_KEYS, confidence: float = 0.95
) -> pd.DataFrame:
    """One row per configuration: `n_seeds` and, per metric, `<m>_seed_mean`, `_seed_lo`, `_seed_hi`.

    `table` is evaluate.py's results table, one row per model; runs that differ only in `seed` are
    one configuration, counted by its distinct seeds (`distinct_seeds`). The interval is `seed_interval`
    over the runs' per-run means (NaN for one seed).
    """
    keys = [key for key in keys if key in table]
    rows = []
    table = distinct_seeds(table, keys)
    for values, group in table.groupby(keys, dropna=False, sort=True):
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,), strict=True))
        row["n_seeds"] = len(group)
        row["models"] = " ".join(map(str, group["model"]))
        for metric in metrics:
            if metric in group:
                interval = seed_interval(group[metric].to_numpy(dtype=float), confidence)
                row.update({f"{metric}_seed_mean": interval.mean, f"{metric}_seed_lo": interval.lo,
                            f"{metric}_seed_hi": interval.hi})  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def distinct_seeds(table: pd.DataFrame, keys: Sequence[str] = CONFIG_KEYS) -> pd.DataFrame:
    """`table` with one row per configuration (`keys`) and seed: one seed is one draw, however many models
    hold it.

    Two models of one configuration and seed (a run left under its unseeded name beside its `_seed0`
    rerun) are the same draw twice: counting both would add a seed and narrow every between-seed
    interval. The one whose `model` name sorts last is kept (a `_seed<N>` name sorts after the unseeded
    one), and a warning names both. Rows without a seed (the SFT model, the study's CSVs) are all kept.
    """
    keys = [key for key in keys if key in table]
    if "seed" not in table or "model" not in table or not len(table):
        return table
    known = table.assign(_row=np.arange(len(table)))[table["seed"].notna().to_numpy()]
    dropped = []
    for values, group in known.groupby([*keys, "seed"], dropna=False, sort=True):
        if len(group) > 1:
            group = group.sort_values("model", kind="stable")
            dropped += list(group["_row"].iloc[:-1])
            names = list(map(str, group["model"]))
            setting = ", ".join(f"{key}={value}" for key, value in zip(keys, values[:-1], strict=True))
            logger.warning("%s: one configuration (%s) and one seed (%g); counted once, as %s",
                           " and ".join(names), setting, float(values[-1]), names[-1])  # fmt: skip
    return table[~np.isin(np.arange(len(table)), dropped)]
