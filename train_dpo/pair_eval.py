"""Preference log-ratios of a run's held-out pairs, computed by the trainer's own code.

The numbers the f-DPO loss sees come from TRL's tokenization (EOS appended to the answer, the answer
starting where the tokenized prompt and prompt + answer part), its collator (truncation to
`max_length`) and `FDPOTrainer.sequence_logps` (one forward pass scoring the answer tokens). An evaluator that
re-implements any of it drifts: an earlier one left out the EOS token, whose log-ratio is -0.1 to -4
nats after training. So this module builds an `FDPOTrainer` with the run's settings around the trained
policy and calls that forward pass, for the policy and, adapter switched off, for the reference.
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from common.models import Policy
from train_dpo.data import load_preference_dataset
from train_dpo.losses import ONLINE_LOSS
from train_dpo.trainer import FDPOConfig, FDPOTrainer

# Settings of a saved run that change what the forward pass computes on a pair; the rest (optimiser,
# logging, schedule) does not matter here. Runs saved by TRL 0.28 also hold its prompt and completion
# limits, which TRL 1 no longer has; they are left out.
FORWARD_SETTINGS = ("beta", "divergence", "alpha", "loss_type", "max_length", "truncation_mode",
                    "label_smoothing")  # fmt: skip


def heldout_pairs(run_config: dict, tokenizer, max_pairs: int | None = None) -> Dataset | None:
    """The run's test pairs as its training script selected them (None without a test split).

    As `train.prepare_splits`: pairs whose prompt exceeds `max_prompt_tokens` are dropped, and a
    subsample of `max_pairs` is a seeded shuffle, so pairs spread over the test prompts (the first N
    pairs would come from a handful of prompts). With `max_pairs` equal to the run's `max_eval_pairs`
    these are the pairs the trainer evaluated on.
    """
    script, training = run_config["script"], run_config["training"]
    data = load_preference_dataset(script["dataset"], script["test_size"], training["seed"])
    if "test" not in data:
        return None
    test = data["test"]
    lengths = [len(ids) for ids in tokenizer(list(test["prompt"]))["input_ids"]]
    keep = [i for i, length in enumerate(lengths) if length <= script["max_prompt_tokens"]]
    if len(keep) < len(test):
        test = test.select(keep)
    if max_pairs is not None and len(test) > max_pairs:
        test = test.shuffle(seed=training["seed"]).select(range(max_pairs))
    return test.select_columns(["prompt", "chosen", "rejected"])


def eval_trainer(
    policy: Policy, pairs: Dataset, run_config: dict, batch_size: int, out_dir: str
) -> FDPOTrainer:
    """An FDPOTrainer around the loaded policy with the run's forward settings, in float32.

    Float32 whatever the run trained in: bf16 autocast would add rounding to every log-prob.
    """
    training = run_config["training"]
    settings = {key: training[key] for key in FORWARD_SETTINGS if key in training}
    if settings.get("loss_type") == ONLINE_LOSS:  # its implied reward is beta * log u, as a sigmoid run's
        settings["loss_type"] = "sigmoid"
    args = FDPOConfig(
        output_dir=out_dir,
        report_to="none",
        per_device_eval_batch_size=batch_size,
        bf16=False,
        tf32=False,
        use_cpu=next(policy.model.parameters()).device.type == "cpu",
        **settings,
    )
    model, tokenizer = policy.model, policy.tokenizer
    trainer = FDPOTrainer(model=model, args=args, train_dataset=pairs, processing_class=tokenizer)
    # Handed a trained adapter, TRL adds a frozen copy named "ref" as the reference (for training on from
    # it). The run's reference was the base model, which TRL's reference pass uses once that copy is gone.
    if "ref" in model.peft_config:
        model.delete_adapter("ref")
    return trainer


@torch.no_grad()
def pair_logratios(
    policy: Policy, pairs: Dataset, run_config: dict, batch_size: int = 16
) -> dict[str, np.ndarray]:
    """log u_w and log u_l per pair, exactly as the run's loss computes them.

    Args:
        policy: a training run's adapter (its reference is the adapter switched off).
        pairs: prompt / chosen / rejected text, P rows.
        run_config: the run's run_config.json.
    Returns:
        `chosen` and `rejected`: float64 arrays of shape (P,), in `pairs`' order.
    """
    if not policy.is_adapter:
        raise ValueError(f"{policy.name}: the preference metrics need a LoRA run (its reference is the base)")
    policy.model.eval()
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = eval_trainer(policy, pairs, run_config, batch_size, out_dir)
        if len(trainer.train_dataset) != len(pairs):  # TRL drops pairs whose prompt fills max_length
            raise ValueError(
                f"{len(pairs) - len(trainer.train_dataset)} held-out pairs have a prompt of at least "
                f"max_length {trainer.args.max_length} tokens: no answer token to score"
            )
        loader = DataLoader(trainer.train_dataset, batch_size=batch_size, collate_fn=trainer.data_collator)
        chosen, rejected = [], []
        for batch in loader:
            batch = trainer._prepare_inputs(batch)
            policy_chosen, policy_rejected, _ = trainer.sequence_logps(trainer.model, batch)
            ref_chosen, ref_rejected = trainer.reference_logps(batch)
            chosen.append((policy_chosen - ref_chosen).double().cpu())
            rejected.append((policy_rejected - ref_rejected).double().cpu())
    return {"chosen": torch.cat(chosen).numpy(), "rejected": torch.cat(rejected).numpy()}
