"""Secrets never leave the environment: a planted token must not appear in any output or log."""

import json

import huggingface_hub
import huggingface_hub.hf_api
import pytest
import transformers.trainer
from huggingface_hub import HfApi

from dataset.main import cli as dataset_cli
from train_dpo.evaluate import cli as evaluate_cli
from train_dpo.generate import cli as generate_cli
from train_dpo.train import cli as train_cli

FAKE = {"HF_TOKEN": "hf_FAKEtokenNeverLogged0123456789", "WANDB_API_KEY": "FAKEwandbKeyNeverLogged9876543210"}


@pytest.mark.slow
def test_planted_tokens_appear_nowhere(tiny_model_dir, tmp_path, monkeypatch, capfd):
    for name, value in FAKE.items():
        monkeypatch.setenv(name, value)
    # W&B is configured, so it is on; offline, so nothing is sent, and its local files are searched too.
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    (tmp_path / "wandb").mkdir()
    # A token is at hand, but nothing may reach the Hub without --push_to_hub.
    # The Trainer calls huggingface_hub's module-level functions, bound to one HfApi when imported: those
    # are replaced too, wherever they were imported to.
    pushes = []
    for method in ("create_repo", "upload_folder", "upload_file", "create_commit", "preupload_lfs_files"):
        record = lambda *args, _name=method, **kwargs: pushes.append(_name)  # noqa: E731
        monkeypatch.setattr(HfApi, method, record)
        for module in (huggingface_hub, huggingface_hub.hf_api, transformers.trainer):
            if hasattr(module, method):
                monkeypatch.setattr(module, method, record)
    data, run = tmp_path / "data", tmp_path / "run"
    dataset_cli(["--preset", "tiny", "--sft_model", str(tiny_model_dir), "--out_dir", str(data), "--num_prompts", "8",
                 "--num_eval_prompts", "4", "--max_new_tokens", "8"])  # fmt: skip
    train_cli(["--model", str(tiny_model_dir), "--dataset", str(data / "dataset" / "hf"), "--output_dir", str(run),
               "--max_steps", "2", "--max_length", "64", "--save_strategy", "steps", "--save_steps", "1"])  # fmt: skip
    generate_cli(["--models", str(run), "--prompts", str(data / "dataset" / "eval_prompts.json"), "--samples", "2",
                  "--max_new_tokens", "8", "--out_dir", str(tmp_path / "gen")])  # fmt: skip
    evaluate_cli(["--generations", str(tmp_path / "gen"), "--reward_model", "vader", "--tokenizer",
                  str(tiny_model_dir), "--out_dir", str(tmp_path / "eval")])  # fmt: skip

    with pytest.raises(SystemExit, match="^2$"):  # an error (status 2) with the token in the environment
        train_cli(
            [
                "--model",
                str(tiny_model_dir),
                "--dataset",
                str(tmp_path / "missing.jsonl"),
                "--output_dir",
                str(run),
            ]
        )

    assert pushes == []
    assert json.loads((run / "run_config.json").read_text())["training"]["report_to"] == ["wandb"]
    output = capfd.readouterr()
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(files) > 30
    for value in FAKE.values():
        assert value not in output.out and value not in output.err
        for path in files:
            assert value.encode() not in path.read_bytes(), f"{value[:8]}... leaked into {path}"
