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
  extrapolation. A family sharing no range with the reference is reported as not compared.
- Seeds: 3 (0, 1, 2) for every configuration. A DPO family whose reward at matched KL differs from
  reverse KL's by an interval containing 0 at any target gets seeds 3 and 4, and so does reverse KL,
  before the verdict is written (`reproduce.py --grid frontier --family_seeds sigmoid=5,<family>=5`).
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

from analysis.calibration import confidence_bins, preference_correct
from analysis.intervals import distinct_seeds
from train_dpo.losses import ONLINE_LOSS

REFERENCE_FAMILY = "reverse_kl"  # DPO: the divergence the paper compares against
ONLINE_FAMILY = "RLOO"  # the online-RL baseline (train_dpo/rloo.py): PPO's place in the paper's comparison
EQUIVALENCE_ECE = 0.02  # claim 3: an ECE difference whose interval lies inside +-this is too small to matter


def family(loss: str, divergence: str, alpha: float | None) -> str:
    """A curve's name: the divergence, with alpha, and the loss when it is not the sigmoid; RLOO for the
    online-RL baseline."""
    if loss == ONLINE_LOSS:
        return ONLINE_FAMILY
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


class Calibration:
    """Each run's held-out pairs as its ECE sees them, so that a bootstrap can reweight their prompts.

    ECE = sum_b (n_b / N) |accuracy_b - confidence_b| = sum_b |sum over pairs i in b of (correct_i -
    confidence_i)| / N: one weighted bincount per run and replicate (`calibration.reliability_bins` bins).
    """

    def __init__(self, pairs: pd.DataFrame, models: list[str], n_bins: int = 10):
        """`pairs`: evaluate.py's pairs.csv (model, prompt, prob_chosen); a run without probabilities (a
        hinge run, or none of its rows) has an ECE of NaN."""
        with_prob = pairs.dropna(subset=["prob_chosen"]) if "prob_chosen" in pairs else pairs.iloc[:0]
        with_prob = with_prob[np.isfinite(with_prob["prob_chosen"].astype(float))]
        prompts = sorted(with_prob["prompt"].unique())
        index = {prompt: i for i, prompt in enumerate(prompts)}
        self.n_prompts, self.n_bins, self.runs = len(prompts), n_bins, []
        for model in models:
            rows = with_prob[with_prob["model"] == model]
            p = rows["prob_chosen"].to_numpy(dtype=float)
            confidence = np.maximum(p, 1.0 - p)
            gap = preference_correct(p) - confidence
            self.runs.append(
                (rows["prompt"].map(index).to_numpy(dtype=int), confidence_bins(confidence, n_bins), gap)
            )

    def ece(self, prompt_weights: np.ndarray | None = None) -> np.ndarray:
        """Each run's ECE with its pairs weighted by their prompt's weight (None: every pair once)."""
        out = np.full(len(self.runs), np.nan)
        for i, (prompt, bins, gap) in enumerate(self.runs):
            weights = np.ones(len(prompt)) if prompt_weights is None else prompt_weights[prompt]
            if weights.sum() > 0:
                per_bin = np.bincount(bins, weights=weights * gap, minlength=self.n_bins)
                out[i] = np.abs(per_bin).sum() / weights.sum()
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
    reference: str = REFERENCE_FAMILY,
    pairs: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """`y` at matched `x` per family, and its difference from `reference`'s, with bootstrap intervals.

    Args:
        samples: per completion: model, prompt, `x`, `y`.
        runs: per trained run: model, family, beta, seed; two runs of one family, beta and seed count
            once (`intervals.distinct_seeds`).
        targets: the x values to compare at; default, per family, five points spread over the range that
            every seed of both that family and the reference reaches.
        reference: the family every other is compared with (reverse KL, or RLOO).
        pairs: with `y` = "ece": evaluate.py's pairs.csv, from which each run's ECE is computed; a
            replicate then resamples the held-out pairs' prompts too. Runs without probabilities are
            left out.
    Returns:
        one row per (family, target): value, lo, hi, and diff, diff_lo, diff_hi against the reference,
        and `differs` (the difference's interval excludes 0).
    """
    runs = distinct_seeds(runs, ("family", "beta")).reset_index(drop=True)
    calibration = None
    if pairs is not None:
        with_prob = set(pairs.loc[np.isfinite(pairs["prob_chosen"].astype(float)), "model"])
        runs = runs[runs["model"].isin(with_prob)].reset_index(drop=True)
        calibration = Calibration(pairs, list(runs["model"]))
    table, _, _ = prompt_table(samples, runs, [x] if calibration is not None else [x, y])
    run_x = np.nanmean(table[:, :, 0], axis=1)
    run_y = calibration.ece() if calibration is not None else np.nanmean(table[:, :, 1], axis=1)
    if targets is None:  # per family: inside every seed's curve of that family and of the reference
        own = {name: shared_range(runs, run_x, [name, reference]) for name in runs["family"].unique()}
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
        if calibration is not None:  # the held-out pairs' prompts, drawn apart from the eval prompts
            n_pair_prompts = calibration.n_prompts
            pair_weights = np.bincount(
                rng.integers(0, n_pair_prompts, n_pair_prompts), minlength=n_pair_prompts
            )
            boot_y = calibration.ece(pair_weights.astype(float))
        else:
            boot_y = np.nansum(table[:, :, 1] * weights, axis=1) / weights.sum()
        seeds = {name: rng.choice(drawn, size=len(drawn)) for name, drawn in all_seeds.items()}
        for name, values in curves_at(runs, boot_x, boot_y, targets, seeds).items():
            draws[name].append(values)
    tail = (1 - confidence) / 2 * 100
    reference_draws = np.array(draws.get(reference, [np.full(len(targets), np.nan)] * n_boot))
    rows = []
    for name, values in point.items():
        boot = np.array(draws[name])
        diff = boot - reference_draws
        for i, target in enumerate(targets):
            if name != reference and target not in own[name]:
                continue
            lo, hi = percentile(boot[:, i], tail)
            diff_lo, diff_hi = percentile(diff[:, i], tail)
            value_diff = values[i] - point.get(reference, np.full(len(targets), np.nan))[i]
            rows.append({"family": name, x: target, y: values[i], f"{y}_lo": lo, f"{y}_hi": hi,
                         "diff": value_diff, "diff_lo": diff_lo, "diff_hi": diff_hi,
                         "differs": bool(diff_lo > 0 or diff_hi < 0)})  # fmt: skip
    columns = ["family", x, y, f"{y}_lo", f"{y}_hi", "diff", "diff_lo", "diff_hi", "differs"]
    return pd.DataFrame(rows, columns=columns)  # the columns even with no row: no shared range at all


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


def standing(result: pd.DataFrame, reference: str) -> dict[str, str]:
    """Each family's standing against `reference` in a `matched` table: higher or lower (the difference's
    interval on one side of 0 at every target), mixed, or not compared (no target with an interval)."""
    out = {}
    for name, rows in result[result["family"] != reference].groupby("family", sort=False):
        rows = rows.dropna(subset=["diff_lo", "diff_hi"])
        if rows.empty:
            out[name] = "not compared"
        elif (rows["diff_lo"] > 0).all():
            out[name] = "higher"
        elif (rows["diff_hi"] < 0).all():
            out[name] = "lower"
        else:
            out[name] = "mixed"
    return out


def is_f_divergence(name: str) -> bool:
    """A family other than reverse KL (either loss) and the online-RL baseline."""
    return not name.startswith(REFERENCE_FAMILY) and name != ONLINE_FAMILY


def claim_verdict(claim: int, result: pd.DataFrame, families: list[str]) -> tuple[str, str]:
    """(verdict, the standings behind it) of one claim by the rule in this module's docstring.

    `result`: claim 1, reward at matched predictive entropy against reverse KL; claim 2, reward at matched
    KL against RLOO; claim 3, ECE at matched KL against reverse KL. `families`: every family of the grid,
    so that one sharing no range is named as not compared.
    """
    reference = ONLINE_FAMILY if claim == 2 else REFERENCE_FAMILY
    eligible = [name for name in families if name != reference and (claim == 2 or is_f_divergence(name))]
    found = standing(result, reference) if len(result) else {}
    standings = {name: found.get(name, "not compared") for name in eligible}
    compared = {name: what for name, what in standings.items() if what != "not compared"}
    higher = sum(what == "higher" for what in compared.values())
    lower = sum(what == "lower" for what in compared.values())
    if not compared:
        verdict = "undecided"
    elif claim == 1:
        verdict = "supported" if higher else "contradicted" if lower == len(compared) else "undecided"
    elif claim == 2:
        majority = len(compared) / 2
        verdict = ("supported" if higher > majority and not lower
                   else "contradicted" if lower > majority and not higher else "undecided")  # fmt: skip
    else:
        rows = result[result["family"].isin(list(compared))]
        small = bool(len(rows)) and bool(
            ((rows["diff_lo"] > -EQUIVALENCE_ECE) & (rows["diff_hi"] < EQUIVALENCE_ECE)).all()
        )
        verdict = "supported" if higher or lower else "contradicted" if small else "undecided"
    kinds = ("higher", "lower", "mixed", "not compared")
    said = "; ".join(
        f"{kind}: {', '.join(name for name, what in standings.items() if what == kind)}"
        for kind in kinds
        if kind in standings.values()
    )
    return verdict, said
