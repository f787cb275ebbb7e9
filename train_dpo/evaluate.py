"""Score generation CSVs into one table: reward, diversity, KL to the reference, calibration.

    poetry run python train_dpo/evaluate.py                       # every CSV in results/generations
    poetry run python train_dpo/evaluate.py --generations study_csvs/*.csv --metrics reward unigram_entropy
    poetry run python train_dpo/evaluate.py --reward_model vader --tokenizer tiny   # offline

Per model: per CSV (the study's format: prompt, answers = prompt + continuation), or per value of a
CSV's `model` column (the study's all_score.csv; `--group_by`):
    reward             mean reward of the continuation (same reward interface as the dataset)
    predictive_entropy the policy's mean per-token entropy on its own samples (the paper's diversity)
    unigram_entropy    entropy of the unigram distribution over all generations (the study's metric)
    distinct           distinct-1 / distinct-2 over all generations
    length             mean continuation length in tokens
    kl                 sequence-level KL(pi || pi_ref), Monte Carlo over the policy's samples, and the
                       run's own f-divergence D_f(pi || pi_ref) = E_pi[f(u) / u]
    preference         on the run's held-out pairs: accuracy and ECE of sigma(beta (f'(u_w) - f'(u_l)))
The policy-based metrics need the model, found in the `<tag>.json` that generate.py writes beside the
CSV; the pair metrics need a training run directory. Every mean comes with a 95% bootstrap interval.
Writes <out_dir>/results.csv (one row per model), samples.csv (one row per completion), summary.md.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd
import torch
from transformers import AutoTokenizer
from trl import TrlParser

import config
from cli import parse_with_presets
from dataset.atomic import write_atomic
from dataset.pairing import is_prefixed, strip_prompt
from dataset.readers import read_text_csv
from dataset.rewards import load_reward
from errors import InputError, exits_cleanly, first_line
from train_dpo.data import load_preference_dataset
from train_dpo.divergences import get_divergence
from train_dpo.metrics import (
    distinct_n,
    expected_calibration_error,
    mean_ci,
    preference_correct,
    preference_probability,
    unigram_entropy,
)
from train_dpo.models import Policy, completion_stats, load_policy

logger = logging.getLogger("evaluate")

METRICS = ("reward", "predictive_entropy", "unigram_entropy", "distinct", "length", "kl", "preference")
TOKEN_METRICS = {"unigram_entropy", "distinct", "length"}  # counted in --tokenizer's tokens
POLICY_METRICS = {"predictive_entropy", "kl", "preference"}  # need the model that wrote the CSV


@dataclass
class EvaluateArguments:
    generations: list[str] = field(
        default_factory=lambda: [str(config.RESULTS_DIR / "generations")],
        metadata={"help": "Generation CSVs, or folders of them."},
    )
    metrics: list[str] = field(
        default_factory=lambda: list(METRICS), metadata={"help": f"Subset of {METRICS}."}
    )
    reward_model: str = field(
        default=config.REWARD_MODEL, metadata={"help": "Classifier id/dir, or 'vader'."}
    )
    reward_output: str = field(default="logit", metadata={"help": "logit or prob (classifier rewards)."})
    reward_dtype: str = field(
        default="auto",
        metadata={
            "help": "auto (bfloat16 on GPUs and CPUs that multiply it natively, float32 elsewhere; mean "
            "rewards move by bf16 rounding only, BENCHMARKS.md), float32 or bfloat16."
        },
    )
    group_by: str | None = field(
        default="model",
        metadata={
            "help": "A CSV column whose values name different models (the study's all_score.csv): each is "
            "evaluated on its own. Ignored for CSVs without it; 'none' pools every row of a CSV."
        },
    )
    tokenizer: str = field(
        default=config.SFT_MODEL,
        metadata={"help": "Tokenizer of the text metrics, shared by all models ('tiny' ok)."},
    )
    max_test_pairs: int | None = field(
        default=None, metadata={"help": "Held-out pairs for the preference metrics."}
    )
    batch_size: int = field(default=16, metadata={"help": "Sequences per forward pass."})
    out_dir: str = field(default=str(config.RESULTS_DIR / "eval"), metadata={"help": "Where the tables go."})
    device: str | None = field(default=None, metadata={"help": "cpu / cuda (default: cuda when available)."})

    def __post_init__(self):
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(
                f"--metrics: unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}"
            )


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


def run_info(model: str | None) -> dict:
    """Loss, divergence, beta, alpha and dataset of a training run (empty for anything else)."""
    path = Path(model) / "run_config.json" if model else None
    if path is None or not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    training, script = saved["training"], saved["script"]
    loss = training["loss_type"] if isinstance(training["loss_type"], str) else training["loss_type"][0]
    return {"loss": loss, "divergence": training["divergence"], "beta": training["beta"],
            "alpha": training["alpha"],
            "dataset": script["dataset"], "test_size": script["test_size"], "seed": training["seed"],
            "max_length": training["max_length"]}  # fmt: skip


def preference_metrics(policy: Policy, info: dict, args: EvaluateArguments) -> dict[str, list[float]]:
    """Per held-out pair: correct (1 / 0.5 / 0) and the implied probability that chosen is preferred."""
    data = load_preference_dataset(info["dataset"], info["test_size"], info["seed"])
    if "test" not in data:
        return {}
    test = data["test"]
    if args.max_test_pairs is not None:
        test = test.select(range(min(args.max_test_pairs, len(test))))
    prompts, chosen, rejected = list(test["prompt"]), list(test["chosen"]), list(test["rejected"])
    logratio = {}
    for side, texts in (("chosen", chosen), ("rejected", rejected)):
        stats = completion_stats(
            policy.model, policy.tokenizer, prompts, texts, args.batch_size, info["max_length"]
        )
        with policy.reference():
            ref = completion_stats(
                policy.model, policy.tokenizer, prompts, texts, args.batch_size, info["max_length"]
            )
        stats, ref = stats["logps"], ref["logps"]
        logratio[side] = stats - ref
    f_prime = get_divergence(info["divergence"], info["alpha"]).f_prime
    prob = preference_probability(
        f_prime(logratio["chosen"]).numpy(), f_prime(logratio["rejected"]).numpy(), info["beta"]
    )
    return {"pref_correct": preference_correct(prob).tolist(), "pref_prob": prob.tolist()}


def model_tables(path: Path, group_by: str | None) -> list[tuple[str, str | None, pd.DataFrame]]:
    """(name, model that wrote it, rows) per model in one CSV.

    A CSV from generate.py holds one model, named in the `<tag>.json` beside it. The study's CSVs hold
    several, told apart by a `model` column: pooling them would mix models in every mean.
    """
    frame = read_generations(path)
    meta_path = path.with_suffix(".json")
    model = json.loads(meta_path.read_text()).get("model") if meta_path.is_file() else None
    if not group_by or group_by == "none" or group_by not in frame.columns:
        return [(path.stem, model, frame)]
    return [
        (str(name), None, rows.reset_index(drop=True)) for name, rows in frame.groupby(group_by, sort=False)
    ]


def evaluate_table(
    name: str, model: str | None, frame: pd.DataFrame, reward, tokenizer, args: EvaluateArguments
) -> tuple[dict, pd.DataFrame]:
    """One model's row of the results table, and its per-completion samples."""
    info = run_info(model)
    pairs = list(zip(frame["prompt"], frame["answers"], strict=True))
    continuations = [strip_prompt(p, a) for p, a in pairs]
    samples = pd.DataFrame({"model": name, "prompt": frame["prompt"], "answer": frame["answers"]})
    row = {"model": name, "source": model or name, "n": len(frame),
           "not_prefixed": sum(not is_prefixed(p, a) for p, a in pairs),
           **{k: info.get(k) for k in ("loss", "divergence", "beta", "alpha")}}  # fmt: skip
    token_lists = tokenizer(continuations, add_special_tokens=False).input_ids if tokenizer else None

    if "reward" in args.metrics:
        samples["reward"] = reward.score(continuations)
        row["reward_model"] = reward.name  # with its precision, e.g. `...:logit:bfloat16`
    if "length" in args.metrics:
        samples["length"] = [len(tokens) for tokens in token_lists]
    if "unigram_entropy" in args.metrics:
        row["unigram_entropy"] = unigram_entropy(token_lists)
    if "distinct" in args.metrics:
        row["distinct_1"], row["distinct_2"] = distinct_n(token_lists, 1), distinct_n(token_lists, 2)

    needs_policy = POLICY_METRICS & set(args.metrics)
    if needs_policy and not model:
        skipped(name, needs_policy, "no model named beside its CSV (generate.py writes one in <tag>.json)")
    if "preference" in args.metrics and model and not info:
        skipped(name, {"preference"}, "its model is not a training run (no run_config.json)")
    if needs_policy and model:
        policy = load_policy(model, args.device)
        prompts = list(frame["prompt"])
        stats = completion_stats(policy.model, policy.tokenizer, prompts, continuations, args.batch_size)
        if "predictive_entropy" in args.metrics:
            samples["predictive_entropy"] = (stats["entropy"] / stats["tokens"].clamp(min=1)).numpy()
        if "kl" in args.metrics:
            if policy.is_adapter:
                with policy.reference():
                    ref = completion_stats(
                        policy.model, policy.tokenizer, prompts, continuations, args.batch_size
                    )
                logratio = stats["logps"] - ref["logps"]
            else:  # a full model is its own reference (the SFT baseline)
                logratio = torch.zeros_like(stats["logps"])
            samples["logratio"] = logratio.numpy()
            if info:
                divergence = get_divergence(info["divergence"], info["alpha"])
                u = logratio.clamp(-700, 700).exp()
                samples["f_over_u"] = (divergence.f(u) / u).numpy()
        if "preference" in args.metrics and info:
            pairs = preference_metrics(policy, info, args)
            if not pairs:
                skipped(name, {"preference"}, f"its run's dataset {info['dataset']} has no test split")
            if pairs:
                row["pref_accuracy"], row["pref_accuracy_lo"], row["pref_accuracy_hi"] = mean_ci(
                    pairs["pref_correct"]
                )
                row["ece"] = expected_calibration_error(pairs["pref_prob"])
                row["test_pairs"] = len(pairs["pref_prob"])
        del policy

    named = {"reward": "reward", "predictive_entropy": "predictive_entropy", "length": "length",
             "logratio": "kl", "f_over_u": "f_divergence"}  # fmt: skip
    for column, name in named.items():
        if column in samples:
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = mean_ci(samples[column].to_numpy(dtype=float))
    return row, samples


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
                cells.append(
                    f"{row[c]:.3f} [{row[f'{c}_lo']:.3f}, {row[f'{c}_hi']:.3f}]" if pd.notna(row[c]) else ""
                )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = parse_with_presets(TrlParser(EvaluateArguments), {}, argv)
    files = csv_files(args.generations)
    tables = [table for path in files for table in model_tables(path, args.group_by)]  # bad files fail first
    tokenizer = (
        load_tokenizer(args.tokenizer) if TOKEN_METRICS & set(args.metrics) else None
    )  # the cheap load
    reward = (
        load_reward(args.reward_model, output=args.reward_output, device=args.device, dtype=args.reward_dtype)
        if "reward" in args.metrics
        else None
    )

    rows, all_samples = [], []
    for name, model, frame in tables:
        row, samples = evaluate_table(name, model, frame, reward, tokenizer, args)
        rows.append(row)
        all_samples.append(samples)
        logger.info("%s: %s", name, {k: v for k, v in row.items() if isinstance(v, float)})
    table = pd.DataFrame(rows)
    out = Path(args.out_dir)
    write_atomic(out / "results.csv", table.to_csv(index=False))
    write_atomic(out / "samples.csv", pd.concat(all_samples).to_csv(index=False))
    write_atomic(out / "summary.md", markdown_summary(table))
    not_prefixed = int(table["not_prefixed"].sum())
    if not_prefixed:
        logger.warning(
            "%d answers did not start with their prompt; they were scored as they are", not_prefixed
        )
    logger.info("wrote %s", out / "results.csv")


def load_tokenizer(name: str):
    """The tokenizer that the token-count metrics use ('tiny': the offline tiny GPT-2's)."""
    if name == "tiny":
        from train_dpo.tiny import ensure_tiny_gpt2

        name = str(ensure_tiny_gpt2())
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise InputError(f"--tokenizer {name}: cannot load ({first_line(error)})") from None


cli = exits_cleanly(main)

if __name__ == "__main__":
    cli()
