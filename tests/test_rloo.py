"""The online-RL baseline (train_dpo/rloo.py): trains, resumes only its own checkpoints, and goes through
the sweep, generation and evaluation like the DPO runs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file
from synthetic import scored_file

from train_dpo.rloo import parse_args, train
from train_dpo.sweep import RLOO_BETAS, frontier_grid, is_online, select, trainer_module

REPO = Path(__file__).resolve().parents[1]


def flags(model: Path, out: Path, *extra: str) -> list[str]:
    return ["--preset", "tiny", "--model", str(model), "--dataset", scored_file(), "--output_dir", str(out),
            "--max_steps", "4", "--save_steps", "2", "--max_completion_length", "8", "--num_generations", "2",
            "--per_device_train_batch_size", "4", "--logging_steps", "1", "--seed", "0", *extra]  # fmt: skip


def adapter(folder: Path) -> dict:
    return load_file(folder / "adapter_model.safetensors")


def test_an_rloo_run_resumed_from_its_checkpoint_ends_where_the_straight_run_ends(tiny_model_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(*parse_args(flags(tiny_model_dir, straight)))
    record = json.loads((straight / "run_config.json").read_text())
    assert record["training"]["loss_type"] == "rloo" and record["training"]["divergence"] == "reverse_kl"
    assert record["fingerprint"]["settings"]["beta"] == 0.05 and record["fingerprint"]["data_sha256"]

    # Cut short after its first checkpoint: only checkpoint-2 is left, as a kill after it would leave.
    train(*parse_args(flags(tiny_model_dir, resumed)))
    shutil.rmtree(resumed / "checkpoint-4")
    (resumed / "adapter_model.safetensors").unlink()
    trainer = train(*parse_args(flags(tiny_model_dir, resumed, "--resume", "true")))
    assert trainer.state.global_step == 4
    first = [entry["step"] for entry in trainer.state.log_history if "loss" in entry]
    assert first == [1, 2, 3, 4]  # steps 1-2 come from the checkpoint's state, 3-4 were trained now
    weights, wanted = adapter(resumed), adapter(straight)
    assert weights.keys() == wanted.keys()
    for name in wanted:  # the checkpoint restores the sampling RNG too: the same completions, the same steps
        assert (weights[name] - wanted[name]).abs().max() < 1e-5, name


def test_a_checkpoint_of_other_settings_is_not_resumed(tiny_model_dir, tmp_path, caplog):
    out = tmp_path / "run"
    train(*parse_args(flags(tiny_model_dir, out)))
    shutil.rmtree(out / "checkpoint-4")
    with caplog.at_level("WARNING"):
        trainer = train(*parse_args(flags(tiny_model_dir, out, "--beta", "0.3", "--resume", "true")))
    assert "written with other settings (beta 0.05 → 0.3)" in caplog.text
    assert [entry["step"] for entry in trainer.state.log_history if "loss" in entry] == [1, 2, 3, 4]
    assert json.loads((out / "run_config.json").read_text())["training"]["beta"] == 0.3


def test_the_frontier_grid_has_the_rloo_family_and_the_sweep_sends_it_to_rloo_py():
    grid = frontier_grid(seeds=3, online_betas=RLOO_BETAS)
    online = select(grid, "rloo")
    assert len(online) == 3 * len(RLOO_BETAS) and {spec.family for spec in online} == {"rloo"}
    assert online[0].name(with_seed=True) == "gpt_imdb_rloo_beta3e-1_seed0"
    assert is_online(online[0].flags()) and trainer_module(online[0].flags()) == "train_dpo.rloo"
    assert not is_online(grid[0].flags()) and trainer_module(grid[0].flags()) == "train_dpo.train"


ONLINE = ["--preset", "tiny", "--grid", "frontier", "--seeds", "1", "--sft_epochs", "0.02",
          "--only", "gpt_imdb_rloo_beta1e-1,gpt_imdb_rloo_beta3e-2",
          "--dataset_args", "--num_prompts 24 --num_eval_prompts 6 --max_new_tokens 12",
          "--rloo_args", "--max_steps 4 --save_steps 2 --max_completion_length 8 --num_generations 2 "
                         "--per_device_train_batch_size 4 --max_length 64",
          "--generate_args", "--samples 2 --max_new_tokens 8",
          "--evaluate_args", "--max_test_pairs 8"]  # fmt: skip


def reproduce(root: Path, env: dict, log: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "reproduce.py", *ONLINE, "--results_dir", str(root), *extra]
    with open(log, "w") as handle:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, log: Path) -> str:
    assert process.wait(timeout=900) == 0, log.read_text()[-3000:]
    return log.read_text()


@pytest.mark.slow
def test_a_killed_sweep_of_rloo_runs_finishes_the_rest_and_evaluates_them_like_dpo_runs(tmp_path):
    env = {**os.environ, "FDPO_MODELS_DIR": str(tmp_path / "models")}
    root, log = tmp_path / "frontier", tmp_path / "log.txt"
    runs = root / "runs"
    first, second = runs / "gpt_imdb_rloo_beta1e-1_seed0", runs / "gpt_imdb_rloo_beta3e-2_seed0"

    process = reproduce(root, env, log)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if (first / "manifest.json").is_file() and second.is_dir():
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (first / "manifest.json").is_file() and not (root / "eval" / "results.csv").exists()
    stamp = (first / "manifest.json").stat().st_mtime_ns

    output = finish(reproduce(root, env, log), log)
    assert "run gpt_imdb_rloo_beta1e-1_seed0: cached" in output
    assert (first / "manifest.json").stat().st_mtime_ns == stamp
    for run in (first, second):
        assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 4
    table = pd.read_csv(root / "eval" / "results.csv").set_index("model")
    online = table.loc[[first.name, second.name]]
    assert (online["loss"] == "rloo").all() and (online["beta"].to_list() == [0.1, 0.03])
    for column in ("reward", "gold_reward", "kl", "predictive_entropy", "pref_accuracy", "ece"):
        assert online[column].notna().all(), column
    assert set(pd.read_csv(root / "eval" / "reliability.csv")["model"]) >= {first.name, second.name}
    assert (root / "results.ipynb").is_file() and (root / "figures" / "reliability.png").is_file()

    output = finish(reproduce(root, env, log, "--dry-run"), log)
    assert output.count(": cached") == 3  # the base policy and both runs


def test_family_seeds_add_seeds_to_the_named_families_only():
    import reproduce

    args = reproduce.parse_args(
        ["--preset", "tiny", "--grid", "frontier", "--seeds", "3", "--family_seeds", "sigmoid=5,hinge=5"]
    )
    grid = reproduce.plan_grid(args, reproduce.read_grid_recipe("tiny"))
    seeds = {
        family: {spec.seed for spec in grid if spec.family == family} for family in {s.family for s in grid}
    }
    assert seeds["sigmoid"] == seeds["hinge"] == {0, 1, 2, 3, 4}
    assert seeds["jsd"] == seeds["rloo"] == {0, 1, 2}
    assert len(grid) == 7 * 6 * 3 + 2 * 6 * 2 + len(RLOO_BETAS) * 3
    without = reproduce.plan_grid(reproduce.parse_args(["--preset", "tiny", "--grid", "frontier", "--no_rloo"]),
                                  reproduce.read_grid_recipe("tiny"))  # fmt: skip
    assert "rloo" not in {spec.family for spec in without}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--family_seeds", "sigmoid=0"], "--family_seeds: expected family=N with N >= 1, got 'sigmoid=0'"),
        (["--family_seeds", "sigmoid"], "--family_seeds: expected family=N with N >= 1, got 'sigmoid'"),
        (["--family_seeds", "ppo=5"], "--family_seeds: no run family ppo in the grid"),
        (["--rloo_args", "--beta 0.1"], "--rloo_args: --beta is set by each run of the grid"),
        (
            ["--grid", "study", "--no_rloo"],
            "--no_rloo leaves the online-RL baseline out of the frontier grid",
        ),
    ],
)
def test_bad_rloo_and_seed_flags_are_one_line(flags, message, error_line):
    import reproduce

    argv = ["--preset", "tiny", "--grid", "frontier", *flags]
    if flags[:2] == ["--grid", "study"]:
        argv = ["--preset", "tiny", *flags]
    assert message in error_line(reproduce.cli, [*argv, "--dry-run"])
