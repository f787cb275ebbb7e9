"""The paper preset end to end, against local stand-ins for the study's two Hub models in their Hub layout.

`lvwerra/gpt2-imdb` and `lvwerra/distilbert-imdb` ship pickle weights (`pytorch_model.bin`). The stand-ins
(`bench/standins.py`) do too: a GPT-2 124M config and a DistilBERT sentiment classifier with IMDb's labels,
random weights and tokenizers trained here. The work is shrunk by flags (a few prompts and tokens, one run,
two steps), so this is the check the paper preset gets on every CPU test run; `bench/paper_gpu.py` runs it
at full model size on a GPU.
"""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.standins import distilbert_imdb_standin, gpt2_imdb_standin

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_paper_preset_runs_end_to_end_on_pickle_only_models(tmp_path, data_dir):
    policy = gpt2_imdb_standin(tmp_path / "hub" / "gpt2-imdb")
    reward = distilbert_imdb_standin(tmp_path / "hub" / "distilbert-imdb")
    gold = distilbert_imdb_standin(tmp_path / "hub" / "sentiment-roberta-large-english", seed=1)
    assert not list((tmp_path / "hub").rglob("*.safetensors"))
    env = {**os.environ, "FDPO_SFT_MODEL": str(policy), "FDPO_REWARD_MODEL": str(reward), "FDPO_GOLD_REWARD_MODEL": str(gold),
           "FDPO_DATA_DIR": str(data_dir), "FDPO_MODELS_DIR": str(tmp_path / "models")}  # fmt: skip
    env.pop("FDPO_SAFETENSORS_ONLY", None)
    root = tmp_path / "paper"
    command = [sys.executable, "reproduce.py", "--preset", "paper", "--results_dir", str(root),
               "--only", "gpt_imdb_sigmoid_beta1",
               "--dataset_args", "--num_prompts 6 --num_eval_prompts 3 --max_new_tokens 6 --batch_size 6",
               "--train_args", "--max_steps 2 --per_device_train_batch_size 2 --per_device_eval_batch_size 2 "
                               "--max_eval_pairs 2 --logging_steps 1",
               "--generate_args", "--samples 2 --max_new_tokens 6",
               "--evaluate_args", "--max_test_pairs 4"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (
        f"base policy: found {policy}" in result.stdout and f"reward model: found {reward}" in result.stdout
    )
    table = pd.read_csv(root / "eval" / "results.csv").set_index("model")
    assert list(table.index) == ["gpt2-imdb", "gpt_imdb_sigmoid_beta1"]
    assert table.loc["gpt_imdb_sigmoid_beta1", "reward_model"].startswith(f"{reward}:logit")
    assert table["reward"].notna().all() and table.loc["gpt_imdb_sigmoid_beta1", "kl"] != 0
    assert table.loc["gpt_imdb_sigmoid_beta1", "gold_reward_model"].startswith(f"{gold}:logit")
    assert table["gold_reward"].notna().all()
    assert (root / "results.ipynb").is_file()


def test_the_paper_frontier_grid_has_its_online_rl_baseline_at_gpt2_scale():
    """`reproduce.py --preset paper --grid frontier` plans the RLOO family, 4 betas x 5 seeds, each run on
    recipes/paper/rloo.yaml: gpt2-imdb with LoRA r=8, 180 steps x 16 completions of 64 tokens (the length
    the preset's evaluation samples), its own learning rate."""
    import config
    import reproduce
    from train_dpo.rloo import parse_args
    from train_dpo.sweep import RLOO_BETAS, run_flags

    args = reproduce.parse_args(["--preset", "paper", "--grid", "frontier", "--only", "rloo"])
    preset = reproduce.read_grid_recipe("paper", args)
    grid = reproduce.plan_grid(args, preset)
    assert {(spec.beta, spec.seed) for spec in grid} == {(b, s) for b in RLOO_BETAS for s in range(5)}
    spec = grid[0]
    assert reproduce.learning_rate(preset, "frontier", spec) is None  # the recipe's, not the DPO runs'
    flags = run_flags(spec, ["--reward_model", preset["reward"], *preset["rloo"]], None, Path("run"))
    script, training = parse_args(flags)
    generate = preset["generate"]
    assert training.max_completion_length == int(generate[generate.index("--max_new_tokens") + 1]) == 64
    assert (training.max_steps, training.per_device_train_batch_size, training.num_generations) == (
        180,
        16,
        4,
    )
    assert training.learning_rate == 6e-5 and training.beta == spec.beta
    assert (script.model, script.lora_r, script.lora_config().r) == (config.SFT_MODEL, 8, 8)
