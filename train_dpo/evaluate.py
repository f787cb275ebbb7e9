"""Score generation CSVs into one table: reward, diversity, divergence to the reference, calibration.

    poetry run python train_dpo/evaluate.py                       # every CSV in results/generations
    poetry run python train_dpo/evaluate.py --generations study_csvs/*.csv --metrics reward unigram_entropy
    poetry run python train_dpo/evaluate.py --reward_model vader --tokenizer tiny   # offline

Per model: per CSV (the study's format: prompt, answers = prompt + continuation), or per value of a
CSV's `model` column (the study's all_score.csv; `--group_by`). `--metrics` picks among:
    reward             mean reward of the continuation (same reward interface as the dataset)
    predictive_entropy the policy's mean per-token entropy on its own sampled tokens, EOS step included
    unigram_entropy    entropy of the unigram distribution of the continuations' --tokenizer tokens
                       (column `unigram_entropy_policy_tokens`: the study's formula, not its tokenizer/text)
    distinct           distinct-1 / distinct-2 over all generations (next to the mean `length`)
    length             mean continuation length in --tokenizer tokens
    kl                 KL(pi || pi_ref) = E_pi[log u] on the policy's sampled ids; KL(pi_ref || pi) and the
                       run's D_f(pi || pi_ref) = E_ref[f(u)] on the reference model's sampled ids (its
                       generations in the same folder); E_pi[f(u)/u] only where a few samples do not carry it
    preference         on the run's held-out pairs, through the trainer's own forward pass (EOS included):
                       accuracy of the implicit reward margin; ECE and reliability bins for sigmoid and
                       RLOO runs only
The policy metrics need the model, named in the `<tag>.json` that generate.py writes beside the CSV; they
are computed on the token ids saved with each completion (CSVs without them, such as the study's, are
re-tokenized, and `token_source` says so). The pair metrics need a training run directory. Every mean
comes with a 95% prompt-cluster bootstrap interval and a count of the non-finite values it left out.
Writes to <out_dir>: results.csv (one row per model), samples.csv (one row per completion),
reference_samples.csv (the reference's completions scored under each run), pairs.csv (one row per
held-out pair), reliability.csv (per run and confidence bin), results_by_config.csv (between-seed
intervals), summary.md. Each model's scores are kept beside it, in .<out_dir name>.cache/, under a key of
everything they were computed from: a rerun scores only the models whose inputs changed (docs/evaluation.md).
"""

from __future__ import annotations

import common.help  # noqa: F401  (first: answers --help before the heavy imports below)

# isort: split
import csv
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import special
from transformers import AutoTokenizer

import config
from analysis.calibration import expected_calibration_error, margin_correct, reliability_bins
from analysis.intervals import between_seeds, mean_ci
from common.atomic import check_replaceable, replace_dir, staging_dir, write_atomic
from common.cli import check_field_types, parse_with_presets
from common.errors import InputError, exits_cleanly, first_line, writing
from common.lock import lock_beside, output_lock
from common.models import Policy, adapter_config, check_device, default_device, load_policy, model_version
from common.pairing import is_prefixed, strip_prompt
from common.readers import check_model_folder, json_type, read_json_object, read_text_csv
from common.rewards import LEXICONS, RewardArguments, load_reward, native_bf16
from train_dpo.divergences import get_divergence
from train_dpo.generate import parse_ids
from train_dpo.losses import PROBABILISTIC_LOSSES
from train_dpo.metrics import (
    distinct_n,
    effective_sample_size,
    f_divergence_is_terms,
    f_divergence_ref_terms,
    preference_margin,
    unigram_entropy,
)
from train_dpo.pair_eval import heldout_pairs, pair_logratios
from train_dpo.sequences import sequence_stats
from train_dpo.user_code import divergence_source_sha256

logger = logging.getLogger("evaluate")

DEFAULT_GROUP = "model"  # the column that tells models apart in the study's all_score.csv
METRICS = ("reward", "predictive_entropy", "unigram_entropy", "distinct", "length", "kl", "preference")
TOKEN_METRICS = {"unigram_entropy", "distinct", "length"}  # counted in --tokenizer's tokens
POLICY_METRICS = {"predictive_entropy", "kl", "preference"}  # need the model that wrote the CSV
INTERVAL = "95% percentile bootstrap, prompts resampled with their completions"
# E_pi[f(u)/u] is reported only when at least this share of the samples effectively carries its sum.
IS_MIN_ESS_SHARE = 0.1
# Per-run means that results_by_config.csv gives a between-seed interval.
SEED_METRICS = ("reward", "gold_reward", "predictive_entropy", "unigram_entropy_policy_tokens", "distinct_1",
                "distinct_2", "length", "kl", "kl_forward", "f_divergence_ref_samples", "pref_accuracy",
                "ece")  # fmt: skip
# In out_dir: the tables this evaluation wrote, and from what. Its presence says the project wrote the folder.
EVAL_MANIFEST = "evaluation.json"
# Every table an evaluation may write: all that an out_dir written before EVAL_MANIFEST existed may hold.
EVAL_TABLES = ("results.csv", "samples.csv", "reference_samples.csv", "pairs.csv", "reliability.csv",
               "results_by_config.csv", "summary.md")  # fmt: skip


@dataclass
class EvaluateArguments(RewardArguments):
    generations: list[str] = field(
        default_factory=lambda: [str(config.RESULTS_DIR / "generations")],
        metadata={"help": "Generation CSVs, or folders of them."},
    )
    metrics: list[str] = field(
        default_factory=lambda: list(METRICS), metadata={"help": f"Subset of {METRICS}."}
    )
    gold_reward_model: str | None = field(
        default=None,
        metadata={
            "help": "A second scorer that training never saw (classifier id/dir, 'textblob' or 'vader'), "
            "reported as gold_reward beside the training reward: over-optimisation of the training "
            "reward shows as reward rising while gold_reward does not."
        },
    )
    group_by: str | None = field(
        default=None,
        metadata={
            "help": "A CSV column whose values name different models (the study's all_score.csv): each is "
            "evaluated on its own; every CSV must have it. Default: the `model` column of the CSVs that "
            "have one (generate.py's hold one model each); 'none' pools every row of a CSV."
        },
    )
    tokenizer: str = field(
        default=config.SFT_MODEL,
        metadata={"help": "Tokenizer of the text metrics, shared by all models ('tiny' ok)."},
    )
    max_test_pairs: int | None = field(
        default=None,
        metadata={
            "help": "Held-out pairs for the preference metrics: a seeded sample over the test prompts "
            "(default: all)."
        },
    )
    batch_size: int = field(default=16, metadata={"help": "Sequences per forward pass."})
    out_dir: str = field(default=str(config.RESULTS_DIR / "eval"), metadata={"help": "Where the tables go."})
    device: str | None = field(default=None, metadata={"help": "cpu / cuda (default: cuda when available)."})

    def __post_init__(self):
        check_field_types(self)  # a YAML value reaches the dataclass unconverted
        super().__post_init__()  # the reward flags
        check_device(self.device)
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(
                f"--metrics: unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}"
            )


@dataclass
class Table:
    """One model's generations: its name, the model that wrote them (if known), rows, `<tag>.json`."""

    name: str
    model: str | None
    frame: pd.DataFrame
    meta: dict = field(default_factory=dict)


@dataclass
class Evaluated:
    """One model's row of results.csv, and its rows of the per-unit tables."""

    row: dict
    samples: pd.DataFrame
    reference_samples: pd.DataFrame | None = None
    pairs: pd.DataFrame | None = None
    reliability: pd.DataFrame | None = None


def read_generations(path: Path) -> pd.DataFrame:
    """A study-format CSV; InputError if it lacks prompt/answers."""
    try:
        frame = read_text_csv(path)
    except ValueError as error:  # pandas' ParserError and EmptyDataError, UnicodeDecodeError
        raise InputError(f"{path}: cannot read as CSV ({first_line(error)})") from None
    missing = [c for c in ("prompt", "answers") if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (need prompt, answers)")
    if frame.empty:
        raise InputError(f"{path}: no rows")
    return frame.astype({"prompt": str, "answers": str})


def csv_files(specs: list[str]) -> list[Path]:
    files = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            files.extend(sorted(path.glob("*.csv")))
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"{spec}: no such file or folder")
    if not files:
        raise InputError(f"no generation CSVs in {', '.join(specs)}")
    return files


# What evaluation reads from a run's run_config.json (`run_info`, `heldout_pairs`): a record without one of
# them is refused in one line naming the file, not met as a KeyError mid-evaluation.
RUN_CONFIG_KEYS = {"training": ("loss_type", "divergence", "beta", "alpha", "learning_rate", "seed"),
                   "script": ("dataset", "test_size")}  # fmt: skip


def load_run_config(model: str | None) -> dict | None:
    """A training run's saved run_config.json (None for anything that is not a run directory).

    Raises:
        InputError: the file is damaged (cut short, emptied, not JSON) or lacks a setting evaluation reads.
    """
    path = Path(model) / "run_config.json" if model else None
    if path is None or not path.is_file():
        return None
    saved = read_json_object(path)
    for part, keys in RUN_CONFIG_KEYS.items():
        section = saved.get(part)
        missing = [key for key in keys if not isinstance(section, dict) or key not in section]
        if missing:
            raise InputError(f"{path}: no {part} setting(s) {', '.join(missing)} (not a run's record)")
    beta = saved["training"]["beta"]
    if not isinstance(beta, int | float) or isinstance(beta, bool):
        raise InputError(f"{path}: training beta is {json_type(beta)}, not a number")
    saved["script"]["dataset"] = relocated(
        saved["script"]["dataset"], saved["training"].get("output_dir"), model
    )
    return saved


def relocated(recorded: object, recorded_run: object, run_dir: str | Path) -> object:
    """A local path a run recorded, where it lies now if the run's results folder was moved whole since
    (the pairs of a sweep sit beside its runs): kept as recorded when it still exists, is not a local path,
    or is not found at the same place relative to the run folder."""
    if not isinstance(recorded, str) or not isinstance(recorded_run, str) or Path(recorded).exists():
        return recorded
    if not Path(recorded).is_absolute() or not Path(recorded_run).is_absolute():
        return recorded
    moved = Path(run_dir).resolve() / os.path.relpath(recorded, recorded_run)
    return str(moved.resolve()) if moved.exists() else recorded


def implies_preferences(info: dict) -> bool:
    """Whether a run's record has a beta the preference metrics can scale margins by (finite, > 0).

    Training refuses any other, but a record written before that check (an online-RL run at beta 0) may
    hold one: such a run is evaluated without its preference metrics, not stopped.
    """
    return math.isfinite(info["beta"]) and info["beta"] > 0


def run_info(saved: dict | None) -> dict:
    """Loss, divergence, beta, alpha, seed and dataset of a training run (empty for anything else)."""
    if not saved:
        return {}
    training, script = saved["training"], saved["script"]
    loss = training["loss_type"] if isinstance(training["loss_type"], str) else training["loss_type"][0]
    return {"loss": loss, "divergence": training["divergence"], "beta": training["beta"],
            "alpha": training["alpha"], "learning_rate": training["learning_rate"], "seed": training["seed"],
            "dataset": script["dataset"], "test_size": script["test_size"]}  # fmt: skip


def put_mean(row: dict, name: str, values, clusters) -> None:
    """`name`, its interval (`_lo`, `_hi`: INTERVAL) and `_nonfinite` (values left out) into `row`."""
    interval = mean_ci(np.asarray(values, dtype=float), clusters=np.asarray(clusters))
    row.update({name: interval.mean, f"{name}_lo": interval.lo, f"{name}_hi": interval.hi,
                f"{name}_nonfinite": interval.nonfinite})  # fmt: skip
    if interval.nonfinite:
        logger.warning("%s: %d non-finite value(s) left out of its mean", name, interval.nonfinite)


def model_tables(path: Path, group_by: str | None) -> list[Table]:
    """One Table per model in one CSV.

    A CSV from generate.py holds one model, named in the `<tag>.json` beside it. The study's CSVs hold
    several, told apart by a `model` column: pooling them would mix models in every mean, so a
    `group_by` column the CSV lacks (a misspelling) is an error, never a silent pooling.
    """
    frame = read_generations(path)
    if group_by not in (None, "none") and group_by not in frame.columns:
        raise InputError(
            f"--group_by {group_by}: {path} has no such column (its columns: {', '.join(frame.columns)})"
        )
    column = DEFAULT_GROUP if group_by is None else group_by
    warn_duplicates(path, frame, column)
    meta = read_generation_record(path, frame)
    if column not in frame.columns:  # generate.py's CSVs, and 'none'
        return [Table(path.stem, meta.get("model"), frame, meta)]
    return [
        Table(str(name), None, rows.reset_index(drop=True))
        for name, rows in frame.groupby(column, sort=False)
    ]


def read_generation_record(path: Path, frame: pd.DataFrame) -> dict:
    """The `<tag>.json` generate.py writes beside a CSV ({} where there is none), checked against the CSV:
    the model it names (and that model's run_config.json, read now so that a damaged one stops evaluation
    before anything is scored) and the row count it records, which a CSV cut short at a row's end lacks.

    Raises:
        InputError: one line naming the damaged or disagreeing file.
    """
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        return {}
    meta = read_json_object(meta_path)
    model = meta.get("model")
    if model is not None and not isinstance(model, str):
        raise InputError(f"{meta_path}: model is {json_type(model)}, not a name")
    rows = meta.get("rows")
    if isinstance(rows, int) and not isinstance(rows, bool) and rows != len(frame):
        raise InputError(f"{path}: {len(frame)} rows, but {meta_path.name} records {rows} (cut short?)")
    load_run_config(model)
    return meta


def warn_duplicates(path: Path, frame: pd.DataFrame, group: str) -> None:
    """Warn of records that appear more than once: each would count in every mean as often as it appears.

    A record is one model's sample `sample` of a prompt where the CSV numbers samples (generate.py's
    CSVs), else a row equal in every column (the study's CSVs, where two samples may differ only there).
    """
    models = [c for c in dict.fromkeys([group, DEFAULT_GROUP]) if c in frame.columns]
    key = [*models, "prompt", "sample"] if "sample" in frame.columns else list(frame.columns)
    count = int(frame.duplicated(subset=key).sum())
    if count:
        what = f"same {', '.join(key)}" if "sample" in key else "rows equal in every column"
        logger.warning("%s: %d duplicated record(s) (%s), each counted as often as it appears", path, count,
                       what)  # fmt: skip


def check_distinct_names(tables: dict[Path, list[Table]]) -> None:
    """InputError for two models of one name (`x.csv` in two folders, or a `model` value and a CSV):
    results.csv, samples.csv and the notebook key every row by the name, so their rows would mix."""
    seen: dict[str, Path] = {}
    for path, file_tables in tables.items():
        for table in file_tables:
            other = seen.setdefault(table.name, path)
            if other != path:
                raise InputError(f"--generations: {other} and {path} both hold a model named {table.name}")


def model_key(name: str) -> str:
    """One spelling per model: a local directory's resolved path, else the Hub id."""
    path = Path(name)
    return str(path.resolve()) if path.exists() else name


def reference_tables(tables: list[Table]) -> dict[str, Table]:
    """Generations of full models (the SFT base), by model: the reference samples of the runs on them."""
    return {model_key(t.model): t for t in tables if t.model and t.meta and not t.meta.get("is_adapter")}


def token_ids(table: Table, continuations: list[str], tokenizer) -> tuple[list, list, str]:
    """Prompt and completion ids to score, and where they come from (`token_source`).

    generate.py saves the ids it sampled (EOS included when emitted): those. Text-only CSVs (the study's)
    are re-tokenized, which differs from the sampled ids for a share of samples and has no EOS.
    """
    frame = table.frame
    if {"prompt_ids", "completion_ids"} <= set(frame.columns):
        prompts, completions = map(parse_ids, frame["prompt_ids"]), map(parse_ids, frame["completion_ids"])
        return list(prompts), list(completions), "sampled_ids"
    prompts = tokenizer(list(frame["prompt"]), add_special_tokens=False).input_ids
    return prompts, tokenizer(continuations, add_special_tokens=False).input_ids, "retokenized_text"


def policy_logratios(policy: Policy, prompt_ids: list, completion_ids: list, batch_size: int, ratios=True):
    """`sequence_stats` under the policy, and log u = log pi - log pi_ref per sequence, shape (N,).

    A full model is its own reference (the SFT baseline): log u = 0. `ratios=False` skips the
    reference pass (log u is then None).
    """
    pad = policy.tokenizer.pad_token_id
    stats = sequence_stats(policy.model, pad, prompt_ids, completion_ids, batch_size)
    if not ratios:
        return stats, None
    if not policy.is_adapter:
        return stats, torch.zeros_like(stats["logps"])
    with policy.reference():
        ref = sequence_stats(policy.model, pad, prompt_ids, completion_ids, batch_size)
    return stats, stats["logps"] - ref["logps"]


def reference_sample_metrics(
    name: str, policy: Policy, info: dict, reference: Table, args: EvaluateArguments
) -> tuple[dict, pd.DataFrame]:
    """KL(pi_ref || pi) = E_ref[-log u] and D_f(pi || pi_ref) = E_ref[f(u)] on the reference's samples."""
    frame = reference.frame
    continuations = [strip_prompt(p, a) for p, a in zip(frame["prompt"], frame["answers"], strict=True)]
    prompt_ids, completion_ids, source = token_ids(reference, continuations, policy.tokenizer)
    _, logratio = policy_logratios(policy, prompt_ids, completion_ids, args.batch_size)
    logratio = logratio.numpy()
    prompts = frame["prompt"].to_numpy()
    scored = pd.DataFrame({"model": name, "reference": reference.name, "prompt": prompts,
                           "token_source": source, "logratio": logratio})  # fmt: skip
    row = {"reference_generations": reference.name}
    put_mean(row, "kl_forward", -logratio, prompts)
    divergence = get_divergence(info["divergence"], info["alpha"]) if info else None
    if divergence is not None and divergence.f is not None:
        scored["f"] = f_divergence_ref_terms(divergence, logratio)
        put_mean(row, "f_divergence_ref_samples", scored["f"], prompts)
    return row, scored


def own_sample_metrics(
    table: Table, continuations: list[str], policy: Policy, info: dict, args: EvaluateArguments
) -> tuple[dict, dict]:
    """Predictive entropy, KL(pi || pi_ref) and E_pi[f(u)/u] on the policy's own sampled ids.

    Returns per-completion columns and the row's fields.
    """
    prompt_ids, completion_ids, source = token_ids(table, continuations, policy.tokenizer)
    stats, logratio = policy_logratios(
        policy, prompt_ids, completion_ids, args.batch_size, ratios="kl" in args.metrics
    )
    columns = {"token_source": source, "sampled_tokens": stats["tokens"].numpy()}
    row = {"token_source": source}
    prompts = table.frame["prompt"].to_numpy()
    if "predictive_entropy" in args.metrics:  # 0/0 = NaN for a completion with no token: counted
        columns["predictive_entropy"] = (stats["entropy"] / stats["tokens"]).numpy()
        put_mean(row, "predictive_entropy", columns["predictive_entropy"], prompts)
    if "kl" in args.metrics:
        columns["logratio"] = logratio.numpy()
        put_mean(row, "kl", columns["logratio"], prompts)
        divergence = get_divergence(info["divergence"], info["alpha"]) if info else None
        if divergence is not None and divergence.f is not None:
            terms = f_divergence_is_terms(divergence, columns["logratio"])
            columns["f_over_u"] = terms
            ess = effective_sample_size(terms)
            row["f_divergence_policy_is_ess"] = ess
            stable = ess >= IS_MIN_ESS_SHARE * np.isfinite(terms).sum()
            put_mean(row, "f_divergence_policy_is", terms if stable else np.full_like(terms, np.nan), prompts)
            if not stable:
                row["f_divergence_policy_is_nonfinite"] = int((~np.isfinite(terms)).sum())
                logger.warning("%s: E_pi[f(u)/u] left out: %.1f of %d samples carry it", table.name, ess,
                               len(terms))  # fmt: skip
    return columns, row


def preference_metrics(name: str, policy: Policy, saved: dict, info: dict, args: EvaluateArguments):
    """Accuracy (and, for sigmoid and online-RL runs, ECE) on the run's held-out pairs, with the trainer's
    log-ratios.

    Returns (row fields, pairs table, reliability bins or None); ({}, None, None) without a test split.
    """
    pairs = heldout_pairs(saved, policy.tokenizer, args.max_test_pairs)
    if pairs is None:
        return {}, None, None
    ratios = pair_logratios(policy, pairs, saved, args.batch_size)
    divergence = get_divergence(info["divergence"], info["alpha"])
    margin = preference_margin(ratios["chosen"], ratios["rejected"], divergence, info["beta"])
    prompts = np.asarray(pairs["prompt"])
    table = pd.DataFrame({"model": name, "prompt": prompts, "chosen_logratio": ratios["chosen"],
                          "rejected_logratio": ratios["rejected"], "margin": margin})  # fmt: skip
    row = {}
    put_mean(row, "pref_accuracy", margin_correct(margin), prompts)
    row["test_pairs"], row["test_prompts"] = len(prompts), len(set(prompts))
    reliability = None
    if info["loss"] in PROBABILISTIC_LOSSES:  # a Bradley-Terry likelihood (train_dpo/losses.py); hinge is not
        table["prob_chosen"] = special.expit(margin)
        row["ece"] = expected_calibration_error(table["prob_chosen"])
        reliability = reliability_bins(table["prob_chosen"]).assign(model=name)
    return row, table, reliability


def evaluate_table(
    table: Table,
    reward,
    tokenizer,
    args: EvaluateArguments,
    references: dict[str, Table] | None = None,
    gold=None,
) -> Evaluated:
    """One model's row of the results table, and its per-completion (and per-pair) rows."""
    name, model, frame = table.name, table.model, table.frame
    saved = load_run_config(model)
    info = run_info(saved)
    pairs = list(zip(frame["prompt"], frame["answers"], strict=True))
    continuations = [strip_prompt(p, a) for p, a in pairs]
    prompts = frame["prompt"].to_numpy()
    samples = pd.DataFrame({"model": name, "prompt": frame["prompt"], "answer": frame["answers"]})
    row = {"model": name, "source": model or name, "n": len(frame), "prompts": len(set(prompts)),
           "not_prefixed": sum(not is_prefixed(p, a) for p, a in pairs),
           **{k: info.get(k) for k in ("loss", "divergence", "beta", "alpha", "learning_rate", "seed")},
           "interval": INTERVAL}  # fmt: skip
    out = Evaluated(row, samples)
    token_lists = tokenizer(continuations, add_special_tokens=False).input_ids if tokenizer else None

    if "reward" in args.metrics:
        samples["reward"] = reward.score(continuations)
        row["reward_model"] = reward.name  # with its precision, e.g. `...:logit:bfloat16`
        put_mean(row, "reward", samples["reward"], prompts)
    if gold is not None:
        samples["gold_reward"] = gold.score(continuations)
        row["gold_reward_model"] = gold.name
        put_mean(row, "gold_reward", samples["gold_reward"], prompts)
    if "unigram_entropy" in args.metrics:
        row["unigram_entropy_policy_tokens"] = unigram_entropy(token_lists)
    if "distinct" in args.metrics:
        row["distinct_1"], row["distinct_2"] = distinct_n(token_lists, 1), distinct_n(token_lists, 2)
    if "length" in args.metrics:  # next to distinct-n, which falls as completions get longer
        samples["length"] = [len(tokens) for tokens in token_lists]
        put_mean(row, "length", samples["length"], prompts)

    needs_policy = POLICY_METRICS & set(args.metrics)
    if needs_policy and not model:
        skipped(name, needs_policy, "no model named beside its CSV (generate.py writes one in <tag>.json)")
    if "preference" in args.metrics and model and not info:
        skipped(name, {"preference"}, "its model is not a training run (no run_config.json)")
    elif "preference" in args.metrics and info and not implies_preferences(info):
        skipped(name, {"preference"}, f"its run_config.json records beta {info['beta']}: no margin to score")
    if not (needs_policy and model):
        return out
    policy = load_policy(model, args.device)
    if {"predictive_entropy", "kl"} & set(args.metrics):
        columns, fields = own_sample_metrics(table, continuations, policy, info, args)
        for column, values in columns.items():
            samples[column] = values
        row.update(fields)
    if "kl" in args.metrics and policy.is_adapter:
        reference = (references or {}).get(model_key(policy.base))
        if reference is None:
            skipped(name, {"kl_forward", "f_divergence_ref_samples"},
                    f"no generations of its reference model {policy.base} among the CSVs")  # fmt: skip
        else:
            fields, out.reference_samples = reference_sample_metrics(name, policy, info, reference, args)
            row.update(fields)
    if "preference" in args.metrics and info and implies_preferences(info):
        if not policy.is_adapter:
            skipped(name, {"preference"}, "a fully fine-tuned run: its reference model is not loaded")
        else:
            fields, out.pairs, out.reliability = preference_metrics(name, policy, saved, info, args)
            if not fields:
                skipped(name, {"preference"}, f"its run's dataset {info['dataset']} has no test split")
            row.update(fields)
    del policy
    return out


def skipped(name: str, metrics: set[str], why: str) -> None:
    """Say that requested metrics were left out for one model, rather than let their columns vanish."""
    logger.warning("%s: %s not computed: %s", name, ", ".join(sorted(metrics)), why)


def markdown_summary(table: pd.DataFrame) -> str:
    lines = [
        "| model | "
        + " | ".join(c for c in ("reward", "predictive_entropy", "kl", "pref_accuracy") if c in table)
        + " |"
    ]
    lines.append("|" + " --- |" * (lines[0].count("|") - 1))
    for _, row in table.iterrows():
        cells = [str(row["model"])]
        for c in ("reward", "predictive_entropy", "kl", "pref_accuracy"):
            if c in table:
                cells.append(mean_cell(row[c], row[f"{c}_lo"], row[f"{c}_hi"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_cell(mean: float, lo: float, hi: float) -> str:
    """`mean [lo, hi]`; `[–]` where there is no interval (a single prompt), empty where there is no mean."""
    if pd.isna(mean):
        return ""
    return f"{mean:.3f} [–]" if pd.isna(lo) or pd.isna(hi) else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def write_tables(results: list[Evaluated], out: Path, about: dict | None = None) -> list[str]:
    """Write `out` whole: results.csv and the per-unit tables beside it (a table no model has rows in is
    not written), with EVAL_MANIFEST naming them, staged in a scratch folder beside `out` and renamed into
    place at once. No table of an earlier evaluation survives beside these (its models' pairs.csv beside
    a newer results.csv), and a kill before the rename leaves the earlier `out` as it was.

    The caller holds `out`'s lock (`lock_beside`). `about`: what the manifest records besides the tables.
    Returns the names written.
    """
    out = Path(os.path.abspath(out))
    table = pd.DataFrame([result.row for result in results])
    tables = {"results.csv": table.to_csv(index=False)}
    # Every text quoted: a completion may hold a bare "\r", which minimal quoting leaves as a line break.
    samples = pd.concat(result.samples for result in results)
    tables["samples.csv"] = samples.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC)
    for name in ("reference_samples", "pairs", "reliability"):
        parts = [getattr(result, name) for result in results if getattr(result, name) is not None]
        if parts:
            tables[f"{name}.csv"] = pd.concat(parts).to_csv(index=False)
    runs = table[table["loss"].notna()] if "loss" in table else table.iloc[:0]
    if len(runs):
        by_config = between_seeds(runs, [m for m in SEED_METRICS if m in runs])
        tables["results_by_config.csv"] = by_config.to_csv(index=False)
    tables["summary.md"] = markdown_summary(table)
    manifest = {"tables": sorted(tables), **(about or {})}
    with writing(out), staging_dir(out) as staging:
        for name, text in tables.items():
            (staging / name).write_text(text, encoding="utf-8")
        (staging / EVAL_MANIFEST).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        for path in staging.iterdir():  # on disk before the rename that makes them the evaluation
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        replace_dir(staging, out, EVAL_MANIFEST, legacy=EVAL_TABLES)
    return sorted(tables)


def parse_args(argv: list[str] | None = None) -> EvaluateArguments:
    """Flags and YAML (`--config`) merged into EvaluateArguments; a bad value raises InputError."""
    (args,) = parse_with_presets(EvaluateArguments, None, argv)
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    files = csv_files(args.generations)
    by_file = {path: model_tables(path, args.group_by) for path in files}  # bad files fail first
    check_distinct_names(by_file)
    tables = [table for file_tables in by_file.values() for table in file_tables]
    out = Path(args.out_dir)
    with output_lock(lock_beside(out)):  # one evaluation per out_dir at a time, held until it is written
        check_replaceable(out, EVAL_MANIFEST, EVAL_TABLES)  # refused before the work, not after it
        cache = ScoreCache(cache_beside(out))
        try:
            results = evaluate_tables(tables, args, cache)
        except Exception:  # a bad input met mid-way: no entry of this evaluation stays (Ctrl-C keeps them)
            cache.discard_new()
            raise
        about = {"metrics": args.metrics, "generations": [str(path) for path in files],
                 "reward_model": args.reward_model, "gold_reward_model": args.gold_reward_model,
                 "scored": cache.scored, "cached": cache.reused}  # fmt: skip
        write_tables(results, out, about)
        cache.keep_only_used()
    table = pd.DataFrame([result.row for result in results])
    not_prefixed = int(table["not_prefixed"].sum())
    if not_prefixed:
        logger.warning(
            "%d answers did not start with their prompt; they were scored as they are", not_prefixed
        )
    logger.info("wrote %s (%d model(s) scored, %d from the cache)", out / "results.csv", len(cache.scored),
                len(cache.reused))  # fmt: skip


@dataclass
class Scorers:
    """The tokenizer and reward models, loaded at the first model the cache does not hold."""

    args: EvaluateArguments
    loaded: tuple | None = None

    def get(self) -> tuple:
        if self.loaded is None:
            args = self.args
            # The tokenizer first: the cheap load, whose error comes before a reward model's.
            tokenizer = load_tokenizer(args.tokenizer) if TOKEN_METRICS & set(args.metrics) else None
            reward = (
                load_reward(args.reward_model, output=args.reward_output, device=args.device,
                            dtype=args.reward_dtype)
                if "reward" in args.metrics
                else None
            )  # fmt: skip
            gold = None
            if args.gold_reward_model:
                gold = load_reward(args.gold_reward_model, output=args.reward_output, device=args.device,
                                   dtype=args.reward_dtype)  # fmt: skip
            self.loaded = (tokenizer, reward, gold)
        return self.loaded


def evaluate_tables(
    tables: list[Table], args: EvaluateArguments, cache: ScoreCache | None = None
) -> list[Evaluated]:
    """Every model's results: from `cache` where it holds them under the model's key, else scored (and
    stored there), the scorers they need loaded once, and only if a model is scored."""
    references = reference_tables(tables)
    keys = CacheKeys(args, references) if cache is not None else None
    scorers = Scorers(args)
    results = []
    for table in tables:
        key = keys.of(table) if keys is not None else None
        result = cache.load(table.name, key) if cache is not None else None
        if result is None:
            tokenizer, reward, gold = scorers.get()
            result = evaluate_table(table, reward, tokenizer, args, references, gold)
            if cache is not None:
                cache.store(table.name, key, result)
        logger.info("%s: %s", table.name, {k: v for k, v in result.row.items() if isinstance(v, float)})
        results.append(result)
    return results


# --- the per-model score cache: adding models to a folder scores only them
#
# Kept beside out_dir (as its lock is), so that it outlives the swap that replaces out_dir whole, and read
# and written under that lock. One file per model and key, `<model>-<key>.json`: its first line is the
# SHA-256 of the rest, so an entry damaged after it was written is scored again, never trusted; each is
# written to a temporary name and renamed (write_atomic), so a kill leaves no entry half-written.
CACHE_FORMAT = 1  # raise when the layout of an entry changes
# Libraries whose versions change a model's numbers (kernels, tokenizers, the trainer's forward pass).
SCORING_LIBRARIES = ("torch", "transformers", "tokenizers", "peft", "trl", "datasets", "numpy", "scipy",
                     "pandas")  # fmt: skip
LEXICON_PACKAGES = {"vader": "vaderSentiment", "textblob": "textblob"}  # LEXICONS' distributions
# Files of a model folder that loading it reads besides its weights (the adapter's rank and base, the
# tokenizer's vocabulary); the run's run_config.json enters a key parsed, by itself.
MODEL_FILES = ("config.json", "generation_config.json", "adapter_config.json", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
               "merges.txt", "vocab.txt", "tokenizer.model", "chat_template.jinja")  # fmt: skip
TABLE_FIELDS = ("samples", "reference_samples", "pairs", "reliability")  # Evaluated's per-unit tables


def cache_beside(folder: Path | str) -> Path:
    """The score cache of an out_dir written whole: `.<name>.cache/` beside it (see `lock_beside`)."""
    folder = Path(os.path.abspath(folder))
    return folder.with_name(f".{folder.name}.cache")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical(value) -> str:
    """One JSON spelling of a key's parts (sorted keys; numpy scalars as Python ones)."""
    return json.dumps(value, sort_keys=True, default=plain, allow_nan=True)


def plain(value):
    """A numpy scalar or a path as JSON knows it; anything else by its str."""
    return value.item() if isinstance(value, np.generic) else str(value)


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def project_source_sha256() -> str:
    """SHA-256 of the source of this module and of every project module it reaches through its imports,
    at any depth: a fix to how a metric is computed (here, in analysis/, in pair_eval.py, in the trainer's
    forward pass) scores every model again, instead of leaving the old numbers in the cache."""
    root = config.REPO_ROOT.resolve()

    def project_file(module) -> Path | None:
        path = getattr(module, "__file__", None)
        path = Path(path).resolve() if path else None
        inside = path is not None and path.is_relative_to(root) and "site-packages" not in path.parts
        return path if inside else None

    seen: dict[Path, None] = {}
    pending = [sys.modules[__name__]]
    while pending:
        module = pending.pop()
        path = project_file(module)
        if path is None or path in seen:
            continue
        seen[path] = None
        for value in vars(module).values():
            name = getattr(value, "__module__", None)
            found = value if isinstance(value, types.ModuleType) else sys.modules.get(str(name or ""))
            if found is not None:
                pending.append(found)
    digest = hashlib.sha256()
    for path in sorted(seen):
        digest.update(f"{path.relative_to(root)}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    versions = {}
    for name in SCORING_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class CacheKeys:
    """Each model's cache key: the SHA-256 of everything its rows are computed from.

    Shared by every model: the cache's format, the project's scoring code, the libraries' versions, the
    metrics asked for, and the settings that change their numbers: the reward and gold scorers (name,
    output, precision as `--reward_dtype auto` resolves it, and their version: a local folder's weights and
    files, a Hub commit, a lexicon's package version) where asked for, the token metrics' tokenizer,
    `--max_test_pairs` with the preference metrics, `--batch_size` and the device with the policy metrics
    (padding and kernels move float sums in their last bits, and a cached number must be the one a fresh
    evaluation with these flags would write). Left out: `--out_dir`, `--generations` (which CSVs are read,
    not what one model's numbers are), `--group_by` (its effect is the model's rows, hashed below).

    Per model: its name, the content of its rows and of its `<tag>.json`, the model that record names and
    that model's run_config.json; with the policy metrics, the model's weights and loaded files (and, for an
    adapter, its base model's, which is its reference), with `kl` the content of the reference generations
    it is compared with, with `preference` its dataset's files, and a divergence of one's own by its code.
    Folders are hashed once per evaluation (the SFT base of every run once), never remembered across
    evaluations: a model retrained in place between two is hashed anew.
    """

    def __init__(self, args: EvaluateArguments, references: dict[str, Table]):
        self.args = args
        self.metrics = set(args.metrics)
        self.references = references
        self.memo: dict[tuple, object] = {}
        device = args.device or default_device()
        shared = {"format": CACHE_FORMAT, "code": project_source_sha256(), "libraries": library_versions(),
                  "metrics": sorted(self.metrics), "device": device}  # fmt: skip
        if "reward" in self.metrics:
            shared["reward"] = self.scorer(args.reward_model, device)
        if args.gold_reward_model:
            shared["gold_reward"] = self.scorer(args.gold_reward_model, device)
        if TOKEN_METRICS & self.metrics:
            shared["tokenizer"] = self.folder(tokenizer_path(args.tokenizer), weights=False)
        if POLICY_METRICS & self.metrics:
            shared["batch_size"] = args.batch_size
        if "preference" in self.metrics:
            shared["max_test_pairs"] = args.max_test_pairs
        self.shared = sha256_text(canonical(shared))

    def of(self, table: Table) -> str:
        parts = {"settings": self.shared, "name": table.name, "generations": self.table_digest(table),
                 "model": table.model}  # fmt: skip
        saved = load_run_config(table.model)
        parts["run_config"] = saved
        if table.model and POLICY_METRICS & self.metrics:
            parts["weights"] = self.folder(table.model, weights=True)
            adapter = self.cached(("adapter", table.model), lambda: adapter_config(table.model))
            if adapter is not None:
                base = adapter.base_model_name_or_path
                parts["base"] = self.folder(base, weights=True)
                if "kl" in self.metrics:
                    reference = self.references.get(model_key(base))
                    parts["reference"] = self.table_digest(reference) if reference is not None else None
            divergence = str((saved or {}).get("training", {}).get("divergence", ""))
            if ":" in divergence:  # a module of one's own: its code at evaluation time
                parts["divergence"] = self.cached(("divergence", divergence),
                                                  lambda: divergence_source_sha256(divergence))  # fmt: skip
            if saved and "preference" in self.metrics:
                dataset = str(saved["script"]["dataset"])
                parts["dataset"] = self.cached(("dataset", dataset), lambda: path_sha256(Path(dataset)))
        return sha256_text(canonical(parts))

    def cached(self, key: tuple, compute):
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def table_digest(self, table: Table) -> str:
        """A model's generations by content: its rows as read, its `<tag>.json`, its name."""
        return self.cached(
            ("table", table.name, id(table)),
            lambda: sha256_text(canonical([table.name, table.meta, table.frame.to_csv(index=False)])),
        )

    def folder(self, name: str, weights: bool) -> dict:
        """Which model `name` is: a local folder's weights (if `weights`) and MODEL_FILES, a Hub commit."""

        def version() -> dict:
            path = Path(name)
            if not path.is_dir():
                return {"name": name, **model_version(name)}
            files = {file: file_sha256(path / file) for file in MODEL_FILES if (path / file).is_file()}
            return {**(model_version(name) if weights else {}), "files": files}

        return self.cached(("folder", name, weights), version)

    def scorer(self, spec: str, device: str) -> dict:
        """A reward scorer's identity: what it is, its output, precision and version."""
        if spec in LEXICONS:
            return {"lexicon": spec, "version": importlib.metadata.version(LEXICON_PACKAGES[spec])}
        args = self.args
        bf16 = args.reward_dtype == "bfloat16" or (args.reward_dtype == "auto" and native_bf16(device))
        return {"classifier": self.folder(spec, weights=True), "output": args.reward_output,
                "dtype": "bfloat16" if bf16 else "float32"}  # fmt: skip


def tokenizer_path(name: str) -> str:
    """--tokenizer as load_tokenizer reads it ('tiny': the tiny GPT-2's folder, which names its text)."""
    if name == "tiny":
        from common.tiny import ensure_tiny_gpt2

        return str(ensure_tiny_gpt2())
    return name


def path_sha256(path: Path) -> str | None:
    """SHA-256 of a file, or of every file under a folder with its relative name; None for neither (a Hub
    dataset id, named in the run's record, which the key holds)."""
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{file.relative_to(path)}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


class ScoreCache:
    """Each model's scored rows (its results.csv row and its rows of every per-unit table), by key."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.used: set[str] = set()  # entry files this evaluation read or wrote
        self.written: list[Path] = []
        self.made = not folder.exists()
        self.scored: list[str] = []
        self.reused: list[str] = []

    def path(self, name: str, key: str) -> Path:
        return self.folder / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)[:100]}-{key[:32]}.json"

    def load(self, name: str, key: str) -> Evaluated | None:
        """The entry of `name` under `key`; None if there is none, or one that fails its checks (named in
        a warning, scored again and overwritten)."""
        path = self.path(name, key)
        if not path.is_file():
            return None
        try:
            checksum, _, body = path.read_text(encoding="utf-8").partition("\n")
            if sha256_text(body) != checksum:
                raise ValueError("its checksum does not match its content")
            entry = json.loads(body)
            if entry.get("key") != key or entry.get("model") != name:
                raise ValueError("it was stored under another key")
            result = Evaluated(entry["row"], *(from_columns(entry[name]) for name in TABLE_FIELDS))
        except (OSError, ValueError, KeyError, TypeError) as error:  # UnicodeDecodeError is a ValueError
            logger.warning("%s: cached scores ignored (%s); scored again", path, first_line(error))
            return None
        if result.samples is None:
            logger.warning("%s: cached scores ignored (no samples); scored again", path)
            return None
        self.used.add(path.name)
        self.reused.append(name)
        return result

    def store(self, name: str, key: str, result: Evaluated) -> None:
        path = self.path(name, key)
        entry = {"format": CACHE_FORMAT, "key": key, "model": name, "row": result.row,
                 **{field: to_columns(getattr(result, field)) for field in TABLE_FIELDS}}  # fmt: skip
        body = json.dumps(entry, default=plain, allow_nan=True)
        write_atomic(path, f"{sha256_text(body)}\n{body}")
        self.used.add(path.name)
        self.written.append(path)
        self.scored.append(name)

    def discard_new(self) -> None:
        """Remove what this evaluation wrote (it failed: it leaves nothing behind)."""
        for path in self.written:
            path.unlink(missing_ok=True)
        if self.made and self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()

    def keep_only_used(self) -> None:
        """Remove every entry this evaluation did not use (models no longer evaluated, old keys) and the
        temporary files of writes cut short: the cache holds the models of out_dir's tables."""
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if path.name not in self.used and path.is_file():
                path.unlink(missing_ok=True)


def to_columns(frame: pd.DataFrame | None) -> dict | None:
    """A table as JSON that gives it back exactly: each column's dtype and its values (floats to the bit)."""
    if frame is None:
        return None
    return {"columns": [str(c) for c in frame.columns], "dtypes": [str(d) for d in frame.dtypes],
            "values": [frame[c].tolist() for c in frame.columns]}  # fmt: skip


def from_columns(record: dict | None) -> pd.DataFrame | None:
    if record is None:
        return None
    columns = zip(record["columns"], record["dtypes"], record["values"], strict=True)
    return pd.DataFrame({name: pd.Series(values, dtype=dtype) for name, dtype, values in columns})


def load_tokenizer(name: str):
    """The tokenizer that the token-count metrics use ('tiny': the offline tiny GPT-2's)."""
    if name == "tiny":
        from common.tiny import ensure_tiny_gpt2

        name = str(ensure_tiny_gpt2())
    if Path(name).is_dir():  # a local folder's damaged file: named in one line
        check_model_folder(name)
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise InputError(f"--tokenizer {name}: cannot load ({first_line(error)})") from None


cli = exits_cleanly(main)

if __name__ == "__main__":
    cli()
