"""Results are what they say they are: same seed, same weights; stale output never passes for new."""

import json
from pathlib import Path

import pytest
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


@pytest.fixture
def prompt_files(tmp_path):
    """Two prompt sources: A, and C, which is A with one prompt that A's sample uses (not its first) replaced."""
    source = [f"Review number {i} of a film about {animal}" for i, animal in enumerate(["cats", "dogs"] * 20)]
    a = tmp_path / "A.json"
    a.write_text(json.dumps(source))
    return a, source


def build_generations(tiny_model_dir, out, prompts, *extra):
    from dataset.main import cli

    cli(["--preset", "tiny", "--sft_model", str(tiny_model_dir), "--out_dir", str(out), "--stages",
         "prompts,generate", "--prompts", str(prompts), "--num_prompts", "16", "--num_eval_prompts", "4",
         "--k", "2", "--max_new_tokens", "4", *extra])  # fmt: skip


@pytest.mark.parametrize("change", ["one prompt", "seed"])
def test_changed_prompts_are_refused_before_anything_is_written_and_never_resumed(
    change, prompt_files, tiny_model_dir, tmp_path, error_line
):
    from dataset.main import cli

    a, source = prompt_files
    out = tmp_path / "out"
    build_generations(tiny_model_dir, out, a)
    before = {name: (out / name).read_bytes() for name in ("prompts.json", "generations.jsonl")}
    train = json.loads(before["prompts.json"])["train"]
    if change == "one prompt":
        replaced = train[5]
        c = tmp_path / "C.json"
        c.write_text(json.dumps([p if p != replaced else "A wholly new prompt" for p in source]))
        flags = ["--prompts", str(c)]
    else:
        flags = ["--prompts", str(a), "--seed", "1"]
    argv = ["--preset", "tiny", "--sft_model", str(tiny_model_dir), "--out_dir", str(out), "--stages",
            "prompts,generate", "--num_prompts", "16", "--num_eval_prompts", "4", "--k", "2",
            "--max_new_tokens", "4", *flags]  # fmt: skip
    line = error_line(cli, argv)
    assert "generations.jsonl: made with other settings" in line and "--overwrite" in line, line
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing was written

    cli([*argv, "--overwrite", "true"])
    new_train = json.loads((out / "prompts.json").read_text())["train"]
    generated = [json.loads(line)["prompt"] for line in (out / "generations.jsonl").read_text().splitlines()]
    assert generated == new_train != train
    if change == "one prompt":
        assert "A wholly new prompt" in generated and replaced not in generated
