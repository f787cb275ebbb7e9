"""DPO training throughput: the project's default path vs the study's configuration, same run.

    poetry run python bench/train.py --quick          # tiny GPT-2, CPU, ~2 minutes
    poetry run python bench/train.py --model gpt2-124m --steps 50 --device cuda

Study configuration: fp32, batch 8, max length 256 (prompt 128), the reference model's forward pass
every step, every sequence padded to the maximum length (what the TRL of its time did).
Project default: the same loss, optimiser and batches, but padded per batch (TRL 0.28's collator) and
the reference log-probs read from the shared cache that a sweep fills once for all of its runs. The
cost of filling it is printed too, and also shown spread over the study's 18 runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F
from trl.trainer.dpo_trainer import DataCollatorForPreference

from train_dpo.tiny import ensure_tiny_gpt2
from train_dpo.train import build_trainer, parse_args

STUDY_PROMPT, STUDY_COMPLETION = 128, 128  # the study's max_prompt_length; max_length 256 in total


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


def timed_train(flags: list[str], pad_to_maximum: bool) -> tuple[float, int, float]:
    """(seconds of train(), pairs trained, seconds spent precomputing reference log-probs)."""
    script_args, training_args = parse_args(flags)
    trainer = build_trainer(script_args, training_args)
    if pad_to_maximum:
        trainer.data_collator = PadToMaximum(pad_token_id=trainer.processing_class.pad_token_id)
    start = time.perf_counter()
    trainer.get_train_dataloader()  # precomputes (or loads) reference log-probs when enabled
    precompute = time.perf_counter() - start
    start = time.perf_counter()
    trainer.train()
    pairs = trainer.state.global_step * training_args.per_device_train_batch_size
    return time.perf_counter() - start, pairs, precompute


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, or a model dir / Hub id")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="15 steps")
    args = parser.parse_args()
    steps = 15 if args.quick else args.steps
    model = str(ensure_tiny_gpt2()) if args.model == "tiny" else args.model
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--model", model, "--max_steps", str(steps), "--save_strategy", "no",
                  "--logging_steps", "99",
                  "--max_length", "256", "--per_device_train_batch_size", "8", "--learning_rate", "1e-4",
                  "--max_train_pairs", str(8 * steps), "--max_eval_pairs", "8", "--seed", "0"]  # fmt: skip
        study, pairs, _ = timed_train([*common, "--output_dir", f"{tmp}/study"], pad_to_maximum=True)
        cache = ["--ref_logps_cache", f"{tmp}/ref_cache"]
        _, _, fill = timed_train([*common, *cache, "--output_dir", f"{tmp}/fill", "--max_steps", "1"], False)
        ours, _, load = timed_train([*common, *cache, "--output_dir", f"{tmp}/ours"], pad_to_maximum=False)
    print(json.dumps({
        "model": args.model, "device": "cuda" if torch.cuda.is_available() else "cpu", "steps": steps,
        "study_pairs_per_s": round(pairs / study, 2), "project_pairs_per_s": round(pairs / ours, 2),
        "speedup": round(study / ours, 2), "ref_cache_fill_s": round(fill, 2),
        "ref_cache_load_s": round(load, 2),
        "speedup_with_fill_over_18_runs": round(study / (ours + fill / 18), 2),
        "speedup_with_fill_in_one_run": round(study / (ours + fill), 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
