"""What results.ipynb shows, as functions of the evaluation tables: the notebook only calls and plots these.

Reads a results folder written by reproduce.py (eval/results.csv, samples.csv, pairs.csv;
runs/<name>/trainer_state.json), or the tables `analysis.export` committed from one (docs/data/<grid>:
results.csv, samples.csv.gz, pairs.csv.gz, manifest.json), and returns tables; nothing is trained or
generated. `table_paths` is the one place that knows both layouts.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import bootstrap, rankdata

from analysis.calibration import expected_calibration_error, reliability_bins
from analysis.frontier import ONLINE_FAMILY, PAIR_METRICS, REFERENCE_FAMILY, claim_verdict, family, matched
from analysis.intervals import CONFIG_KEYS, distinct_seeds
from common.errors import InputError, first_line
from common.readers import read_json_object

KEYS = ["loss", "divergence", "alpha", "beta"]

# The committed layout (`analysis.export`): the tables beside a manifest of their hashes.
EXPORT_MANIFEST = "manifest.json"
COMMITTED = {"results": "results.csv", "samples": "samples.csv.gz", "pairs": "pairs.csv.gz"}
REQUIRED_RESULTS = ["model", "loss", "divergence", "alpha"]  # a run's family is named from these
# Text read as written: only "\n" ends a record (a completion or prompt may hold a bare "\r", which pandas
# would otherwise split on), and only an empty cell is missing (a prompt reading "NA" stays text).
TEXT_TABLE = {"keep_default_na": False, "na_values": [""], "lineterminator": "\n"}


def is_committed(root: Path) -> bool:
    """Whether `root` holds committed tables (`analysis.export`) rather than a results folder's eval/."""
    return not (Path(root) / "eval").is_dir() and (Path(root) / EXPORT_MANIFEST).is_file()


def table_paths(root: Path) -> dict[str, Path]:
    """Where the results, samples and pairs tables of `root` lie: eval/<name>.csv in a results folder,
    <name>.csv[.gz] beside manifest.json in a committed folder. A path may not exist (pairs: none scored)."""
    root = Path(root)
    if is_committed(root):
        return {name: root / file for name, file in COMMITTED.items()}
    return {name: root / "eval" / f"{name}.csv" for name in COMMITTED}


def has_tables(root: Path) -> bool:
    """Whether `root` holds an evaluation's results table, in either layout."""
    return table_paths(root)["results"].is_file()


def read_table(path: Path, root: Path, **options) -> pd.DataFrame:
    """One table of `root` (`pd.read_csv` with `options`); a damaged or missing one is an InputError naming
    it. A committed table is first checked against the SHA-256 its manifest records."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if is_committed(root):
        check_committed(path, root)
    try:
        return pd.read_csv(path, **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, gzip.BadGzipFile, EOFError,
            zlib.error) as error:  # fmt: skip
        raise InputError(f"{path}: unreadable table ({first_line(error)})") from None


def check_committed(path: Path, root: Path) -> None:
    """InputError unless `path` has the SHA-256 that its folder's manifest.json records for it."""
    manifest = read_json_object(Path(root) / EXPORT_MANIFEST)
    recorded = manifest.get("tables", {}).get(path.name, {})
    expected = recorded.get("sha256") if isinstance(recorded, dict) else None
    if expected is None:
        raise InputError(f"{path}: not listed in {Path(root) / EXPORT_MANIFEST}")
    if hashlib.sha256(path.read_bytes()).hexdigest() != expected:
        raise InputError(
            f"{path}: its SHA-256 differs from the one {EXPORT_MANIFEST} records (edited or damaged)"
        )


def load(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """results.csv and samples.csv of one results folder (or the committed tables), each row labelled with
    its run's family."""
    paths = table_paths(root)
    table = read_table(paths["results"], root)
    samples = read_table(paths["samples"], root, **TEXT_TABLE)
    for name, frame, needed in (("results", table, REQUIRED_RESULTS), ("samples", samples, ["model"])):
        lacking = [column for column in needed if column not in frame]
        if lacking:
            raise InputError(f"{paths[name]}: no {', '.join(lacking)} column")
    table["family"] = [
        "SFT"
        if pd.isna(row.loss)
        else family(row.loss, row.divergence, None if pd.isna(row.alpha) else row.alpha)
        for row in table.itertuples()
    ]
    if "logratio" in samples:  # a completion's log u: its mean over completions is the Monte-Carlo KL
        samples["kl"] = samples["logratio"]
    return table, samples.merge(table[["model", "family"]], on="model")


def load_pairs(root: Path) -> pd.DataFrame:
    """pairs.csv of one results folder, or of the committed tables (one row per run and held-out pair);
    empty when it has none."""
    root = Path(root)
    path = table_paths(root)["pairs"]
    listed = is_committed(root) and path.name in read_json_object(root / EXPORT_MANIFEST).get("tables", {})
    if not path.is_file() and not listed:  # a committed folder whose manifest lists it must have it
        return pd.DataFrame(columns=["model", "prompt", "prob_chosen"])
    return read_table(path, root, **TEXT_TABLE)


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
    ours = ours.reindex(columns=[*KEYS, "reward", "unigram_entropy_policy_tokens"])  # NaN: not evaluated
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


def trained(table: pd.DataFrame) -> pd.DataFrame:
    """The trained runs of a results table (the SFT model left out), one per configuration and seed
    (`intervals.distinct_seeds`): every aggregate over seeds below starts from these."""
    return distinct_seeds(table[table["family"] != "SFT"], ("family", *CONFIG_KEYS))


def runs_of(table: pd.DataFrame) -> pd.DataFrame:
    """model, family, beta, seed of every trained run, one per configuration and seed."""
    return trained(table)[["model", "family", "beta", "seed"]].reset_index(drop=True)


def curve_points(table: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Per family and beta: the mean over seeds of `x` and `y`, with between-seed 95% t-intervals."""
    from analysis.intervals import seed_interval

    rows = []
    for (name, beta), group in trained(table).groupby(["family", "beta"]):
        row = {"family": name, "beta": beta, "seeds": len(group)}
        for column in (x, y):
            interval = seed_interval(group[column].to_numpy(dtype=float))
            row.update({column: interval.mean, f"{column}_lo": interval.lo, f"{column}_hi": interval.hi})
        rows.append(row)
    columns = [
        "family",
        "beta",
        "seeds",
        *(f"{c}{end}" for c in dict.fromkeys((x, y)) for end in ("", "_lo", "_hi")),
    ]
    return pd.DataFrame(rows, columns=columns).sort_values(["family", x])


def matched_table(
    table: pd.DataFrame, samples: pd.DataFrame, x: str = "kl", y: str = "reward", **kwargs
) -> pd.DataFrame:
    """`frontier.matched` on one results folder: `y` at matched `x` per family, against reverse KL."""
    return matched(samples, runs_of(table), x=x, y=y, **kwargs)


def conclusion(
    result: pd.DataFrame, x: str = "kl", y: str = "reward", families=(), reference: str = REFERENCE_FAMILY
) -> str:
    """Plain sentences from a matched table: which families differ from `reference`, where, and by how much.

    `families`: every family of the grid. One that the table lacks (no `x` value shared by all its seeds
    and the reference's) is named as not compared, so that silence is never read as "no difference".
    """
    shown = "reverse KL" if reference == REFERENCE_FAMILY else reference  # as the sentences name it
    compared = set(result["family"]) if len(result) else set()
    unmatched = [name for name in families if name not in compared | {reference, "SFT"}]
    lines = [
        f"- {name}: not compared; no {x} value is reached by every seed of it and of {shown}."
        for name in unmatched
    ]
    if result.empty:
        return "\n".join(
            [f"No {x} value is reached by every seed of a family and of {shown}, so no {y} can be "
             f"compared at matched {x}.", *lines]
        )  # fmt: skip
    for name, rows in result[result["family"] != reference].groupby("family", sort=False):
        rows = rows.dropna(subset=["diff"])
        better = rows[rows["differs"] & (rows["diff"] > 0)]
        worse = rows[rows["differs"] & (rows["diff"] < 0)]
        where = ", ".join(
            f"{r[x]:.2f} ({r['diff']:+.3f} [{r['diff_lo']:+.3f}, {r['diff_hi']:+.3f}])"
            for _, r in pd.concat([better, worse]).iterrows()
        )
        if better.empty and worse.empty:
            lines.append(
                f"- {name}: no difference from {shown} beyond its interval at any of the "
                f"{len(rows)} {x} values."
            )
        else:
            verdict = "higher" if len(better) >= len(worse) else "lower"
            lines.append(f"- {name}: {y} {verdict} than {shown} beyond the interval at {x} = {where}.")
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


def probabilistic_families(table: pd.DataFrame) -> list[str]:
    """The families whose runs have an ECE: a hinge loss implies no preference probability."""
    if "ece" not in table:
        return []
    runs = table[table["family"] != "SFT"]
    return [name for name, group in runs.groupby("family", sort=False) if group["ece"].notna().any()]


def pooled_reliability(table: pd.DataFrame, pairs: pd.DataFrame, n_bins: int = 10) -> pd.DataFrame:
    """Reliability bins per configuration (family and beta), its seeds' held-out pairs pooled: one bin
    of a single run holds a handful of pairs, too few to read.

    Returns one row per configuration and bin: family, beta, seeds, pairs (of the configuration), ece
    (of the pooled pairs), and `calibration.reliability_bins`' bin, lo, hi, count, confidence, accuracy.
    Configurations without a preference probability (hinge) have no rows.
    """
    if "prob_chosen" not in pairs:
        return pd.DataFrame()
    runs = trained(table)[["model", "family", "beta"]]
    joined = pairs.dropna(subset=["prob_chosen"]).merge(runs, on="model")
    frames = []
    for (name, beta), group in joined.groupby(["family", "beta"], sort=True):
        bins = reliability_bins(group["prob_chosen"], n_bins)
        frames.append(bins.assign(family=name, beta=beta, seeds=group["model"].nunique(), pairs=len(group),
                                  ece=expected_calibration_error(group["prob_chosen"], n_bins)))  # fmt: skip
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def closest_configurations(table: pd.DataFrame, kl: float) -> pd.DataFrame:
    """Per family, the beta whose mean KL over seeds lies closest to `kl`: one panel each at a shared KL."""
    runs = trained(table)
    means = runs.groupby(["family", "beta"], as_index=False)["kl"].mean()
    means["distance"] = (means["kl"] - kl).abs()
    return means.sort_values("distance").groupby("family", as_index=False).first()[["family", "beta", "kl"]]


CLAIMS = {
    1: "f-divergences give a better reward-diversity balance (reward at matched predictive entropy, against "
    "reverse-KL DPO)",
    2: "f-DPO is more divergence-efficient than PPO-style RL (reward at matched KL, against RLOO)",
    3: "the divergence drives calibration (ECE at matched KL, against reverse-KL DPO; corrected: ECE minus "
    "its finite-sample floor)",
}


# Every matched table the notebook and RESULTS.md show: name -> (x, y, reference, title).
MATCHED_TABLES = {
    "kl_reward": ("kl", "reward", REFERENCE_FAMILY, "reward at matched KL, against reverse KL"),
    "kl_gold": ("kl", "gold_reward", REFERENCE_FAMILY, "gold reward at matched KL, against reverse KL"),
    "kl_entropy": ("kl", "predictive_entropy", REFERENCE_FAMILY,
                   "predictive entropy at matched KL, against reverse KL"),
    "kl_ece": ("kl", "ece", REFERENCE_FAMILY, "ECE at matched KL, against reverse KL"),
    "kl_ece_debiased": ("kl", "ece_debiased", REFERENCE_FAMILY,
                        "ECE minus its finite-sample floor at matched KL, against reverse KL"),
    "kl_ece_temperature": ("kl", "ece_temperature", REFERENCE_FAMILY,
                           "ECE after temperature scaling (fitted on the other half of the prompts) at "
                           "matched KL, against reverse KL"),
    "kl_pref_accuracy": ("kl", "pref_accuracy", REFERENCE_FAMILY,
                         "preference accuracy at matched KL, against reverse KL"),
    "entropy_reward": ("predictive_entropy", "reward", REFERENCE_FAMILY,
                       "reward at matched predictive entropy, against reverse KL"),
    "entropy_gold": ("predictive_entropy", "gold_reward", REFERENCE_FAMILY,
                     "gold reward at matched predictive entropy, against reverse KL"),
    "online_reward": ("kl", "reward", ONLINE_FAMILY, "reward at matched KL, against RLOO"),
    "online_gold": ("kl", "gold_reward", ONLINE_FAMILY, "gold reward at matched KL, against RLOO"),
}  # fmt: skip


def claim_tables(
    table: pd.DataFrame, samples: pd.DataFrame, pairs: pd.DataFrame, n_boot: int = 1000
) -> dict[str, pd.DataFrame]:
    """`frontier.matched` for each of MATCHED_TABLES that the results can fill: its reference family was
    run, its columns were measured (the pair statistics, `frontier.PAIR_METRICS`: held-out pairs, with
    probabilities for the ECEs). Claim 1 rests on entropy_reward, claim 2 on online_reward, claim 3 on
    kl_ece_debiased (kl_ece by the uncorrected rule); the gold tables check the first two."""
    runs = runs_of(table)
    tables = {}
    for name, (x, y, reference, _) in MATCHED_TABLES.items():
        if reference not in set(runs["family"]):
            continue
        if y in PAIR_METRICS:
            needed = "margin" if y == "pref_accuracy" and "margin" in pairs else "prob_chosen"
            if needed in pairs and len(pairs) and x in samples:
                tables[name] = matched(samples, runs, x, y, n_boot=n_boot, reference=reference, pairs=pairs)
        elif {x, y} <= set(samples.columns):
            tables[name] = matched(samples, runs, x, y, n_boot=n_boot, reference=reference)
    return tables


def why_missing(name: str, table: pd.DataFrame, samples: pd.DataFrame, pairs: pd.DataFrame) -> str:
    """Why `claim_tables` has no `name` table for these results, in words the notebook prints."""
    x, y, reference, _ = MATCHED_TABLES[name]
    if reference not in set(runs_of(table)["family"]):
        return f"no {reference} run to compare with"
    needed = [x] if y in PAIR_METRICS else [x, y]
    absent = [column for column in needed if column not in samples]
    if absent:
        return f"{' and '.join(absent)} not evaluated (`evaluate.py --metrics {metric_flag(absent)}`)"
    if y == "pref_accuracy":
        return "no held-out pairs (`evaluate.py --metrics preference`)"
    return "no run with a preference probability (held-out pairs: `evaluate.py --metrics preference`)"


def metric_flag(columns: list[str]) -> str:
    """The `--metrics` names that write `columns` (a sample's `kl` comes from its log-ratio: `kl`)."""
    names = {"gold_reward": "reward --gold_reward_model <scorer>"}
    return " ".join(dict.fromkeys(names.get(column, column) for column in columns))


# The table each claim rests on: (corrected rule, the first grid's uncorrected rule, gold check).
CLAIM_TABLES = {
    1: ("entropy_reward", "entropy_reward", "entropy_gold"),
    2: ("online_reward", "online_reward", "online_gold"),
    3: ("kl_ece_debiased", "kl_ece", None),
}


def verdict(tables: dict[str, pd.DataFrame], families: list[str]) -> pd.DataFrame:
    """One row per claim: the verdict by the corrected rule (`frontier.claim_verdict`: seeds as a small
    sample, Holm over the claim's families and targets, claim 3 on the debiased ECE), the standings behind
    it, the gold reward's verdict by the same rule, and beside them the verdict of the first grid's rule
    (each percentile interval alone, claim 3 on the raw ECE), with `changed` saying where they differ."""
    rows = []
    for claim, (main, old, gold) in CLAIM_TABLES.items():
        row = {"claim": claim, "what": CLAIMS[claim]}
        if main in tables:
            said, standings = claim_verdict(claim, tables[main], families)
            gold_said = claim_verdict(claim, tables[gold], families)[0] if gold in tables else ""
        else:
            said, standings, gold_said = "undecided", f"not measured (no {main} table)", ""
        old_said = "undecided"
        if old in tables:
            old_said = claim_verdict(claim, tables[old], families, corrected=False)[0]
        row.update({"verdict": said, "standings": standings, "gold_verdict": gold_said,
                    "uncorrected_verdict": old_said, "changed": said != old_said})  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def endpoints(result: pd.DataFrame, x: str, y: str, reference: str = REFERENCE_FAMILY) -> pd.DataFrame:
    """Per family of a `matched` table: the range of `x` compared, and the difference from the reference
    with its interval at the lowest and the highest target (RESULTS.md's tables)."""
    rows = []
    if result.empty:
        return pd.DataFrame(rows)
    for name, group in result[result["family"] != reference].groupby("family", sort=False):
        group = group.sort_values(x)

        def at(row) -> str:
            if pd.isna(row["diff_lo"]):
                return f"{row['diff']:+.3f} [interval undefined]"
            return f"{row['diff']:+.3f} [{row['diff_lo']:+.3f}, {row['diff_hi']:+.3f}]"

        low, high = group.iloc[0], group.iloc[-1]
        rows.append({"family": name, f"{x} range": f"{low[x]:.2f}–{high[x]:.2f}",
                     f"{y} at the low end": f"{low[y]:.3f}", "diff at the low end": at(low),
                     f"{y} at the high end": f"{high[y]:.3f}", "diff at the high end": at(high)})  # fmt: skip
    return pd.DataFrame(rows)
