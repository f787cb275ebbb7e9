"""A training step waits on the device once, for the non-finite guard, whether it trains one run or a stack.

On a GPU every read of a tensor's value by the host (`.item()`, `bool(t)`, `.tolist()`, ...) stalls the
step until the device catches up. The metrics stay on the device until a logging step reads them all.
"""

import functools
import sys
from collections import Counter

import torch
from synthetic import scored_file

from train_dpo.stack import build_stack
from train_dpo.train import build_trainer, parse_args

# Every Tensor method that copies a value to the host.
HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy")
STEPS = 3  # all of them outside a logging step: the run logs only when it ends
MASKS = "transformers.masking_utils"  # its reads, in the model's forward, are transformers' own


def tiny_flags(model_dir, out_dir, *extra):
    return [
        "--model", str(model_dir),
        "--dataset", scored_file(),
        "--output_dir", str(out_dir),
        "--max_train_pairs", "24",
        "--max_eval_pairs", "8",
        "--max_length", "64",
        "--per_device_train_batch_size", "4",
        "--max_steps", str(STEPS),
        "--logging_steps", "1000",
        "--save_strategy", "no",
        *extra,
    ]  # fmt: skip


def host_reads_per_step(trainer, monkeypatch) -> list[int]:
    """Trains, counting the host reads of the trainer's own step code (the forward and backward passes,
    loss, metrics, non-finite guard, gradient clipping) at each optimizer step.

    Left out, as transformers' own: the loop around the step (its NaN filter of the logged loss; AdamW's
    step counters live on the host) and, in the model's forward, the check whether the attention mask pads
    anything (which picks the attention kernel).
    """
    counts, window = Counter(), {"open": False}

    def counted(read):
        @functools.wraps(read)
        def wrapper(*args, **kwargs):
            if not window["open"] or sys._getframe(1).f_globals.get("__name__") == MASKS:
                return read(*args, **kwargs)
            counts[trainer.state.global_step] += 1
            window["open"] = False  # a read made inside another read is the same one
            try:
                return read(*args, **kwargs)
            finally:
                window["open"] = True

        return wrapper

    def watched(method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            window["open"] = True
            try:
                return method(*args, **kwargs)
            finally:
                window["open"] = False

        return wrapper

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
    for name in ("training_step", "_clip_grad_norm"):
        monkeypatch.setattr(trainer, name, watched(getattr(trainer, name)))
    trainer.train()
    assert trainer.state.global_step == STEPS
    return [counts[step] for step in range(STEPS)]


def test_a_lone_run_reads_the_device_once_a_step(tiny_model_dir, tmp_path, monkeypatch):
    trainer = build_trainer(*parse_args(tiny_flags(tiny_model_dir, tmp_path / "run")))
    assert host_reads_per_step(trainer, monkeypatch) == [1] * STEPS


def test_a_stack_of_three_runs_reads_the_device_once_a_step(tiny_model_dir, tmp_path, monkeypatch):
    runs = [["--seed", "0"], ["--seed", "1", "--divergence", "jsd"], ["--loss_type", "hinge", "--beta", "1"]]
    flags = [
        tiny_flags(tiny_model_dir, tmp_path / f"run{k}", "--ref_logps_cache", str(tmp_path / "ref"), *run)
        for k, run in enumerate(runs)
    ]
    trainer, _ = build_stack(flags, tmp_path / "stack")
    assert host_reads_per_step(trainer, monkeypatch) == [1] * STEPS
