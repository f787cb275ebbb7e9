"""A grid's runs trained as one LoRA stack equal the same runs trained alone."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from synthetic import scored_file

from common.errors import InputError
from train_dpo.data import load_preference_dataset
from train_dpo.stack import build_stack, train_stack
from train_dpo.train import build_trainer, parse_args, train

# A stack mixing loss types, divergences, betas, learning rates and seeds.
RUNS = {
    "sigmoid": ["--loss_type", "sigmoid", "--beta", "0.1", "--learning_rate", "1e-3", "--seed", "0"],
    "hinge": ["--loss_type", "hinge", "--beta", "1", "--learning_rate", "2e-4", "--seed", "1"],
    "jsd": ["--divergence", "jsd", "--beta", "0.5", "--learning_rate", "5e-4", "--seed", "0"],
    "alpha": [
        "--divergence",
        "alpha",
        "--alpha",
        "0.3",
        "--beta",
        "1",
        "--learning_rate",
        "1e-4",
        "--seed",
        "2",
    ],
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
    return (
        torch.linalg.vector_norm(got.double() - expected.double())
        / torch.linalg.vector_norm(expected.double())
    ).item()


def history(run_dir):
    return json.loads((run_dir / "trainer_state.json").read_text())["log_history"]


# The levers that change how a stack's batches are drawn: each must leave every run its lone run.
LEVERS = {"uniform": [], "length_buckets": ["--length_buckets", "4"]}


@pytest.mark.slow
@pytest.mark.parametrize("lever", LEVERS)
def test_each_stacked_run_equals_the_run_trained_alone(tiny_model_dir, tmp_path, lever):
    """20 fp32 steps of a stack mixing loss types, divergences, betas, learning rates and seeds: each run's
    per-step losses, final adapter (all its weights as one vector) and held-out metrics agree with its
    lone run within 1e-5 relative. Each of the adapter's matrices alone agrees within 1e-4: a small one
    sums 20 steps of rounding over fewer entries (on one CPU 1.03e-5 for a hinge run's, no entry off by
    more than 9e-7 where entries reach 5e-3), far below what a mixed-up seed, batch order or learning
    rate would leave."""
    cache = tmp_path / "ref"
    common = ["--max_steps", "20", *LEVERS[lever]]
    alone = {name: tmp_path / "alone" / name for name in RUNS}
    stacked = {name: tmp_path / "stacked" / name for name in RUNS}
    for name, flags in RUNS.items():
        train(*parse_args(run_flags(tiny_model_dir, alone[name], cache, *common, *flags)))
    train_stack([run_flags(tiny_model_dir, stacked[name], cache, *common, *flags) for name, flags in RUNS.items()],
                tmp_path / "stack")  # fmt: skip
    for name in RUNS:
        losses = [
            [entry["loss"] for entry in history(folder[name]) if "loss" in entry]
            for folder in (alone, stacked)
        ]
        assert len(losses[0]) == len(losses[1]) == 20
        assert relative_error(*map(torch.tensor, losses)) < 1e-5, name
        weights = [load_file(folder[name] / "adapter_model.safetensors") for folder in (alone, stacked)]
        assert set(weights[0]) == set(weights[1])
        whole = [torch.cat([adapter[key].flatten() for key in sorted(adapter)]) for adapter in weights]
        assert relative_error(*whole) < 1e-5, name
        for key in weights[0]:
            assert relative_error(weights[0][key], weights[1][key]) < 1e-4, (name, key)
        assert weights[1][next(key for key in weights[1] if "lora_B" in key)].abs().max() > 0  # it trained
        lone_eval = json.loads((alone[name] / "eval_results.json").read_text())
        stack_eval = json.loads((stacked[name] / "eval_results.json").read_text())
        for key in ("eval_loss", "eval_logps/chosen", "eval_logps/rejected"):
            assert stack_eval[key] == pytest.approx(lone_eval[key], rel=1e-5), (name, key)


@pytest.mark.slow
def test_a_non_finite_batch_of_one_run_costs_no_other_run_its_step(
    tiny_model_dir, tmp_path, monkeypatch, caplog
):
    """With --skip_nonfinite_batches, run b's infinite loss at step 2 drops b's step alone: a's adapter ends
    bit for bit as in a stack where nothing went wrong, b's moved on its 3 other steps and is finite.
    Without the flag the stack stops in one line naming the run."""
    import train_dpo.stack as stack_module
    from common.errors import TrainingDiverged

    runs = {"a": ["--seed", "0", "--learning_rate", "1e-3"], "b": ["--seed", "1", "--learning_rate", "1e-3"]}

    def trained(root, *extra):
        flags = [run_flags(tiny_model_dir, root / name, tmp_path / "ref", "--max_steps", "4", *extra, *own)
                 for name, own in runs.items()]  # fmt: skip
        train_stack(flags, root / "stack")
        return {name: load_file(root / name / "adapter_model.safetensors") for name in runs}

    clean = trained(tmp_path / "clean", "--skip_nonfinite_batches", "true")
    original, calls = stack_module.weighted_fdpo_loss, {"n": 0}

    def poisoned(*args, **kwargs):  # called once per run per step, run a first; b's loss at step 2 is inf
        loss, *rewards = original(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("inf") if calls["n"] == 4 else loss, *rewards)

    monkeypatch.setattr(stack_module, "weighted_fdpo_loss", poisoned)
    with caplog.at_level("WARNING", logger="train_dpo.trainer"):
        skipped = trained(tmp_path / "skipped", "--skip_nonfinite_batches", "true")
    warnings = [r.getMessage() for r in caplog.records if "batch skipped" in r.getMessage()]
    assert len(warnings) == 1 and "non-finite loss at optimizer step 2 " in warnings[0], warnings
    assert warnings[0].endswith(" in run b: batch skipped"), warnings
    assert all(torch.equal(clean["a"][key], skipped["a"][key]) for key in clean["a"])
    assert not all(torch.equal(clean["b"][key], skipped["b"][key]) for key in clean["b"])
    assert all(torch.isfinite(tensor).all() for tensor in skipped["b"].values())
    calls["n"] = 0
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at optimizer step 2 .* in run b;"):
        trained(tmp_path / "stopped")


@pytest.mark.slow
def test_a_stacked_run_that_skips_most_of_its_steps_fails_the_stack_by_name(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Run b's loss is infinite at 3 of 4 steps, run a's never: the stack fails naming b and its own count."""
    import train_dpo.stack as stack_module
    from common.errors import TrainingDiverged

    original, calls = stack_module.weighted_fdpo_loss, {"n": 0}

    def poisoned(*args, **kwargs):  # called once per run per step, run a first
        loss, *rewards = original(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("inf") if calls["n"] in (2, 4, 8) else loss, *rewards)

    monkeypatch.setattr(stack_module, "weighted_fdpo_loss", poisoned)
    flags = [run_flags(tiny_model_dir, tmp_path / name, tmp_path / "ref", "--max_steps", "4", "--seed", seed,
                       "--skip_nonfinite_batches", "true")
             for name, seed in (("a", "0"), ("b", "1"))]  # fmt: skip
    with pytest.raises(TrainingDiverged) as failed:
        train_stack(flags, tmp_path / "stack")
    assert str(failed.value).startswith("run b skipped 3 of 4 steps on a non-finite loss"), failed.value
    assert "run a" not in str(failed.value)
    assert not (tmp_path / "stack" / "final").exists()


def test_the_stack_logs_the_mean_of_its_runs_losses(tiny_model_dir, tmp_path):
    """The stack's own entries (its console lines) give the mean of the runs' losses, not their sum."""
    flags = [run_flags(tiny_model_dir, tmp_path / name, tmp_path / "ref", "--max_steps", "2", *own)
             for name, own in (("a", ["--beta", "0.1"]), ("b", ["--beta", "10", "--divergence", "jsd"]))]  # fmt: skip
    trainer, _ = build_stack(flags, tmp_path / "stack")
    result = trainer.train()
    evaluation = trainer.evaluate()
    history = trainer.state.log_history
    for key in ("loss", "eval_loss"):
        stack_entries = [entry for entry in history if key in entry and "run" not in entry]
        assert len(stack_entries) == (2 if key == "loss" else 1)
        for entry in stack_entries:
            runs = [e[key] for e in history if "run" in e and key in e and e["step"] == entry["step"]]
            assert len(runs) == 2 and entry[key] == pytest.approx(sum(runs) / 2)
    assert evaluation["eval_loss"] == pytest.approx(stack_entries[0]["eval_loss"])
    step_losses = [entry["loss"] for entry in history if "loss" in entry and "run" not in entry]
    assert result.metrics["train_loss"] == pytest.approx(
        sum(step_losses) / len(step_losses)
    )  # logged every step


def chosen_rows(batch, rows: slice) -> list[tuple[int, ...]]:
    """The chosen sequences of a block of TRL's batch, without padding."""
    ids, mask = batch["input_ids"][rows], batch["attention_mask"][rows]
    return [tuple(row[keep.bool()].tolist()) for row, keep in zip(ids, mask, strict=True)]


def epochs(loader, count: int = 2):
    for epoch in range(count):
        loader.set_epoch(epoch)  # as the Trainer does before each epoch
        yield from loader


@pytest.mark.parametrize("lever", LEVERS)
def test_each_run_sees_the_batches_it_would_see_alone(tiny_model_dir, tmp_path, lever):
    """Over two epochs, block k of every stacked batch holds the pairs, in the order, that run k's lone
    Trainer draws: its own seed (or data seed), and its own subsample of the pairs."""
    cache = tmp_path / "ref"
    runs = [["--seed", "0"], ["--seed", "1", "--divergence", "jsd"], ["--seed", "1", "--data_seed", "7"]]
    runs = [[*run, *LEVERS[lever]] for run in runs]
    flags = [run_flags(tiny_model_dir, tmp_path / f"run{i}", cache, *run) for i, run in enumerate(runs)]
    lone = []
    for run in flags:
        loader = build_trainer(*parse_args(run)).get_train_dataloader()
        lone.append([chosen_rows(batch, slice(0, len(batch["input_ids"]) // 2)) for batch in epochs(loader)])
    trainer, _ = build_stack(flags, tmp_path / "stack")
    stacked = list(epochs(trainer.get_train_dataloader()))
    assert len(stacked) == len(lone[0]) == 2 * 6  # 48 pairs in batches of 8, twice
    for k in range(len(runs)):
        pairs = len(stacked[0]["input_ids"]) // (2 * len(runs))
        assert [chosen_rows(batch, slice(2 * pairs * k, 2 * pairs * k + pairs)) for batch in stacked] == lone[
            k
        ]
    assert lone[0] != lone[1] != lone[2]  # the runs' orders differ, so the blocks are not interchangeable


def test_runs_that_cannot_share_a_stack_are_one_clear_line(tiny_model_dir, tmp_path):
    cache = tmp_path / "ref"
    flags = [
        run_flags(tiny_model_dir, tmp_path / "a", cache),
        run_flags(tiny_model_dir, tmp_path / "b", cache, "--max_length", "64"),
    ]
    with pytest.raises(InputError, match="differ in max_length"):
        build_stack(flags, tmp_path / "stack")


def test_runs_left_with_unequal_pairs_are_refused_before_any_is_recorded(tiny_model_dir, tmp_path):
    """Seeds split the prompts differently, and a prompt over --max_prompt_tokens is dropped from whichever
    split it lands in: two seeds can leave the runs unequal training sets, which a stack cannot step."""
    records = json.loads(Path(scored_file()).read_text(encoding="utf-8"))[:20]
    long = "So very long " * 100
    records[0] = {**records[0], "prompt": long, "answers": [long + a for a in records[0]["answers"]]}
    data = tmp_path / "scored.json"
    data.write_text(json.dumps(records))
    seeds = [
        s
        for s in range(10)
        if any(p == long for p in load_preference_dataset(str(data), 0.5, s)["train"]["prompt"])
    ]
    other = next(s for s in range(10) if s not in seeds)  # the long prompt held out, so none dropped
    flags = [run_flags(tiny_model_dir, tmp_path / f"run{seed}", tmp_path / "ref", "--dataset", str(data),
                       "--test_size", "0.5", "--max_train_pairs", "1000", "--seed", str(seed))
             for seed in (seeds[0], other)]  # fmt: skip
    with pytest.raises(
        InputError, match=r"the runs of a stack train on equally many pairs, these on \[\d+, \d+\]"
    ):
        build_stack(flags, tmp_path / "stack")
    assert not list(tmp_path.glob("run*/run_config.json"))


@pytest.mark.slow
def test_a_killed_stack_resumes_and_loses_or_repeats_no_step(tiny_model_dir, tmp_path):
    cache = tmp_path / "ref"
    common = ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4", "--logging_steps", "1"]
    runs = {"a": ["--seed", "0"], "b": ["--seed", "1", "--divergence", "jsd", "--learning_rate", "5e-4"]}

    def flags(root):
        return [run_flags(tiny_model_dir, root / name, cache, *common, *run) for name, run in runs.items()]

    train_stack(flags(tmp_path / "straight"), tmp_path / "straight" / "stack")
    resumed = tmp_path / "resumed"
    train_stack(flags(resumed), resumed / "stack")
    # Lose everything after step 4, as if the process died there (before the split), then run it again.
    for leftover in (
        resumed / "stack" / "checkpoint-8",
        resumed / "stack" / "final",
        *(resumed / name for name in runs),
    ):
        shutil.rmtree(leftover)
    train_stack(flags(resumed), resumed / "stack")
    for name in runs:
        steps = [entry["step"] for entry in history(resumed / name) if "loss" in entry]
        assert steps == list(range(1, 9))
        expected = load_file(tmp_path / "straight" / name / "adapter_model.safetensors")
        got = load_file(resumed / name / "adapter_model.safetensors")
        for key in expected:
            torch.testing.assert_close(got[key], expected[key])
    # Killed while splitting: the finished stack is split again, nothing is trained.
    (resumed / "b" / "adapter_model.safetensors").unlink()
    shutil.rmtree(resumed / "stack" / "checkpoint-8")
    train_stack(flags(resumed), resumed / "stack")
    assert not (resumed / "stack" / "checkpoint-8").exists()
    assert (resumed / "b" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_two_processes_train_one_stack_with_accelerate(tiny_model_dir, tmp_path):
    """`accelerate launch` on two CPU processes: DDP inside the stack, each process a share of every run's
    batches; the main process writes the runs' folders."""
    # Pairs saved to disk: TRL's reference precompute shares its result between processes through the
    # dataset's cache files, which pairs built in memory do not have.
    load_preference_dataset(scored_file(), 0.2, 0).save_to_disk(tmp_path / "pairs")
    runs = [["--seed", "0"], ["--seed", "1", "--divergence", "jsd"]]
    common = [
        "--max_steps",
        "4",
        "--use_cpu",
        "true",
        "--dataset",
        str(tmp_path / "pairs"),
    ]  # gloo on the CPU
    flags = [
        run_flags(tiny_model_dir, tmp_path / f"run{i}", tmp_path / "ref", *common, *run)
        for i, run in enumerate(runs)
    ]
    (tmp_path / "runs.json").write_text(json.dumps(flags))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "train_dpo.stack",
              "--stack_dir", str(tmp_path / "stack"), "--runs", str(tmp_path / "runs.json")]  # fmt: skip
    done = subprocess.run(
        launch, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    errors = [line for line in done.stderr.splitlines() if "error:" in line]  # a rank's own one-line report
    assert done.returncode == 0, "\n".join([*errors, done.stderr[-3000:]])
    assert json.loads((tmp_path / "stack" / "final" / "stack.json").read_text())["processes"] == 2
    for i in range(len(runs)):
        state = json.loads((tmp_path / f"run{i}" / "trainer_state.json").read_text())
        assert state["global_step"] == 4
        assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4]
        assert (tmp_path / f"run{i}" / "adapter_model.safetensors").is_file()
