"""A grid's runs trained as one LoRA stack equal the same runs trained alone."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from synthetic import scored_file
from transformers import AutoModelForCausalLM

from train_dpo.stack import build_stack, train_stack
from train_dpo.train import build_trainer, parse_args, train

# A stack mixing loss types, divergences, betas, learning rates and seeds.
RUNS = {
    "sigmoid": ["--loss_type", "sigmoid", "--beta", "0.1", "--learning_rate", "1e-3", "--seed", "0"],
    "hinge": ["--loss_type", "hinge", "--beta", "1", "--learning_rate", "2e-4", "--seed", "1"],
    "jsd": ["--divergence", "jsd", "--beta", "0.5", "--learning_rate", "5e-4", "--seed", "0"],
    "alpha": ["--divergence", "alpha", "--alpha", "0.3", "--beta", "1", "--learning_rate", "1e-4", "--seed", "2"],
}


def run_flags(model_dir, out_dir, cache, *extra):
    return [
        "--model", str(model_dir),
        "--dataset", scored_file(),
        "--output_dir", str(out_dir),
        "--max_train_pairs", "48",
        "--max_eval_pairs", "16",
        "--max_length", "96",
        "--save_strategy", "no",
        "--logging_steps", "1",
        "--lora_dropout", "0",
        "--pad_to_multiple_of", "96",  # one width for every batch: padding changes float rounding
        "--ref_logps_cache", str(cache),
        *extra,
    ]  # fmt: skip


def relative_error(expected: torch.Tensor, got: torch.Tensor) -> float:
    """|got - expected| / |expected| in the 2-norm: float rounding (the stack's matrix products split their
    sums differently) grows over the steps, more at larger learning rates."""
    return (torch.linalg.vector_norm(got.double() - expected.double()) / torch.linalg.vector_norm(expected.double())).item()


def history(run_dir):
    return json.loads((run_dir / "trainer_state.json").read_text())["log_history"]


@pytest.mark.slow
def test_each_stacked_run_equals_the_run_trained_alone(tiny_model_dir, tmp_path):
    """20 fp32 steps of a stack mixing loss types, divergences, betas, learning rates and seeds: each run's
    per-step losses, final adapter and held-out metrics agree with its lone run within 1e-5 relative."""
    cache = tmp_path / "ref"
    common = ["--max_steps", "20"]
    alone = {name: tmp_path / "alone" / name for name in RUNS}
    stacked = {name: tmp_path / "stacked" / name for name in RUNS}
    for name, flags in RUNS.items():
        train(*parse_args(run_flags(tiny_model_dir, alone[name], cache, *common, *flags)))
    train_stack([run_flags(tiny_model_dir, stacked[name], cache, *common, *flags) for name, flags in RUNS.items()],
                tmp_path / "stack")  # fmt: skip
    for name in RUNS:
        losses = [[entry["loss"] for entry in history(folder[name]) if "loss" in entry] for folder in (alone, stacked)]
        assert len(losses[0]) == len(losses[1]) == 20
        assert relative_error(*map(torch.tensor, losses)) < 1e-5, name
        weights = [load_file(folder[name] / "adapter_model.safetensors") for folder in (alone, stacked)]
        assert set(weights[0]) == set(weights[1])
        for key in weights[0]:
            assert relative_error(weights[0][key], weights[1][key]) < 1e-5, (name, key)
        assert weights[1][next(key for key in weights[1] if "lora_B" in key)].abs().max() > 0  # it trained
        lone_eval = json.loads((alone[name] / "eval_results.json").read_text())
        stack_eval = json.loads((stacked[name] / "eval_results.json").read_text())
        for key in ("eval_loss", "eval_logps/chosen", "eval_logps/rejected"):
            assert stack_eval[key] == pytest.approx(lone_eval[key], rel=1e-5), (name, key)
