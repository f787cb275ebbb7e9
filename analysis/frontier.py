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
on a verdict, the row says so. That rule stays computable (`claim_verdict(..., corrected=False)`).

The corrected rule, pre-registered for the next grid (written before its runs, as the first was):
- Seeds: 5 (0-4) for every configuration, DPO and RLOO alike; no family gets more because of what its
  first seeds showed (the first grid's top-up rule chose whom to give seeds after seeing the intervals).
- Seeds are a small sample: at each target, a family's value and its difference from the reference get a
  t interval over the per-seed curves (`intervals.seeds_and_prompts`): se^2 = the seeds' variance of the
  mean (family and reference, Welch-Satterthwaite degrees of freedom, 4 to 8 with 5 seeds each) plus the
  prompts' variance from the prompt bootstrap with every seed kept. A bootstrap that resamples 3 or 5
  seeds has too few distinct draws to give a percentile interval its nominal coverage; the t quantile
  with 4 degrees of freedom (2.78, not 1.96) is what a sample of five costs.
- Many comparisons: each target's two-sided p-value of a zero difference is adjusted by Holm's method
  over every family the claim tests at every target (families x targets, about 6 x 5 = 30 tests for
  claims 1 and 3, 7 x 5 for claim 2), at a familywise error rate of 0.05. A family is *higher* (*lower*)
  where every target's adjusted p-value is <= 0.05 with a positive (negative) difference, *mixed*
  otherwise, *not compared* where no target has a p-value. Holm rather than a max-statistic over targets:
  it holds the familywise error under any dependence between the tests, and the targets of one curve and
  the families sharing one reference are strongly and unknowably dependent, while a max-statistic needs
  their joint distribution, which a t interval over five seeds does not give. Holm is conservative where
  the tests are correlated, so a difference it lets through is one a referee need not discount.
- The claims' verdicts then follow the same counting rules as above, with claim 3 resting on the
  debiased ECE (ECE minus the run's finite-sample floor, `calibration.ece_floor`), so a family whose
  runs score fewer pairs or sit at other confidences is not called worse calibrated for its noise alone;
  its equivalence margin (+-EQUIVALENCE_ECE) is checked on the t intervals. Temperature-scaled ECE and
  preference accuracy at matched KL are reported beside it, not voted on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special

from analysis.calibration import (
    chosen_logits,
    confidence_bins,
    ece_floor,
    fit_half,
    fit_temperature,
    margin_correct,
    preference_correct,
)
from analysis.intervals import SmallSample, distinct_seeds, holm, seeds_and_prompts
from train_dpo.loss_names import ONLINE_LOSS

REFERENCE_FAMILY = "reverse_kl"  # DPO: the divergence the paper compares against
ONLINE_FAMILY = "RLOO"  # the online-RL baseline (train_dpo/rloo.py): PPO's place in the paper's comparison
EQUIVALENCE_ECE = 0.02  # claim 3: an ECE difference whose interval lies inside +-this is too small to matter
NO_TEST = SmallSample(*(float("nan"),) * 5)  # the reference against itself
ALPHA = 0.05  # the corrected rule: the familywise error rate of one claim's tests (Holm)


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
    return Curves(runs).at(x, y, targets, seeds)


class Curves:
    """The runs of each family and seed, grouped once: a bootstrap redraws the curves a thousand times."""

    def __init__(self, runs: pd.DataFrame):
        self.groups = {
            name: {seed: curve.index.to_numpy() for seed, curve in members.groupby("seed")}
            for name, members in runs.groupby("family", sort=False)
        }

    def per_seed(self, x: np.ndarray, y: np.ndarray, targets: np.ndarray) -> dict[str, dict]:
        """Per family and seed, y interpolated at each target x (NaN outside that seed's curve)."""
        out = {}
        for name, by_seed in self.groups.items():
            out[name] = {}
            for seed, index in by_seed.items():
                order = np.argsort(x[index])
                xs, ys = x[index][order], y[index][order]
                out[name][seed] = np.interp(targets, xs, ys, left=np.nan, right=np.nan)
        return out

    def at(
        self, x: np.ndarray, y: np.ndarray, targets: np.ndarray, *seed_sets: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
        """`curves_at` for one set of seeds per family, or a list of them for several (one interpolation)."""
        per_seed = self.per_seed(x, y, targets)
        means = [
            {name: np.mean([got[seed] for seed in seeds[name]], axis=0) for name, got in per_seed.items()}
            for seeds in seed_sets
        ]
        return means[0] if len(means) == 1 else means


# The per-run statistics `matched` computes from held-out pairs (pairs.csv) rather than from samples.
PAIR_METRICS = {
    "ece": "ECE of the implied preference probability",
    "ece_debiased": "ECE minus the ECE a perfectly calibrated run with the same confidences would show "
    "(calibration.ece_floor)",
    "ece_temperature": "ECE after temperature scaling, fitted on the other half of the held-out prompts",
    "pref_accuracy": "share of held-out pairs whose implicit reward margin picks the chosen answer",
}


def pair_rows(pairs: pd.DataFrame, statistic: str = "ece") -> pd.DataFrame:
    """The pairs a statistic can use: those with a finite probability, or for `pref_accuracy` a finite
    margin (hinge runs have one) or, without a margin column, a finite probability."""
    if statistic not in PAIR_METRICS:
        raise ValueError(f"{statistic}: not a pair statistic ({', '.join(PAIR_METRICS)})")
    column = "margin" if statistic == "pref_accuracy" and "margin" in pairs else "prob_chosen"
    if column not in pairs:
        return pairs.iloc[:0]
    return pairs[np.isfinite(pairs[column].astype(float))]


class Calibration:
    """Each run's held-out pairs as a pair statistic sees them, so a bootstrap can reweight their prompts.

    ECE = sum_b (n_b / N) |accuracy_b - confidence_b| = sum_b |sum over pairs i in b of (correct_i -
    confidence_i)| / N: one weighted bincount per run and replicate (`calibration.reliability_bins` bins).
    The other statistics (`PAIR_METRICS`):
    - ece_debiased: that ECE minus the run's own floor, `calibration.ece_floor` of its pairs' confidences
      (exact). The floor is computed once, on the run's pairs, and held in every bootstrap replicate: it
      depends on the confidences alone, which a resample of prompts barely moves, while the ECE moves with
      which pairs are right.
    - ece_temperature: each run's logits divided by the temperature `calibration.fit_temperature` fits on
      the prompts `calibration.fit_half` picks, the ECE scored on the other prompts' pairs only. The
      temperature is fitted once and held in every replicate; a replicate reweights the scored prompts.
    - pref_accuracy: the share of pairs where the margin picks the chosen answer (ties half), weighted.
    """

    def __init__(self, pairs: pd.DataFrame, models: list[str], n_bins: int = 10, statistic: str = "ece"):
        """`pairs`: evaluate.py's pairs.csv (model, prompt, prob_chosen, and margin where written); a run
        without usable rows (a hinge run has no probability, and no ECE) gets NaN."""
        usable = pair_rows(pairs, statistic)
        prompts = sorted(usable["prompt"].unique())
        index = {prompt: i for i, prompt in enumerate(prompts)}
        self.n_prompts, self.n_bins, self.statistic, self.runs = len(prompts), n_bins, statistic, []
        self.temperatures: dict[str, float] = {}
        for model in models:
            rows = usable[usable["model"] == model]
            prompt = rows["prompt"].map(index).to_numpy(dtype=int)
            if statistic == "pref_accuracy":
                if "margin" in rows:
                    correct = margin_correct(rows["margin"].to_numpy(dtype=float))
                else:
                    correct = preference_correct(rows["prob_chosen"].to_numpy(dtype=float))
                self.runs.append((prompt, None, correct, 0.0))
                continue
            p = rows["prob_chosen"].to_numpy(dtype=float)
            if statistic == "ece_temperature":
                fit, logits = fit_half(rows["prompt"]), chosen_logits(rows)
                temperature = fit_temperature(logits[fit]) if fit.any() else float("nan")
                self.temperatures[model] = temperature
                scored = ~fit if np.isfinite(temperature) else np.zeros(len(rows), dtype=bool)
                p, prompt = special.expit(logits[scored] / temperature), prompt[scored]
            confidence = np.maximum(p, 1.0 - p)
            gap = preference_correct(p) - confidence
            floor = ece_floor(confidence, n_bins) if statistic == "ece_debiased" and len(p) else 0.0
            self.runs.append((prompt, confidence_bins(confidence, n_bins), gap, floor))

    def ece(self, prompt_weights: np.ndarray | None = None) -> np.ndarray:
        """Each run's statistic with its pairs weighted by their prompt's weight (None: every pair once)."""
        out = np.full(len(self.runs), np.nan)
        for i, (prompt, bins, values, floor) in enumerate(self.runs):
            weights = np.ones(len(prompt)) if prompt_weights is None else prompt_weights[prompt]
            if weights.sum() > 0:
                if bins is None:
                    out[i] = (weights * values).sum() / weights.sum()
                else:
                    per_bin = np.bincount(bins, weights=weights * values, minlength=self.n_bins)
                    out[i] = np.abs(per_bin).sum() / weights.sum() - floor
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
        pairs: with `y` one of PAIR_METRICS: evaluate.py's pairs.csv, from which each run's `y` is
            computed (`Calibration`); a replicate then resamples the held-out pairs' prompts too. Runs
            without usable pairs are left out.
    Returns:
        one row per (family, target): value, lo, hi, and diff, diff_lo, diff_hi against the reference,
        and `differs` (the difference's interval excludes 0): the bootstrap that resamples prompts and
        seeds. Beside them, the seeds taken as a small sample (`intervals.seeds_and_prompts`): `seeds`,
        `{y}_t_lo`, `{y}_t_hi`, `diff_t_lo`, `diff_t_hi` and `p`, the two-sided p-value of a zero
        difference, which the corrected verdict (`claim_verdict`) adjusts for the claim's many tests.
    """
    runs = distinct_seeds(runs, ("family", "beta")).reset_index(drop=True)
    calibration = None
    if pairs is not None:
        statistic = y if y in PAIR_METRICS else "ece"
        runs = runs[runs["model"].isin(set(pair_rows(pairs, statistic)["model"]))].reset_index(drop=True)
        calibration = Calibration(pairs, list(runs["model"]), statistic=statistic)
    table, _, _ = prompt_table(samples, runs, [x] if calibration is not None else [x, y])
    run_x = np.nanmean(table[:, :, 0], axis=1)
    run_y = calibration.ece() if calibration is not None else np.nanmean(table[:, :, 1], axis=1)
    if targets is None:  # per family: inside every seed's curve of that family and of the reference
        own = {name: shared_range(runs, run_x, [name, reference]) for name in runs["family"].unique()}
    else:
        own = {name: np.asarray(targets, dtype=float) for name in runs["family"].unique()}
    targets = np.unique(np.concatenate([*own.values(), np.array([])]))
    all_seeds = {name: np.array(sorted(group["seed"].unique())) for name, group in runs.groupby("family")}
    curves = Curves(runs)
    point = curves.at(run_x, run_y, targets, all_seeds)
    per_seed = curves.per_seed(run_x, run_y, targets)

    rng = np.random.default_rng(seed)
    n_prompts = table.shape[1]
    draws = {name: [] for name in point}
    fixed = {name: [] for name in point}  # every seed kept: the prompts' share alone
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
        resampled, kept = curves.at(boot_x, boot_y, targets, seeds, all_seeds)
        for name in point:
            draws[name].append(resampled[name])
            fixed[name].append(kept[name])
    tail = (1 - confidence) / 2 * 100
    reference_draws = np.array(draws.get(reference, [np.full(len(targets), np.nan)] * n_boot))
    kept = {name: np.array(values) for name, values in fixed.items()}
    reference_kept = kept.get(reference, np.full((n_boot, len(targets)), np.nan))
    reference_seeds = per_seed.get(reference, {})
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
            own_seeds = np.array([curve[i] for curve in per_seed[name].values()])
            value_t = seeds_and_prompts(values[i], [own_seeds], draw_variance(kept[name][:, i]), confidence)
            diff_t = seeds_and_prompts(
                value_diff, [own_seeds, np.array([curve[i] for curve in reference_seeds.values()])],
                draw_variance(kept[name][:, i] - reference_kept[:, i]), confidence,
            ) if name != reference else NO_TEST  # fmt: skip
            rows.append({"family": name, x: target, y: values[i], f"{y}_lo": lo, f"{y}_hi": hi,
                         "diff": value_diff, "diff_lo": diff_lo, "diff_hi": diff_hi,
                         "differs": bool(diff_lo > 0 or diff_hi < 0), "seeds": len(own_seeds),
                         f"{y}_t_lo": value_t.lo, f"{y}_t_hi": value_t.hi,
                         "diff_t_lo": diff_t.lo, "diff_t_hi": diff_t.hi, "p": diff_t.p})  # fmt: skip
    columns = ["family", x, y, f"{y}_lo", f"{y}_hi", "diff", "diff_lo", "diff_hi", "differs",
               "seeds", f"{y}_t_lo", f"{y}_t_hi", "diff_t_lo", "diff_t_hi", "p"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)  # the columns even with no row: no shared range at all


def draw_variance(values: np.ndarray) -> float:
    """The variance of the finite bootstrap draws; NaN when most draws fell off a curve (as `percentile`)."""
    finite = values[np.isfinite(values)]
    if len(finite) < max(len(values) / 2, 2):
        return float("nan")
    return float(finite.var(ddof=1))


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


def corrected_standing(result: pd.DataFrame, eligible: list[str], alpha: float = ALPHA) -> dict[str, str]:
    """Each eligible family's standing by the corrected rule: Holm's adjustment over the p-values of every
    eligible family at every target of `result` together, then higher (lower) where every target's
    adjusted p-value is <= `alpha` with a positive (negative) difference, mixed otherwise, not compared
    where no target has a p-value."""
    rows = result[result["family"].isin(eligible)].dropna(subset=["p"])
    rows = rows.assign(adjusted=holm(rows["p"].to_numpy(dtype=float)))
    out = {}
    for name, group in rows.groupby("family", sort=False):
        significant = group["adjusted"] <= alpha
        if (significant & (group["diff"] > 0)).all():
            out[name] = "higher"
        elif (significant & (group["diff"] < 0)).all():
            out[name] = "lower"
        else:
            out[name] = "mixed"
    return out


def claim_verdict(
    claim: int, result: pd.DataFrame, families: list[str], corrected: bool = True, alpha: float = ALPHA
) -> tuple[str, str]:
    """(verdict, the standings behind it) of one claim by the rule in this module's docstring.

    `result`: claim 1, reward at matched predictive entropy against reverse KL; claim 2, reward at matched
    KL against RLOO; claim 3, ECE (corrected: the debiased ECE, `ece_debiased`) at matched KL against
    reverse KL. `families`: every family of the grid, so that one sharing no range is named as not
    compared. `corrected`: the rule pre-registered for the next grid (seeds as a small sample, Holm over
    the claim's families and targets: `corrected_standing`); False gives the first grid's rule (the
    bootstrap's percentile intervals, each comparison alone), so a report can say which verdicts the
    correction changed.
    """
    reference = ONLINE_FAMILY if claim == 2 else REFERENCE_FAMILY
    eligible = [name for name in families if name != reference and (claim == 2 or is_f_divergence(name))]
    if corrected and len(result) and "p" not in result:
        raise ValueError("the corrected verdict needs the p column of a `matched` table")
    if not len(result):
        found = {}
    else:
        found = corrected_standing(result, eligible, alpha) if corrected else standing(result, reference)
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
        low, high = ("diff_t_lo", "diff_t_hi") if corrected else ("diff_lo", "diff_hi")
        rows = result[result["family"].isin(list(compared))]
        rows = rows.dropna(subset=["p"]) if corrected else rows
        small = bool(len(rows)) and bool(
            ((rows[low] > -EQUIVALENCE_ECE) & (rows[high] < EQUIVALENCE_ECE)).all()
        )
        verdict = "supported" if higher or lower else "contradicted" if small else "undecided"
    kinds = ("higher", "lower", "mixed", "not compared")
    said = "; ".join(
        f"{kind}: {', '.join(name for name, what in standings.items() if what == kind)}"
        for kind in kinds
        if kind in standings.values()
    )
    return verdict, said
