"""DPO training throughput: the project's default path vs the study's configuration, same process.

    poetry run python bench/train.py --quick                         # tiny GPT-2, CPU, ~2 minutes
    python bench/train.py --model gpt2-124m --steps 60 --variants study,default,default_batch64

Variants (same pairs, loss, learning rate and seed):
  study            fp32 (no TF32), batch 8, TRL's unfused AdamW of the time, every prompt padded to 128
                   tokens and every completion to 128, the reference model's forward pass every step,
                   TRL's log-probs (every position projected on the vocabulary), GPT-2's own gelu_new.
  default          what `train_dpo/train.py` does now: per-batch padding, reference log-probs read from
                   the shared cache a sweep fills once, log-probs projected on completion tokens only,
                   PyTorch's fused tanh-GELU, and on a GPU bf16 autocast, TF32, fused AdamW and SDPA
                   attention. The cache fill is timed apart and also shown spread over 18 runs.
  default_grouped  the default with `--group_by_length true`: batches of pairs of similar length.
  default_batch64  the default at batch 64: how far the GPU goes when a run may use larger batches.
  compile          the default plus torch.compile (opt-in; recompiles for new sequence lengths).

Throughput is measured between the end of step `--warmup` and the last step, with the GPU synchronised
at both ends; tokens are the real (unpadded) prompt + completion tokens of both sequences of each pair.
Model FLOPs utilisation counts 6N FLOPs per trained token plus 2N per reference token (N = parameters
of the base model) against the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F
from transformers import TrainerCallback
from trl.trainer.dpo_trainer import DataCollatorForPreference

from bench.common import (
    bf16_peak_flops,
    device_name,
    gpu_peak_gib,
    model_dir,
    peak_rss_gib,
    reset_gpu_peak,
    synchronize,
)
from train_dpo.train import build_trainer, parse_args

STUDY_PROMPT, STUDY_COMPLETION = 128, 128  # the study's max_prompt_length; max_length 256 in total

VARIANTS = {
    "study": {
        "flags": ["--bf16", "false", "--tf32", "false", "--optim", "adamw_torch"],
        "pad_to_max": True,
        "as_study": True,
    },
    "default_grouped": {"flags": ["--group_by_length", "true"], "cache": True},
    "default": {"flags": [], "cache": True},
    "default_batch64": {"flags": ["--per_device_train_batch_size", "64"], "cache": True},
    "compile": {"flags": ["--torch_compile", "true"], "cache": True},
}


class PadToMaximum(DataCollatorForPreference):
    """The study's padding: every prompt to 128 tokens and every completion to 128, whatever the batch."""

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        for key, width, left in (("prompt", STUDY_PROMPT, True), ("chosen", STUDY_COMPLETION, False),
                                 ("rejected", STUDY_COMPLETION, False)):  # fmt: skip
            for suffix, value in (("_input_ids", self.pad_token_id), ("_attention_mask", 0)):
                tensor = batch[key + suffix]
                extra = max(0, width - tensor.shape[1])
                batch[key + suffix] = F.pad(tensor, (extra, 0) if left else (0, extra), value=value)
        return batch


class TokenCounter:
    """Wraps a collator and counts the real tokens the policy sees: prompt + chosen and prompt + rejected."""

    def __init__(self, collator, max_length: int):
        self.collator, self.max_length, self.tokens = collator, max_length, 0

    def __call__(self, examples):
        batch = self.collator(examples)
        prompt = batch["prompt_attention_mask"].sum(1)
        for completion in ("chosen", "rejected"):
            lengths = prompt + batch[f"{completion}_attention_mask"].sum(1)
            self.tokens += int(lengths.clamp(max=self.max_length).sum())
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
    variant = VARIANTS[name]
    cache = ["--ref_logps_cache", str(scratch / "ref_cache")] if variant.get("cache") else []
    flags = [*common, *cache, *variant["flags"], "--output_dir", str(scratch / name)]
    script_args, training_args = parse_args(flags)
    if variant.get("as_study"):
        with mock.patch("train_dpo.train.fuse_gelu", lambda model: model):  # GPT-2's own gelu_new
            trainer = build_trainer(script_args, training_args)
    else:
        trainer = build_trainer(script_args, training_args)
    collator = trainer.data_collator
    if variant.get("pad_to_max"):
        collator = PadToMaximum(pad_token_id=trainer.processing_class.pad_token_id)
    if variant.get("as_study"):
        trainer.completion_only_logits = False  # TRL's forward: every position projected on the vocabulary
    counter = TokenCounter(collator, training_args.max_length)
    trainer.data_collator = counter
    clock = StepClock(counter, warmup)
    trainer.add_callback(clock)
    reset_gpu_peak()
    start = time.perf_counter()
    trainer.get_train_dataloader()  # fills (or loads) the shared reference cache when enabled
    synchronize()
    cache_s = time.perf_counter() - start
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
        "variant": name,
        "batch": training_args.per_device_train_batch_size,
        "bf16": bool(training_args.bf16),
        "pairs_per_s": round(steps * training_args.per_device_train_batch_size / seconds, 1),
        "tokens_per_s": round(tokens / seconds),
        "model_tflops": round(flops / seconds / 1e12, 2),
        "mfu": round(flops / seconds / peak, 4) if peak else None,
        "ref_cache_s": round(cache_s, 2) if variant.get("cache") else None,
        "gpu_peak_gib": gpu_peak_gib(),
        "train_pairs": len(trainer.train_dataset),
        "n_params": n_params,
    }
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, gpt2-124m (random weights), or a dir / Hub id")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--variants", default="study,default", help=f"comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--quick", action="store_true", help="15 steps")
    args = parser.parse_args()
    steps = 15 if args.quick else args.steps
    names = args.variants.split(",")
    if unknown := set(names) - set(VARIANTS):
        parser.error(f"--variants: unknown {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        pairs = 64 * steps if "default_batch64" in names else 8 * steps
        model = model_dir(args.model, scratch)
        common = ["--model", model, "--max_steps", str(steps), "--save_strategy", "no",
                  "--logging_steps", "10", "--max_length", "256", "--per_device_train_batch_size", "8",
                  "--learning_rate", "1e-4", "--max_train_pairs", str(pairs), "--max_eval_pairs", "8",
                  "--seed", "0"]  # fmt: skip
        results = [run_variant(name, common, scratch, args.warmup) for name in names]
    study = next((r for r in results if r["variant"] == "study"), None)
    for result in results:
        if study:
            result["speedup_vs_study"] = round(result["tokens_per_s"] / study["tokens_per_s"], 2)
        print(json.dumps(result))
    default = next((r for r in results if r["variant"] == "default"), None)
    if study and default:
        # The cache fill, spread over the 18 runs of a sweep that share it.
        study_s, default_s = 1 / study["pairs_per_s"], 1 / default["pairs_per_s"]  # per pair
        fill = max(r["ref_cache_s"] or 0 for r in results)  # timed by whichever variant filled it
        fill_s = fill / default["train_pairs"]
        print(json.dumps({
            "model": args.model, "device": device_name(), "steps": steps,
            "speedup": default["speedup_vs_study"],
            "speedup_with_fill_over_18_runs": round(study_s / (default_s + fill_s / 18), 2),
            "speedup_with_fill_in_one_run": round(study_s / (default_s + fill_s), 2),
            "peak_rss_gib": peak_rss_gib(),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
