"""The prepared GPU check (`bench/paper_gpu.py`), run in its `--quick` mode on the CPU: its stand-ins are
the study's layouts, and its report has every stage of the paper preset, the training rates, the device
and the library versions. Speed is not asserted (docs/performance.md's business)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaForSequenceClassification

from bench.standins import ROBERTA_LARGE

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = {"torch", "transformers", "trl", "peft", "datasets", "accelerate", "huggingface_hub"}


def positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_the_full_size_standins_have_the_study_models_sizes():
    """GPT-2 small (as gpt2-imdb) and RoBERTa-large with a two-label head (as sentiment-roberta-large-english),
    counted on the meta device: the full-size stand-ins are built only where a GPU runs the check."""
    with torch.device("meta"):
        gpt2 = GPT2LMHeadModel(GPT2Config())
        roberta = RobertaForSequenceClassification(RobertaConfig(**ROBERTA_LARGE, num_labels=2))
    assert gpt2.config.vocab_size == 50_257 and gpt2.num_parameters() == 124_439_808
    assert roberta.num_parameters() == 355_361_794
    assert (
        roberta.config.num_hidden_layers,
        roberta.config.hidden_size,
        roberta.config.num_attention_heads,
    ) == (24, 1024, 16)


@pytest.mark.slow
def test_the_quick_gpu_check_reports_every_stage_device_and_versions(tmp_path, data_dir):
    out, hub = tmp_path / "check", tmp_path / "hub"
    command = [
        sys.executable,
        str(ROOT / "bench" / "paper_gpu.py"),
        "--quick",
        "--data_dir",
        str(data_dir),
        "--out",
        str(out),
        "--standins_dir",
        str(hub),
        "--minutes",
        "0",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "paper preset:" in done.stdout and "frontier grid:" in done.stdout

    assert not list(hub.rglob("*.safetensors")) and len(list(hub.rglob("pytorch_model.bin"))) == 3
    gold = json.loads((hub / "sentiment-roberta-large-english" / "config.json").read_text())
    assert gold["model_type"] == "roberta" and gold["id2label"] == {"0": "NEGATIVE", "1": "POSITIVE"}

    report = json.loads((out / "paper_gpu.json").read_text())
    stages = report["paper"]["stage_s"]
    assert set(stages) == {"dataset", "train", "generate", "evaluate", "notebook"}
    assert all(positive(seconds) for seconds in stages.values()), stages
    assert report["paper"]["exit_status"] == 0 and (out / "paper" / "eval" / "results.csv").is_file()
    train = report["paper"]["train"]
    assert train["runs"] == 2 and train["steps_per_run"] == 2 and positive(train["tokens_per_s"])
    assert positive(train["projected_full_length_s"])
    frontier = report["frontier"]["train"]
    assert frontier["mode"] == "stacked by 3" and frontier["steps_per_run"] == 2
    assert positive(frontier["tokens_per_s"]) and positive(frontier["projected_84_runs_full_length_s"])
    assert isinstance(report["device"], str) and report["device"]
    assert set(report["versions"]) == VERSIONS and all(report["versions"].values())
    if not torch.cuda.is_available():
        assert report["paper"]["gpu_memory_peak_gib"] is None and train["mfu"] is None
