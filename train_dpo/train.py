r"""Train one f-DPO run: a GPT-2 policy on IMDb preference pairs under a chosen f-divergence.

    poetry run python dataset/main.py --preset tiny && \
    poetry run python train_dpo/train.py --preset tiny                      # offline, CPU, < 1 minute
    poetry run python dataset/main.py && \
    poetry run python train_dpo/train.py --divergence jsd --beta 0.1 --learning_rate 1e-5
    poetry run python train_dpo/train.py --divergence alpha --alpha 0.3 --beta 1 --dataset data/imdb_pairs
    poetry run python train_dpo/train.py --config recipes/my_run.yaml --beta 0.5   # flags override YAML
    poetry run accelerate launch train_dpo/train.py ...                     # several processes / GPUs

Precedence of settings: command-line flag > YAML (`--config`) > preset (`--preset`) > defaults.
The run lands in results/<run_name>/ (e.g. gpt_imdb_jsd_beta1e-1) with its config saved first.
"""

from __future__ import annotations

import common.help  # noqa: F401  (first: answers --help before the heavy imports below)

# isort: split
import contextlib
import json
import logging
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import DatasetDict
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

import config
from common.atomic import check_replaceable, write_atomic
from common.cli import check_field_types, parse_with_presets, presets
from common.errors import InputError, check_model_source, exits_cleanly, writing
from common.kernels import fuse_gelu
from common.lock import output_lock
from common.tiny import ensure_tiny_gpt2
from common.weights import LOAD_ERRORS, load_error, load_kwargs
from train_dpo.data import load_preference_dataset
from train_dpo.fingerprint import RUN_CONFIG, discard_stale_checkpoints, run_fingerprint
from train_dpo.length_buckets import check_buckets
from train_dpo.lora_stack import seed_peft_lora
from train_dpo.trainer import FDPOConfig, FDPOTrainer

logger = logging.getLogger("train_dpo")


@dataclass
class PolicyArguments:
    """The policy, the pairs it is trained from and its LoRA adapter: what a DPO run (ScriptArguments) and an
    online-RL run (train_dpo/rloo.py) share."""

    preset: str | None = field(
        default=None,
        metadata={"help": "Defaults from recipes/<preset>/train.yaml.", "choices": presets("train")},
    )
    model: str = field(
        default=config.SFT_MODEL,
        metadata={"help": "SFT policy (also the reference): Hub id, local dir, or 'tiny' (built offline)."},
    )
    dataset: str = field(
        default=str(config.DATASET_DIR / "dataset" / "hf"),
        metadata={
            "help": "Preference pairs: save_to_disk dir, .jsonl/.json/.parquet, the study's scored JSON "
            "(paired on the fly), or a Hub id. Default: what dataset/main.py builds by default."
        },
    )
    test_size: float = field(
        default=0.2, metadata={"help": "Held-out prompt share when pairing a scored file."}
    )
    max_prompt_tokens: int = field(
        default=config.MAX_PROMPT_LENGTH, metadata={"help": "Drop longer prompts."}
    )
    lora_r: int = field(default=config.LORA_R, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=config.LORA_ALPHA, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(config.LORA_TARGET_MODULES), metadata={"help": "Modules given adapters."}
    )
    resume: bool = field(default=False, metadata={"help": "Continue from the last checkpoint in output_dir."})

    def __post_init__(self):
        check_field_types(self)  # a YAML value reaches the dataclass unconverted
        if not 0.0 <= self.test_size < 1.0:
            raise ValueError(f"--test_size must lie in [0, 1), got {self.test_size}")
        for name in ("max_prompt_tokens", "lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")

    def lora_config(self) -> LoraConfig:
        """The LoRA adapter these flags ask for, on GPT-2's transposed (Conv1D) weights."""
        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=self.lora_target_modules, fan_in_fan_out=True,
                          task_type="CAUSAL_LM")  # fmt: skip


@dataclass
class ScriptArguments(PolicyArguments):
    """What to train on and how the model is wrapped; the optimisation lives in FDPOConfig."""

    max_train_pairs: int | None = field(
        default=None, metadata={"help": "Use at most this many training pairs."}
    )
    max_eval_pairs: int | None = field(
        default=None, metadata={"help": "Evaluate on at most this many pairs."}
    )
    use_peft: bool = field(default=True, metadata={"help": "Train a LoRA adapter (False: full fine-tuning)."})

    def __post_init__(self):
        super().__post_init__()
        for name in ("max_train_pairs", "max_eval_pairs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1, got {value}")


# TRL 0.28 flags that TRL 1 removed, and what does their job now (else the line would only say "not used").
REMOVED_FLAGS = {
    "max_prompt_length": "longer prompts are dropped with --max_prompt_tokens",
    "max_completion_length": "prompt + answer are cut to --max_length",
    "padding_value": "the tokenizer's pad token pads",
    "rpo_alpha": "add 'sft' to --loss_type, weighted with --loss_weights",
}


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, FDPOConfig]:
    """CLI flags, YAML and preset merged into the two configs; bad values raise InputError."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for flag, instead in REMOVED_FLAGS.items():
        if any(arg == f"--{flag}" or arg.startswith(f"--{flag}=") for arg in argv):
            raise InputError(f"--{flag} was removed in TRL 1: {instead}")
    script_args, training_args = parse_with_presets((ScriptArguments, FDPOConfig), "train", argv)
    return script_args, training_args


def load_model_and_tokenizer(name: str):
    """Policy (fp32, as the study) and its tokenizer; `tiny` builds the offline tiny GPT-2."""
    path = str(ensure_tiny_gpt2()) if name == "tiny" else name
    check_model_source(path, "--model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **load_kwargs())
    except LOAD_ERRORS as error:
        raise load_error(f"--model {path}", error) from None
    if tokenizer.pad_token is None:  # GPT-2 ships without one; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    return fuse_gelu(model), tokenizer


def prepare_splits(data: DatasetDict, tokenizer, args: ScriptArguments, training: FDPOConfig) -> DatasetDict:
    """Drop over-long prompts (the study's 128-token cap), subsample as asked, and check what is left.

    Raises:
        InputError: every training pair would teach nothing (see `check_pairs_teach`).
    """
    out = {}
    for split, table in data.items():
        keep = [len(ids) <= args.max_prompt_tokens for ids in tokenizer(list(table["prompt"]))["input_ids"]]
        if not all(keep):
            logger.info(
                "%s: dropping %d pairs with prompts > %d tokens",
                split,
                keep.count(False),
                args.max_prompt_tokens,
            )
            table = table.select([i for i, k in enumerate(keep) if k])
        limit = args.max_train_pairs if split == "train" else args.max_eval_pairs
        if limit is not None and len(table) > limit:
            table = table.shuffle(seed=training.seed).select(range(limit))
        out[split] = table.select_columns(["prompt", "chosen", "rejected"])
    check_pairs_teach(out["train"], tokenizer, training)
    return DatasetDict(out)


def check_pairs_teach(pairs, tokenizer, training: FDPOConfig) -> None:
    """Refuse training pairs that all teach nothing, and warn, with the count, when some do not.

    A pair whose chosen and rejected answers are equal has a zero margin whatever the weights (loss ln 2,
    no gradient). After truncation to `max_length`, `keep_start` (TRL's default) can leave an answer no
    token, and TRL then drops the pair; `keep_end` can cut the whole prompt away, so the answer is
    learnt without what it answers.
    """
    problems = []
    same = sum(c == r for c, r in zip(pairs["chosen"], pairs["rejected"], strict=True))
    problems.append((same, "have chosen == rejected (zero margin, nothing to learn)", "the preference data"))
    if training.max_length is not None:
        prompt_lengths = [
            len(ids) for ids in tokenizer(list(pairs["prompt"]), add_special_tokens=False).input_ids
        ]
        if training.truncation_mode == "keep_start":  # the answer comes after the prompt: it may get no token
            cut = sum(length >= training.max_length for length in prompt_lengths)
            what = "keep no answer token"
        else:  # keep_end: the answer and its EOS come last, so the prompt goes first
            answers = {side: tokenizer(list(pairs[side]), add_special_tokens=False).input_ids
                       for side in ("chosen", "rejected")}  # fmt: skip
            cut = sum(
                max(len(c), len(r)) + 1 >= training.max_length
                for c, r in zip(answers["chosen"], answers["rejected"], strict=True)
            )
            what = "lose their whole prompt"
        problems.append((cut, f"{what} at --max_length {training.max_length} ({training.truncation_mode})",
                         "--max_length"))  # fmt: skip
    for count, what, source in problems:
        if count == len(pairs):
            raise InputError(f"{source}: all {count} training pairs {what}")
        if count:
            logger.warning("%d of %d training pairs %s", count, len(pairs), what)


def build_trainer(script_args: ScriptArguments, training_args: FDPOConfig) -> FDPOTrainer:
    """Everything up to `trainer.train()`: model, data, LoRA, and the saved run config."""
    set_seed(training_args.seed)
    model, tokenizer = load_model_and_tokenizer(script_args.model)
    data = prepare_splits(
        load_preference_dataset(script_args.dataset, script_args.test_size, training_args.seed),
        tokenizer,
        script_args,
        training_args,
    )
    # Before anything is written: batches the seed cannot change are refused here, not at the first step.
    check_buckets(len(data["train"]), training_args.train_batch_size, training_args.length_buckets)
    peft_config = script_args.lora_config() if script_args.use_peft else None
    record_run(
        script_args, training_args, run_fingerprint(script_args, training_args, data, model, tokenizer)
    )
    trainer = FDPOTrainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data.get("test"),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if peft_config is not None:
        seed_peft_lora(trainer.model, training_args.seed)  # as a stacked run starts (train_dpo/lora_stack.py)
    return trainer


def record_run(script_args: ScriptArguments, training_args: FDPOConfig, fingerprint: dict) -> None:
    """Write the run's `run_config.json` (its settings and fingerprint) into its output folder, after removing
    checkpoints another config left there. Only the process that saves writes: under `accelerate launch`
    two processes renaming one temporary file onto it race, and the loser fails."""
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not training_args.should_save:
        return
    discard_stale_checkpoints(output_dir, fingerprint)  # before run_config.json names the new config
    run_config = {
        "script": asdict(script_args),
        "training": training_args.to_dict(),  # to_dict masks tokens
        "fingerprint": fingerprint,
    }
    write_atomic(output_dir / RUN_CONFIG, json.dumps(run_config, indent=2, default=str))


def last_complete_checkpoint(output_dir: str | Path, prune: bool = True) -> str | None:
    """The newest checkpoint the Trainer finished writing, or None; newer, unfinished ones are removed.

    The Trainer writes a checkpoint's weights, optimizer, scheduler and RNG state first and its
    `trainer_state.json` last, so a checkpoint is complete once that file reads back with the folder's
    step. A process killed mid-save leaves a `checkpoint-N` without it (or with it cut short), which
    transformers' `get_last_checkpoint` picks by its name; resuming from it then fails on every rerun.
    """
    found = {}
    for path in Path(output_dir).glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and path.is_dir():
            found[int(step)] = path
    for step in sorted(found, reverse=True):
        state = found[step] / "trainer_state.json"
        try:
            saved = json.loads(state.read_text(encoding="utf-8"))["global_step"]
        except (OSError, ValueError, KeyError):
            saved = None
        if saved == step:
            return str(found[step])
        if prune:  # else only looked at (a dry run)
            logger.warning("%s: unfinished (stopped while saving), removed and trained again", found[step])
            shutil.rmtree(found[step], ignore_errors=True)
    return None


def save_final(trainer: FDPOTrainer, output_dir: str | Path) -> None:
    """Save the final weights into `output_dir/.final`, then rename each file into `output_dir`.

    A save that fails (disk full) leaves the files of an earlier save in `output_dir` as they were.
    """
    output_dir = Path(output_dir)
    staging = output_dir / ".final"
    main_process = trainer.args.should_save
    with writing(output_dir):
        if main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            if (output_dir / "README.md").is_file():  # TRL's model card, which PEFT's save adds to
                shutil.copy2(output_dir / "README.md", staging / "README.md")
        try:
            trainer.save_model(str(staging), _internal_call=True)  # no Hub push from here: train() pushes
            if main_process:
                for path in sorted(staging.iterdir()):
                    os.replace(path, output_dir / path.name)
        finally:
            if main_process:
                shutil.rmtree(staging, ignore_errors=True)


def train(script_args: ScriptArguments, training_args: FDPOConfig) -> FDPOTrainer:
    """Run training (resuming if asked), save the final weights, evaluate on the held-out pairs.

    The process that saves holds `output_dir`'s lock throughout: two runs writing one folder would
    remove each other's checkpoints and staging folders.
    """
    if training_args.should_save:  # a folder of something else would get checkpoints and a model card
        check_replaceable(Path(training_args.output_dir), RUN_CONFIG)
    lock = output_lock(training_args.output_dir) if training_args.should_save else contextlib.nullcontext()
    with lock:
        return train_locked(script_args, training_args)


def train_locked(script_args: ScriptArguments, training_args: FDPOConfig) -> FDPOTrainer:
    """`train` once the output folder is this process's."""
    trainer = build_trainer(script_args, training_args)
    checkpoint = last_complete_checkpoint(training_args.output_dir) if script_args.resume else None
    if script_args.resume and checkpoint is None:
        logger.info("--resume: no checkpoint in %s, starting from scratch", training_args.output_dir)
    with writing(training_args.output_dir):  # checkpoints: a full disk names the run, not a traceback
        result = trainer.train(resume_from_checkpoint=checkpoint)
    save_final(trainer, training_args.output_dir)
    trainer.save_metrics("train", result.metrics)
    if trainer.eval_dataset is not None:
        trainer.save_metrics("eval", trainer.evaluate())
    trainer.save_state()
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset)
    return trainer


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    script_args, training_args = parse_args(argv)
    trainer = train(script_args, training_args)
    logger.info("run saved to %s", trainer.args.output_dir)


cli = exits_cleanly(main)

if __name__ == "__main__":
    cli()
