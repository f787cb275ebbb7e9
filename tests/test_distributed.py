"""train_dpo/train.py under `accelerate launch` with two CPU processes (DDP over gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic import scored_file

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_processes_finish_with_identical_weights(tiny_model_dir, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
        str(REPO / "tests" / "ddp_probe.py"),
        "--model", str(tiny_model_dir), "--dataset", scored_file(), "--output_dir", str(out), "--divergence", "jsd", "--beta", "0.1",
        "--max_train_pairs", "32", "--max_eval_pairs", "8", "--max_length", "64", "--max_steps", "4",
        "--per_device_train_batch_size", "4", "--learning_rate", "5e-3", "--save_strategy", "no",
    ]  # fmt: skip
    # Without a GPU, --multi_gpu starts the processes and ACCELERATE_USE_CPU makes them DDP over gloo;
    # without it transformers leaves the model unwrapped and the ranks silently drift apart.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["global_step"] for r in ranks] == [4, 4]
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    assert (out / "adapter_model.safetensors").is_file()  # rank 0 saved the run as usual
