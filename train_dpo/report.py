"""What results.ipynb shows, as functions of the evaluation tables: the notebook only calls and plots these.

Reads a results folder written by reproduce.py (eval/results.csv, samples.csv, results_by_config.csv,
reliability.csv; runs/<name>/trainer_state.json) and returns tables; nothing is trained or generated.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import bootstrap, rankdata

from train_dpo.frontier import REFERENCE_FAMILY, family, matched

KEYS = ["loss", "divergence", "alpha", "beta"]


def load(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """results.csv and samples.csv of one results folder, each row labelled with its run's family."""
    table = pd.read_csv(root / "eval" / "results.csv")
    # Only "\n" ends a record: a completion may hold a bare "\r", which pandas would otherwise split on.
    samples = pd.read_csv(
        root / "eval" / "samples.csv", keep_default_na=False, na_values=[""], lineterminator="\n"
    )
    table["family"] = [
        "SFT"
        if pd.isna(row.loss)
        else family(row.loss, row.divergence, None if pd.isna(row.alpha) else row.alpha)
        for row in table.itertuples()
    ]
    if "logratio" in samples:  # a completion's log u: its mean over completions is the Monte-Carlo KL
        samples["kl"] = samples["logratio"]
    return table, samples.merge(table[["model", "family"]], on="model")


def label(row) -> str:
    """A results row's family name; 'SFT' for the base policy."""
    if pd.isna(row.loss):
        return "SFT"
    return family(row.loss, row.divergence, None if pd.isna(row.alpha) else row.alpha)


def versus_study(
    table: pd.DataFrame, published: pd.DataFrame
) -> tuple[pd.DataFrame, tuple[float, float, float]]:
    """Our per-model means beside the study's published ones, and the Spearman correlation of the rewards.

    The rewards are on different scales (VADER or another scorer against distilbert-imdb logits), so the
    comparison that means something is the order of the models, not the values. The correlation comes
    as (rho, lo, hi), its 95% interval resampling the models (`rank_correlation`).
    """
    ours = table.assign(alpha=table["alpha"].astype(float), beta=table["beta"].astype(float))
    ours = ours[[*KEYS, "reward", "unigram_entropy_policy_tokens"]]
    joined = published.merge(ours, on=KEYS, how="left", suffixes=("_study", ""))
    shown = pd.DataFrame(
        {
            "model": [label(r) for r in joined.itertuples()],
            "beta": joined["beta"],
            "reward_study": joined["reward_study"],
            "reward_ours": joined["reward"],
            "unigram_entropy_study": joined["unigram_entropy"],
            "unigram_entropy_policy_tokens_ours": joined["unigram_entropy_policy_tokens"],
        }
    )
    both = shown.dropna(subset=["reward_ours", "reward_study"])
    return shown, rank_correlation(both["reward_study"], both["reward_ours"])


def rank_correlation(a, b, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Spearman's rho of paired values, with a 95% percentile bootstrap interval resampling the pairs.

    With fewer than 3 pairs there is no correlation to speak of: all three are NaN.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 3:
        return float("nan"), float("nan"), float("nan")
    interval = bootstrap(
        (a, b),
        _spearman,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return float(_spearman(a, b)), float(interval.low), float(interval.high)


def _spearman(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho along `axis`: the Pearson correlation of the ranks (ties share their mean rank)."""
    rx, ry = rankdata(x, axis=axis), rankdata(y, axis=axis)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample of one repeated pair has no rho
        return (rx * ry).sum(axis=axis) / np.sqrt((rx**2).sum(axis=axis) * (ry**2).sum(axis=axis))


def runs_of(table: pd.DataFrame) -> pd.DataFrame:
    """model, family, beta, seed of every trained run (the SFT model left out)."""
    runs = table[table["family"] != "SFT"][["model", "family", "beta", "seed"]]
    return runs.reset_index(drop=True)


def curve_points(table: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Per family and beta: the mean over seeds of `x` and `y`, with between-seed 95% t-intervals."""
    from train_dpo.metrics import seed_interval

    rows = []
    for (name, beta), group in table[table["family"] != "SFT"].groupby(["family", "beta"]):
        row = {"family": name, "beta": beta, "seeds": len(group)}
        for column in (x, y):
            interval = seed_interval(group[column].to_numpy(dtype=float))
            row.update({column: interval.mean, f"{column}_lo": interval.lo, f"{column}_hi": interval.hi})
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["family", x])


def matched_table(
    table: pd.DataFrame, samples: pd.DataFrame, x: str = "kl", y: str = "reward", **kwargs
) -> pd.DataFrame:
    """`frontier.matched` on one results folder: `y` at matched `x` per family, against reverse KL."""
    return matched(samples, runs_of(table), x=x, y=y, **kwargs)


def conclusion(result: pd.DataFrame, x: str = "kl", y: str = "reward", families=()) -> str:
    """Plain sentences from a matched table: which families differ from reverse KL, where, and by how much.

    `families`: every family of the grid. One that the table lacks (no `x` value shared by all its seeds
    and reverse KL's) is named as not compared, so that silence is never read as "no difference".
    """
    compared = set(result["family"]) if len(result) else set()
    unmatched = [name for name in families if name not in compared | {REFERENCE_FAMILY, "SFT"}]
    lines = [
        f"- {name}: not compared; no {x} value is reached by every seed of it and of reverse KL."
        for name in unmatched
    ]
    if result.empty:
        return "\n".join(
            [f"No {x} value is reached by every seed of a family and of reverse KL, so no {y} can be "
             f"compared at matched {x}.", *lines]
        )  # fmt: skip
    for name, rows in result[result["family"] != REFERENCE_FAMILY].groupby("family", sort=False):
        rows = rows.dropna(subset=["diff"])
        better = rows[rows["differs"] & (rows["diff"] > 0)]
        worse = rows[rows["differs"] & (rows["diff"] < 0)]
        where = ", ".join(
            f"{r[x]:.2f} ({r['diff']:+.3f} [{r['diff_lo']:+.3f}, {r['diff_hi']:+.3f}])"
            for _, r in pd.concat([better, worse]).iterrows()
        )
        if better.empty and worse.empty:
            lines.append(
                f"- {name}: no difference from reverse KL beyond its interval at any of the "
                f"{len(rows)} {x} values."
            )
        else:
            verdict = "higher" if len(better) >= len(worse) else "lower"
            lines.append(f"- {name}: {y} {verdict} than reverse KL beyond the interval at {x} = {where}.")
    return "\n".join(sorted(lines, key=lambda line: "not compared" in line))


def training_curves(root: Path) -> pd.DataFrame:
    """Each run's logged training metrics: loss, margins and implicit rewards (beta f'(u)) per step."""
    frames = []
    for state in sorted((root / "runs").glob("*/trainer_state.json")):
        history = [entry for entry in json.loads(state.read_text())["log_history"] if "loss" in entry]
        frames.append(pd.DataFrame(history).assign(model=state.parent.name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def side_by_side(samples: pd.DataFrame, models: list[str], prompts: int = 3, seed: int = 0) -> pd.DataFrame:
    """The first completion of each model for a few shared prompts: a row per prompt, a column per model."""
    shared = sorted(set.intersection(*(set(samples.loc[samples["model"] == m, "prompt"]) for m in models)))
    chosen = list(np.random.default_rng(seed).choice(shared, size=min(prompts, len(shared)), replace=False))
    first = (
        samples[samples["prompt"].isin(chosen) & samples["model"].isin(models)]
        .groupby(["prompt", "model"])
        .first()
    )
    return first["answer"].unstack("model")[models]
