"""Intervals over the units that vary independently, and which runs count as distinct seeds.

Completions of one prompt share that prompt, so per-completion means get a cluster bootstrap that resamples
prompts (`mean_ci`); a configuration trained with several seeds gets a between-seed t interval on top
(`between_seeds`). Values that are NaN or infinite are never dropped silently: every interval carries the
count it left out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

logger = logging.getLogger("metrics")


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


# --- seeds as a small sample, and many comparisons at once


class SmallSample(NamedTuple):
    """An estimate's t interval, the two-sided p-value of estimate = 0, its standard error and df."""

    lo: float
    hi: float
    p: float
    se: float
    df: float


def seeds_and_prompts(
    estimate: float,
    seed_values: Sequence[np.ndarray],
    prompt_variance: float,
    confidence: float = 0.95,
) -> SmallSample:
    """A t interval for a mean over seeds (or a difference of such means) that treats the seeds as the small
    sample they are, with the prompts' share of the uncertainty added from a prompt bootstrap.

    se^2 = sum_j s_j^2 / n_j + V_prompt: s_j^2 the sample variance of group j's per-seed values (one group
    for a family's value, two for a difference from the reference), V_prompt the variance of the same
    estimate over prompt-bootstrap replicates with every seed kept. The prompts are shared by every run,
    so V_prompt holds what the seeds have in common; each seed's own sampling noise is in s_j^2 as well,
    so the two overlap a little and the interval errs wide. The degrees of freedom are Welch-Satterthwaite's
    over the seed terms alone, (sum a_j)^2 / sum a_j^2 / (n_j - 1) with a_j = s_j^2 / n_j: n - 1 for one
    group, between min(n_j) - 1 and n_1 + n_2 - 2 for two; V_prompt, estimated from many replicates, is
    given no degrees of freedom of its own, which errs wide again. Normal (df = inf) when every seed agrees.

    Args:
        seed_values: per group, its per-seed values (finite); a group of fewer than 2 seeds has no variance
            to estimate, and every output is NaN.
        prompt_variance: V_prompt; NaN makes every output NaN.
    """
    groups = [np.asarray(values, dtype=float) for values in seed_values]
    if not np.isfinite(estimate) or not np.isfinite(prompt_variance) or any(g.size < 2 for g in groups):
        return SmallSample(*(float("nan"),) * 5)
    terms = np.array([g.var(ddof=1) / g.size for g in groups])
    se = float(np.sqrt(terms.sum() + prompt_variance))
    df = float("inf")
    if terms.sum() > 0:
        df = float(terms.sum() ** 2 / sum(a**2 / (g.size - 1) for a, g in zip(terms, groups, strict=True)))
    if se == 0:  # no variation at all: an exact value, different from 0 or not
        return SmallSample(estimate, estimate, float(estimate == 0), 0.0, df)
    half = float(stats.t.ppf((1 + confidence) / 2, df)) * se
    p = float(2 * stats.t.sf(abs(estimate) / se, df))
    return SmallSample(estimate - half, estimate + half, p, se, df)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (familywise error under any dependence); NaN stays NaN and is
    not counted among the tests.

    Sorted ascending, the k-th smallest of m is multiplied by m - k + 1, then made non-decreasing along the
    order and capped at 1; a test is rejected at level a where its adjusted p-value is <= a.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    defined = np.flatnonzero(np.isfinite(p))
    order = defined[np.argsort(p[defined], kind="stable")]
    m = order.size
    scaled = p[order] * (m - np.arange(m))
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out
