"""DPO training throughput: the project's default path vs the study's configuration, same process.

    poetry run python bench/train.py --quick                         # tiny GPT-2, CPU, ~1 minute
    poetry run python bench/train.py --steps 40 --repeats 3          # medians of 3 interleaved rounds
    python bench/train.py --model gpt2-124m --steps 60 --variants study,default,default_batch64

Variants (same pairs, loss, learning rate and seed):
  study            fp32 (no TF32), batch 8, TRL's unfused AdamW of the time, every sequence padded to
                   128 + 128 tokens (the study's prompt and completion limits), the reference model's
                   forward pass every step, GPT-2's own gelu_new, and log-probs from TRL 1's fused LM
                   head, which on the CPU projects every position onto the vocabulary as the study's
                   trainer did (TRL no longer has the study's full-logits path). On a GPU that head's
                   kernel already skips the prompt and padding, so `completion_logits` is a no-op there.
  +<lever>         the study with the levers in LEVERS switched on up to and including <lever>
                   (`--variants ablation` runs them all in turn).
  default          what `train_dpo/train.py` does now: every lever in LEVERS. The reference-cache fill
                   is timed apart and also shown spread over the 18 runs of a sweep that share it.
  default_grouped  the default with `--group_by_length true`: batches of pairs of similar length.
  default_batch64  the default at batch 64: how far the GPU goes when a run may use larger batches.
  compile          the default plus torch.compile (opt-in; recompiles for new sequence lengths).
  cpu_bf16         the default on the CPU with bf16 autocast (`--bf16 true --use_cpu true`), as a GPU
                   trains by default; it runs on the CPU even where a GPU is present.

Throughput is measured between the end of step `--warmup` and the last step, with the GPU synchronised
at both ends; tokens are the real (unpadded) prompt + completion tokens of both sequences of each pair.
Model FLOPs utilisation counts 6N FLOPs per trained token plus 2N per reference token (N = parameters
of the base model) against the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from transformers import TrainerCallback
from trl.trainer.dpo_trainer import DataCollatorForPreference

from bench.harness import (
    bf16_peak_flops,
    device_name,
    gpu_peak_gib,
    model_dir,
    peak_rss_gib,
    preference_pairs,
    reset_gpu_peak,
    scratch_folder,
    stops_cleanly,
    synchronize,
)
from common.cli import ArgParser, count_type
from train_dpo.train import build_trainer
from train_dpo.train import parse_args as parse_run_args
from train_dpo.trainer import FDPOTrainer

STUDY_PROMPT, STUDY_COMPLETION = 128, 128  # the study's prompt and completion limits: 256 in total

# The project's levers over the study's configuration, in the order the `+lever` variants add them.
LEVERS = (
    "dynamic_padding",  # each batch padded to its own longest prompt and completion, not to 128 + 128
    "ref_cache",  # reference log-probs read from the cache a sweep fills once, not a forward pass a step
    "completion_logits",  # on the CPU, only completion positions projected (`FDPOTrainer.row_logps`)
    "fused_gelu",  # PyTorch's one-kernel tanh-GELU for GPT-2's eight-op gelu_new (`common/kernels.py`)
    "gpu_precision",  # bf16 autocast and TF32 on a GPU; fused AdamW (on the CPU, the only change)
)
STUDY_FLAGS = ["--bf16", "false", "--tf32", "false", "--optim", "adamw_torch"]

VARIANTS = {
    "study": {"levers": set()},
    **{f"+{lever}": {"levers": set(LEVERS[: i + 1])} for i, lever in enumerate(LEVERS[:-1])},
    "default": {"levers": set(LEVERS)},
    "default_grouped": {"levers": set(LEVERS), "flags": ["--group_by_length", "true"]},
    "default_batch64": {"levers": set(LEVERS), "flags": ["--per_device_train_batch_size", "64"]},
    "compile": {"levers": set(LEVERS), "flags": ["--torch_compile", "true"]},
    "cpu_bf16": {"levers": set(LEVERS), "flags": ["--bf16", "true", "--use_cpu", "true"]},
}
ABLATION = ["study", *(f"+{lever}" for lever in LEVERS[:-1]), "default"]


class PadToMaximum(DataCollatorForPreference):
    """The study's padding: every sequence as wide as a 128-token prompt plus a 128-token completion."""

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        for key, value in (("input_ids", self.pad_token_id), ("attention_mask", 0), ("completion_mask", 0)):
            extra = max(0, STUDY_PROMPT + STUDY_COMPLETION - batch[key].shape[1])
            batch[key] = F.pad(batch[key], (0, extra), value=value)
        return batch


class TokenCounter:
    """Wraps a collator and counts the real tokens the policy sees: prompt + chosen and prompt + rejected
    (the collator has cut each to max_length)."""

    def __init__(self, collator):
        self.collator, self.tokens = collator, 0

    def __call__(self, examples):
        batch = self.collator(examples)
        self.tokens += int(batch["attention_mask"].sum())
        return batch


class StepClock(TrainerCallback):
    """Time and token count at the end of step `warmup` and of the last step."""

    def __init__(self, counter: TokenCounter, warmup: int):
        self.counter, self.warmup, self.marks = counter, warmup, {}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in (self.warmup, state.max_steps):
            synchronize()
            self.marks[state.global_step] = (time.perf_counter(), self.counter.tokens)


def run_variant(name: str, common: list[str], scratch: Path, warmup: int) -> dict:
    levers = VARIANTS[name]["levers"]
    # A cache per variant, filled by its first round and timed: each fills the way its levers compute.
    cache = ["--ref_logps_cache", str(scratch / "ref_cache" / name)] if "ref_cache" in levers else []
    precision = [] if "gpu_precision" in levers else STUDY_FLAGS
    flags = [
        *common,
        *cache,
        *precision,
        *VARIANTS[name].get("flags", []),
        "--output_dir",
        str(scratch / name),
    ]
    fill = {"s": 0.0}
    precompute = FDPOTrainer._precompute_ref_logps

    def timed_precompute(self, *args, **kwargs):  # TRL fills (or we load) the cache while building
        start = time.perf_counter()
        try:
            return precompute(self, *args, **kwargs)
        finally:
            synchronize()
            fill["s"] += time.perf_counter() - start

    with contextlib.ExitStack() as off:  # levers left off are swapped back to the study's way
        if "fused_gelu" not in levers:
            off.enter_context(mock.patch("train_dpo.train.fuse_gelu", lambda model: model))
        off.enter_context(mock.patch.object(FDPOTrainer, "_precompute_ref_logps", timed_precompute))
        reset_gpu_peak()
        trainer = build_trainer(*parse_run_args(flags))
    if "dynamic_padding" not in levers:
        trainer.data_collator = PadToMaximum(  # TRL 1 truncates in its collator: keep its cut
            pad_token_id=trainer.processing_class.pad_token_id,
            max_length=trainer.args.max_length,
            truncation_mode=trainer.args.truncation_mode,
        )
    trainer.completion_only_logits = "completion_logits" in levers
    cache_s = fill["s"] if "ref_cache" in levers else None
    return {"variant": name, **measure(trainer, warmup, cache_s)}


def measure(trainer, warmup: int, cache_s: float | None) -> dict:
    """Train, timing the steps after `warmup`; `cache_s`: the reference-cache fill, when timed."""
    training_args = trainer.args
    counter = TokenCounter(trainer.data_collator)
    trainer.data_collator = counter
    clock = StepClock(counter, warmup)
    trainer.add_callback(clock)
    trainer.train()
    (t0, tokens0), (t1, tokens1) = clock.marks[warmup], clock.marks[training_args.max_steps]
    seconds, tokens = t1 - t0, tokens1 - tokens0
    steps = training_args.max_steps - warmup
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    n_params = sum(p.numel() for p in base.parameters()) - sum(
        p.numel() for n, p in base.named_parameters() if "lora_" in n
    )
    reference_tokens = 0 if training_args.precompute_ref_log_probs else tokens
    flops = 6 * n_params * tokens + 2 * n_params * reference_tokens
    peak = bf16_peak_flops()
    result = {
        "batch": training_args.per_device_train_batch_size,
        "bf16": bool(training_args.bf16),
        "pairs_per_s": round(steps * training_args.per_device_train_batch_size / seconds, 1),
        "tokens_per_s": round(tokens / seconds),
        "model_tflops": round(flops / seconds / 1e12, 2),
        "mfu": round(flops / seconds / peak, 4) if peak else None,
        "ref_cache_s": round(cache_s, 2) if cache_s is not None else None,
        "gpu_peak_gib": gpu_peak_gib(),
        "train_pairs": len(trainer.train_dataset),
        "n_params": n_params,
    }
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, gpt2-124m (random weights), or a dir / Hub id")
    parser.add_argument("--steps", type=count_type(1), default=40, help="optimizer steps per variant")
    parser.add_argument("--warmup", type=count_type(1), default=5, help="steps left out of the timing")
    variants = f"comma-separated: {', '.join(VARIANTS)}; or 'ablation': each lever added in turn"
    parser.add_argument("--variants", default="study,default", help=variants)
    parser.add_argument(
        "--repeats", type=count_type(1), default=1, help="rounds of all variants, interleaved; medians"
    )
    parser.add_argument("--quick", action="store_true", help="15 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 15
    # `ablation` stands for its variants, wherever it is in the list (`ablation,default_batch64`).
    listed = [
        name for item in args.variants.split(",") for name in (ABLATION if item == "ablation" else [item])
    ]
    args.names = list(dict.fromkeys(listed))
    if unknown := set(args.names) - set(VARIANTS):
        parser.error(f"argument --variants: unknown {', '.join(sorted(unknown))}")
    if args.warmup >= args.steps:
        parser.error(f"argument --warmup: must be below --steps ({args.steps}), got {args.warmup}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    steps, names = args.steps, args.names
    runs = []
    with scratch_folder(prefix="bench-train-") as scratch:
        pairs = 64 * steps if "default_batch64" in names else 8 * steps
        model = model_dir(args.model, scratch)
        common = ["--model", model, "--dataset", preference_pairs(), "--max_steps", str(steps),
                  "--save_strategy", "no", "--logging_steps", "10", "--max_length", "256",
                  "--per_device_train_batch_size", "8",
                  "--learning_rate", "1e-4", "--max_train_pairs", str(pairs), "--max_eval_pairs", "8",
                  "--seed", "0"]  # fmt: skip
        for repeat in range(args.repeats):  # interleaved: a slow spell of a shared machine hits every variant
            for name in names:
                runs.append({**run_variant(name, common, scratch, args.warmup), "repeat": repeat})
    study = {run["repeat"]: run for run in runs if run["variant"] == "study"}
    for run in runs:
        if study:  # against the study's run of the same round
            run["speedup_vs_study"] = round(run["tokens_per_s"] / study[run["repeat"]]["tokens_per_s"], 2)
        print(json.dumps(run))
    if not study or "default" not in names:
        return
    default = [run for run in runs if run["variant"] == "default"]
    speedups = [run["speedup_vs_study"] for run in default]
    # The default's cache fill (its first round), spread over the 18 runs of a sweep that share it.
    fill_s = max(run["ref_cache_s"] for run in default) / default[0]["train_pairs"]  # per pair
    study_s = 1 / statistics.median(run["pairs_per_s"] for run in study.values())
    default_s = 1 / statistics.median(run["pairs_per_s"] for run in default)
    print(json.dumps({
        "model": args.model, "device": device_name(), "steps": steps, "repeats": args.repeats,
        "speedup": round(statistics.median(speedups), 2),
        "speedup_min": min(speedups), "speedup_max": max(speedups),
        "speedup_with_fill_over_18_runs": round(study_s / (default_s + fill_s / 18), 2),
        "speedup_with_fill_in_one_run": round(study_s / (default_s + fill_s), 2),
        "peak_rss_gib": peak_rss_gib(),
    }))  # fmt: skip


cli = stops_cleanly(main)

if __name__ == "__main__":
    cli()
