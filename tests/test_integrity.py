"""Results are what they say they are: same seed, same weights; stale output never passes for new."""

from pathlib import Path

import torch
from safetensors.torch import load_file

import config
from train_dpo.train import parse_args, train


def short_run(out_dir: Path, *extra: str) -> dict[str, torch.Tensor]:
    """A 2-step tiny run; its final adapter weights."""
    flags = ["--model", "tiny", "--output_dir", str(out_dir), "--max_train_pairs", "16", "--max_eval_pairs", "8",
             "--max_length", "64", "--max_steps", "2", "--per_device_train_batch_size", "4",
             "--save_strategy", "no", "--learning_rate", "5e-3", "--seed", "0", *extra]  # fmt: skip
    train(*parse_args(flags))
    return load_file(out_dir / "adapter_model.safetensors")


def test_same_seed_gives_the_same_weights_whether_the_tiny_model_is_built_or_loaded(
    tmp_path, monkeypatch, data_dir
):
    monkeypatch.setattr(config, "MODELS_DIR", tmp_path / "models")
    built = short_run(tmp_path / "built")  # builds models/tiny-gpt2 in this process
    loaded = short_run(tmp_path / "loaded")  # finds it cached
    assert built.keys() == loaded.keys()
    assert all(torch.equal(built[name], loaded[name]) for name in built)
