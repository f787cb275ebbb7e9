r"""The online-RL baseline: TRL's RLOOTrainer under a reverse-KL penalty, on the same policy and prompts as
the f-DPO runs.

    poetry run python train_dpo/rloo.py --preset tiny --model models/tiny-gpt2-sft-<hash> \
        --dataset results/tiny-frontier/data/dataset/hf --beta 0.05 --output_dir results/rloo-beta0.05

The paper compares f-DPO with PPO on the reward-KL frontier of the DPO paper's IMDb experiment. This is
REINFORCE leave-one-out, the PPO-family trainer TRL maintains: each step samples `num_generations`
completions per prompt, scores them with the reward model (VADER on the tiny preset, the DPO runs'
training reward), subtracts beta times the sequence's KL from the reference (the sum of the sampled
tokens' log-ratios, as PPO's reward in the DPO paper), and uses the mean reward of the prompt's other
completions as the baseline. Unlike that PPO there is no value network and no clipped multi-epoch update
(one update per batch). The policy is a LoRA adapter on the SFT model, drawn from the seed as every DPO
run's is, so the same evaluation (generation, KL on the sampled ids, held-out pairs) applies unchanged.

The run folder holds what a DPO run's does: `run_config.json` with its fingerprint (checkpoints of other
settings are never resumed), checkpoints, the adapter. Its `loss_type` is `rloo` and its divergence
`reverse_kl`: the KL-regularised optimum's implied reward is beta * log u, so its preference probability
on held-out pairs is a sigmoid run's (train_dpo/pair_eval.py).
"""

from __future__ import annotations

import common.help  # noqa: F401  (first: answers --help before the heavy imports below)

# isort: split
import contextlib
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from datasets import Dataset
from transformers import set_seed
from trl import RLOOConfig, RLOOTrainer

import config
from common.atomic import check_replaceable
from common.cli import check_field_types, parse_with_presets, presets
from common.errors import InputError, exits_cleanly, writing
from common.lock import output_lock
from common.rewards import RewardArguments, load_reward
from common.secrets import PicklesNoSecrets
from train_dpo.data import load_preference_dataset
from train_dpo.fingerprint import RUN_CONFIG, fingerprint_of, model_sha256, run_settings
from train_dpo.lora_stack import seed_peft_lora
from train_dpo.losses import ONLINE_LOSS
from train_dpo.train import (
    PolicyArguments,
    last_complete_checkpoint,
    load_model_and_tokenizer,
    record_run,
    save_final,
)
from train_dpo.trainer import resolve_hardware_defaults

logger = logging.getLogger("train_dpo")


@dataclass
class RLOOArguments(PolicyArguments, RewardArguments):
    """The policy, its prompts and LoRA adapter as a DPO run's (train.PolicyArguments), and the training
    reward (common.rewards.RewardArguments: the flags every command that scores text takes)."""

    preset: str | None = field(
        default=None,
        metadata={"help": "Defaults from recipes/<preset>/rloo.yaml.", "choices": presets("rloo")},
    )
    dataset: str = field(
        default=str(config.DATASET_DIR / "dataset" / "hf"),
        metadata={
            "help": "Preference pairs, as train.py reads them: the prompts of the training split are the "
            "prompts sampled from; the held-out split is what evaluation scores."
        },
    )

    def __post_init__(self):
        PolicyArguments.__post_init__(self)
        RewardArguments.__post_init__(self)  # recorded and hashed: held at its defaults with a lexicon


@dataclass
class OnlineRLConfig(PicklesNoSecrets, RLOOConfig):
    """RLOOConfig with the names a DPO run records (loss, divergence), and a DPO run's precision and
    reporting (`trainer.resolve_hardware_defaults`); activation checkpointing is off (GPT-2 fits)."""

    loss_type: str = field(
        default=ONLINE_LOSS,
        metadata={"help": "The objective's name in run records.", "choices": [ONLINE_LOSS]},
    )
    divergence: str = field(
        default="reverse_kl",
        metadata={"help": "The penalty: beta times the sampled sequence's KL.", "choices": ["reverse_kl"]},
    )
    alpha: float | None = field(default=None, metadata={"help": "Unused (reverse KL has no alpha)."})
    max_length: int | None = field(
        default=config.MAX_LENGTH,
        metadata={
            "help": "Evaluation only: held-out pairs are cut to this many tokens, as the DPO runs' are."
        },
    )
    beta: float = field(default=0.05, metadata={"help": "Reverse-KL coefficient in the reward."})
    num_generations: int | None = field(default=4, metadata={"help": "Completions sampled per prompt."})
    max_completion_length: int | None = field(default=32, metadata={"help": "Tokens per completion."})
    per_device_train_batch_size: int = field(
        default=16, metadata={"help": "Completions per step (prompts per step x num_generations)."}
    )
    activation_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory."})
    disable_dropout: bool = field(
        default=True, metadata={"help": "No dropout: the sampled and the scored log-probs must agree."}
    )
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 autocast. Default: on for GPUs with bf16, off on the CPU."}
    )
    tf32: bool | None = field(
        default=None,
        metadata={"help": "TF32 matrix products for the fp32 parts. Default: on for GPUs that have it."},
    )
    report_to: Union[None, str, list[str]] = field(  # noqa: UP007 (HfArgumentParser needs typing.Union)
        default=None,
        metadata={"help": "Integrations to log to (default: wandb when W&B is configured, else none)."},
    )

    def __post_init__(self):
        check_field_types(self)
        resolve_hardware_defaults(self)  # as a DPO run's
        # beta 0 drops the KL penalty, the very regularisation the run is compared on, and its implied
        # reward beta * log u (held-out pairs' preference metrics) is then zero everywhere.
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"--beta must be a finite number > 0, got {self.beta}")
        super().__post_init__()


def parse_args(argv: list[str] | None = None) -> tuple[RLOOArguments, OnlineRLConfig]:
    """CLI flags, YAML and preset merged into the two configs; bad values raise InputError."""
    return parse_with_presets((RLOOArguments, OnlineRLConfig), "rloo", argv)


def training_prompts(args: RLOOArguments, tokenizer, seed: int) -> Dataset:
    """The distinct prompts of the pairs' training split, in their first order, longer ones dropped.

    Raises:
        InputError: no prompt is left to sample from.
    """
    pairs = load_preference_dataset(args.dataset, args.test_size, seed)["train"]
    prompts = list(dict.fromkeys(pairs["prompt"]))
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    kept = [
        prompt for prompt, length in zip(prompts, lengths, strict=True) if length <= args.max_prompt_tokens
    ]
    if not kept:
        raise InputError(
            f"--dataset {args.dataset}: no training prompt of at most {args.max_prompt_tokens} tokens"
        )
    if len(kept) < len(prompts):
        logger.info(
            "dropping %d prompts longer than %d tokens", len(prompts) - len(kept), args.max_prompt_tokens
        )
    return Dataset.from_dict({"prompt": kept})


def reward_function(args: RLOOArguments, device: str):
    """The reward model as TRL calls a reward function: one score per completion (the answer alone, as
    evaluation scores it), named for TRL's logs."""
    scorer = load_reward(args.reward_model, output=args.reward_output, device=device, dtype=args.reward_dtype)

    def score(prompts, completions, **_) -> list[float]:
        return [float(value) for value in scorer.score(completions)]

    score.__name__ = scorer.name.split(":")[0].replace("/", "_")
    return score


def prompts_sha256(prompts: Dataset) -> str:
    """SHA-256 of the prompts a run samples from, in order."""
    return hashlib.sha256(json.dumps(list(prompts["prompt"]), ensure_ascii=False).encode()).hexdigest()


def build_trainer(args: RLOOArguments, training: OnlineRLConfig) -> RLOOTrainer:
    """Model, prompts, reward and LoRA adapter, with the run's config recorded before training."""
    set_seed(training.seed)
    model, tokenizer = load_model_and_tokenizer(args.model)
    prompts = training_prompts(args, tokenizer, training.seed)
    fingerprint = fingerprint_of(
        run_settings(args, training), prompts_sha256(prompts), model_sha256(model, tokenizer)
    )
    reward = reward_function(args, str(training.device))  # a damaged reward model stops before the record
    record_run(args, training, fingerprint)
    trainer = RLOOTrainer(model=model, reward_funcs=reward, args=training, train_dataset=prompts,
                          processing_class=tokenizer, peft_config=args.lora_config())  # fmt: skip
    seed_peft_lora(trainer.model, training.seed)  # the adapter a DPO run of this seed starts from
    return trainer


def train(args: RLOOArguments, training: OnlineRLConfig) -> RLOOTrainer:
    """Train (resuming when asked, from a checkpoint of these settings only) and save the adapter, holding
    the output folder's lock throughout."""
    output_dir = Path(training.output_dir)
    if training.should_save:
        check_replaceable(output_dir, RUN_CONFIG)
    lock = output_lock(output_dir) if training.should_save else contextlib.nullcontext()
    with lock:
        trainer = build_trainer(args, training)
        checkpoint = last_complete_checkpoint(output_dir) if args.resume else None
        with writing(output_dir):
            result = trainer.train(resume_from_checkpoint=checkpoint)
        save_final(trainer, output_dir)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
    return trainer


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    trainer = train(*parse_args(argv))
    logger.info("run saved to %s", trainer.args.output_dir)


cli = exits_cleanly(main)

if __name__ == "__main__":
    cli()
