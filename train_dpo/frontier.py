"""Reward at matched KL: the controlled comparison of divergences that the frontier grid is run for.

Each divergence family traces a curve across beta: a weaker constraint moves further from the reference
(larger KL) and usually buys reward. Comparing two runs at different KL compares how far they moved,
not what the divergence does, so each family's curve is interpolated (linearly, between the betas that
were run, never beyond them) at common KL values, and the rewards there are compared.

Uncertainty has two sources, and the interval covers both: the evaluation prompts (completions of one
prompt are not independent) and the training seeds. One bootstrap replicate resamples the prompts (the
same resample for every model, since all models answer the same prompts) and, within each family, the
seeds; it then redraws every curve and interpolates again. Intervals are percentile intervals.

The grid's rule, fixed before its runs were seen (train_dpo/sweep.py):
- Betas: {10, 3, 1, 0.3, 0.1, 0.03} for every family, at one learning rate. The earlier grid stopped at
  beta 1, where forward KL's and JSD's seeds reached no KL that every reverse-KL seed reached; the two
  strong constraints reach down to where they sit.
- Targets: five KL values spread evenly over the range that every seed of both families covers; never an
  extrapolation. A pair of families sharing no range is reported with the ranges that keep them apart.
- Seeds: 3 (0, 1, 2) for every configuration. A family whose difference from reverse KL has an interval
  containing 0 at any target gets seeds 3 and 4, and so does reverse KL, before the verdict is written
  (`reproduce.py --grid frontier --seeds 5 --only <families>`).
- Online RL (`train_dpo/rloo.py`): the reverse-KL coefficient over `sweep.RLOO_BETAS`, 3 seeds, the
  recipe's fixed number of steps; every f-DPO family is compared with it as with reverse KL.

The verdict on the paper's three claims (`verdict`), also fixed before the runs were seen. A family is
*higher* than another where the difference's interval lies above 0 at every compared target, *lower*
where it lies below 0 at every one, and *mixed* otherwise; a family sharing no range is *not compared*.
- Claim 1, a better reward-diversity balance: reward at matched predictive entropy, each f-divergence
  family against reverse KL. Supported if any compared family is higher; contradicted if every compared
  family is lower; otherwise undecided.
- Claim 2, divergence efficiency beyond PPO-style RL: reward at matched KL, each f-DPO family (reverse KL
  included) against RLOO. Supported if more than half of the compared families are higher and none is
  lower; contradicted if more than half are lower and none is higher; otherwise undecided.
- Claim 3, the divergence drives calibration: ECE at matched KL, each f-divergence family with a
  preference probability (sigmoid loss) against reverse KL. Supported if any compared family is higher
  or lower; contradicted if every difference's interval lies inside +-0.02 at every target (a difference
  too small to matter, shown to be small); otherwise undecided.
Every row reports the gold reward (never trained on) beside the training reward; where the two disagree
on a verdict, the row says so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

REFERENCE_FAMILY = "reverse_kl"  # DPO: the divergence the paper compares against


def family(loss: str, divergence: str, alpha: float | None) -> str:
    """A curve's name: the divergence, with alpha, and the loss when it is not the sigmoid."""
    name = f"alpha={alpha:g}" if divergence == "alpha" else divergence
    return name if loss == "sigmoid" else f"{name} ({loss})"


def prompt_table(
    samples: pd.DataFrame, runs: pd.DataFrame, metrics: list[str]
) -> tuple[np.ndarray, list, list]:
    """Per-prompt means of `metrics` for every run: an array [run, prompt, metric], and its keys.

    Args:
        samples: one row per completion: model, prompt and the metric columns (evaluate.py's samples.csv).
        runs: one row per trained run: model, family, beta, seed.
    """
    rows = samples[samples["model"].isin(runs["model"])]
    means = rows.groupby(["model", "prompt"], sort=True)[metrics].mean()
    prompts = sorted(rows["prompt"].unique())
    models = list(runs["model"])
    table = (
        means.reindex(pd.MultiIndex.from_product([models, prompts]))
        .to_numpy()
        .reshape(len(models), len(prompts), -1)
    )
    return table, models, prompts


def curves_at(
    runs: pd.DataFrame, x: np.ndarray, y: np.ndarray, targets: np.ndarray, seeds: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Per family, y interpolated at each target x, averaged over the family's (possibly resampled) seeds.

    Args:
        runs: model, family, beta, seed per run, aligned with `x` and `y` (one value per run).
        seeds: per family, the seeds to average over (repeats allowed, as a bootstrap draws them).
    Returns:
        {family: array of len(targets)}, NaN where the target lies outside a seed's curve.
    """
    out = {}
    for name, members in runs.groupby("family", sort=False):
        per_seed = {}
        for seed, curve in members.groupby("seed"):
            order = np.argsort(x[curve.index])
            xs, ys = x[curve.index][order], y[curve.index][order]
            per_seed[seed] = np.interp(targets, xs, ys, left=np.nan, right=np.nan)
        out[name] = np.mean([per_seed[seed] for seed in seeds[name]], axis=0)
    return out


def matched(
    samples: pd.DataFrame,
    runs: pd.DataFrame,
    x: str = "kl",
    y: str = "reward",
    targets: np.ndarray | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """`y` at matched `x` per family, and its difference from reverse KL, with bootstrap intervals.

    Args:
        samples: per completion: model, prompt, `x`, `y`.
        runs: per trained run: model, family, beta, seed (index 0..n-1).
        targets: the x values to compare at; default, per family, five points spread over the range that
            every seed of both that family and reverse KL reaches.
    Returns:
        one row per (family, target): value, lo, hi, and diff, diff_lo, diff_hi against reverse KL, and
        `differs` (the difference's interval excludes 0).
    """
    runs = runs.reset_index(drop=True)
    table, _, _ = prompt_table(samples, runs, [x, y])
    run_x, run_y = np.nanmean(table[:, :, 0], axis=1), np.nanmean(table[:, :, 1], axis=1)
    if targets is None:  # per family: inside every seed's curve of that family and of reverse KL
        own = {name: shared_range(runs, run_x, [name, REFERENCE_FAMILY]) for name in runs["family"].unique()}
    else:
        own = {name: np.asarray(targets, dtype=float) for name in runs["family"].unique()}
    targets = np.unique(np.concatenate([*own.values(), np.array([])]))
    all_seeds = {name: np.array(sorted(group["seed"].unique())) for name, group in runs.groupby("family")}
    point = curves_at(runs, run_x, run_y, targets, all_seeds)

    rng = np.random.default_rng(seed)
    n_prompts = table.shape[1]
    draws = {name: [] for name in point}
    for _ in range(n_boot):
        weights = np.bincount(rng.integers(0, n_prompts, n_prompts), minlength=n_prompts).astype(float)
        boot_x = np.nansum(table[:, :, 0] * weights, axis=1) / weights.sum()
        boot_y = np.nansum(table[:, :, 1] * weights, axis=1) / weights.sum()
        seeds = {name: rng.choice(drawn, size=len(drawn)) for name, drawn in all_seeds.items()}
        for name, values in curves_at(runs, boot_x, boot_y, targets, seeds).items():
            draws[name].append(values)
    tail = (1 - confidence) / 2 * 100
    reference = np.array(draws.get(REFERENCE_FAMILY, [np.full(len(targets), np.nan)] * n_boot))
    rows = []
    for name, values in point.items():
        boot = np.array(draws[name])
        diff = boot - reference
        for i, target in enumerate(targets):
            if name != REFERENCE_FAMILY and target not in own[name]:
                continue
            lo, hi = percentile(boot[:, i], tail)
            diff_lo, diff_hi = percentile(diff[:, i], tail)
            value_diff = values[i] - point.get(REFERENCE_FAMILY, np.full(len(targets), np.nan))[i]
            rows.append({"family": name, x: target, y: values[i], f"{y}_lo": lo, f"{y}_hi": hi,
                         "diff": value_diff, "diff_lo": diff_lo, "diff_hi": diff_hi,
                         "differs": bool(diff_lo > 0 or diff_hi < 0)})  # fmt: skip
    return pd.DataFrame(rows)


def shared_range(runs: pd.DataFrame, run_x: np.ndarray, families: list[str], points: int = 5) -> np.ndarray:
    """`points` x values spread over the range that every seed's curve of every named family covers."""
    curves = [run_x[group.index] for (name, _), group in runs.groupby(["family", "seed"]) if name in families]
    low, high = max(xs.min() for xs in curves), min(xs.max() for xs in curves)
    return np.linspace(low, high, points) if low < high else np.array([])


def percentile(values: np.ndarray, tail: float) -> tuple[float, float]:
    """The central interval of the finite bootstrap draws; NaN when most draws fell off a curve."""
    finite = values[np.isfinite(values)]
    if len(finite) < len(values) / 2:
        return float("nan"), float("nan")
    return float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))
