"""Eval generation with LoRA runs stacked over one base: the same files as one at a time, block k from run k."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import config
from train_dpo import generate
from train_dpo.generate import cli as generate_cli

PROMPTS = ["This film was", "I watched it twice and", "The acting", "What a story", "Honestly, the ending"]
SAMPLES = 3


def save_adapter(base: Path, out: Path, seed: int, rank: int = 4, with_tokenizer: bool = True) -> str:
    """A LoRA adapter over `base` with a random nonzero lora_B of its own, saved as a training run saves it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(config.LORA_TARGET_MODULES),
                          fan_in_fan_out=True, task_type="CAUSAL_LM")  # fmt: skip
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.5)
    model.save_pretrained(out)
    if with_tokenizer:  # a run folder holds its tokenizer; one without reads with the base's
        AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir) -> list[str]:
    root = tmp_path_factory.mktemp("adapters")
    # The third run has no tokenizer of its own: it reads with the base's, which is the same one.
    return [
        save_adapter(tiny_model_dir, root / f"run{seed}", seed, with_tokenizer=seed < 2) for seed in range(3)
    ]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("prompts") / "eval_prompts.json"
    path.write_text(json.dumps(PROMPTS))
    return str(path)


def run(models: list, out_dir: Path, prompts: str, *flags: str) -> None:
    # Batches of 2 prompts: several batches, a short last one, and padding inside each.
    generate_cli(["--models", *map(str, models), "--prompts", prompts, "--samples", str(SAMPLES),
                  "--max_new_tokens", "12", "--batch_size", "2", "--out_dir", str(out_dir), *flags])  # fmt: skip


def read(out_dir: Path, model: str) -> tuple[pd.DataFrame, dict]:
    tag = Path(model).name
    frame = pd.read_csv(out_dir / f"{tag}.csv", keep_default_na=False)
    return frame, json.loads((out_dir / f"{tag}.json").read_text())


def spy(monkeypatch, loader: str) -> list:
    """What generate.py's `loader` is called with, call by call: a model name, or a stack's names."""
    calls, load = [], getattr(generate, loader)
    monkeypatch.setattr(generate, loader, lambda models, *args: calls.append(models) or load(models, *args))
    return calls


def test_stacked_top_k_1_matches_each_adapter_alone(adapters, prompts, tmp_path):
    """With one candidate token per step the draws do not matter: stacked = alone, row for row, per adapter."""
    run(adapters, tmp_path / "stacked", prompts, "--top_k", "1")
    run(adapters, tmp_path / "alone", prompts, "--top_k", "1", "--stack_size", "1")
    completions = []
    for adapter in adapters:
        stacked, stacked_meta = read(tmp_path / "stacked", adapter)
        alone, alone_meta = read(tmp_path / "alone", adapter)
        assert len(alone) == len(PROMPTS) * SAMPLES
        pd.testing.assert_frame_equal(stacked, alone)  # same columns, rows, ids and text
        assert stacked_meta["stack"] == adapters and stacked_meta["stacked"] is True
        assert set(stacked_meta) == set(alone_meta) | {"stack", "stacked"}
        assert stacked_meta["settings_hash"] != alone_meta["settings_hash"]  # switching modes regenerates
        assert stacked_meta["is_adapter"] and stacked_meta["rows"] == alone_meta["rows"] == len(alone)
        completions.append(tuple(alone["completion_ids"]))
    # The runs differ, so a block read back as another run's would show.
    assert len(set(completions)) == len(adapters)


def test_stacked_sampling_writes_the_same_shape_and_draws_again_the_same(adapters, prompts, tmp_path):
    run(adapters[:2], tmp_path / "stacked", prompts)
    run(adapters[:2], tmp_path / "again", prompts, "--overwrite", "true")
    run(adapters[:1], tmp_path / "alone", prompts, "--stack_size", "1")
    stacked, _ = read(tmp_path / "stacked", adapters[0])
    alone, _ = read(tmp_path / "alone", adapters[0])
    assert list(stacked.columns) == list(alone.columns) and stacked.dtypes.equals(alone.dtypes)
    assert stacked[["prompt", "sample", "prompt_ids"]].equals(alone[["prompt", "sample", "prompt_ids"]])
    assert all(answer.startswith(prompt) for prompt, answer in stacked[["prompt", "answers"]].values)
    for adapter in adapters[:2]:  # the same stack draws the same samples again
        again, _ = read(tmp_path / "again", adapter)
        pd.testing.assert_frame_equal(read(tmp_path / "stacked", adapter)[0], again)


def test_a_mixed_list_samples_the_base_alone_stacks_the_adapters_and_skips_what_is_done(
    adapters, prompts, tiny_model_dir, tmp_path, monkeypatch
):
    out = tmp_path / "gen"
    other_rank = save_adapter(tiny_model_dir, tmp_path / "rank2", seed=7, rank=2)
    first, second, third = adapters
    run([second], out, prompts)  # up to date before the mixed run
    done = (out / f"{Path(second).name}.json").read_text()

    alone, stacks = spy(monkeypatch, "load_policy"), spy(monkeypatch, "load_stacked_policy")
    run([tiny_model_dir, first, second, other_rank, third], out, prompts)
    assert alone == [str(tiny_model_dir)]
    assert stacks == [[first, third], [other_rank]]  # same rank together, another rank in its own stack
    assert (out / f"{Path(second).name}.json").read_text() == done
    _, base_meta = read(out, str(tiny_model_dir))
    assert not base_meta["is_adapter"] and "stacked" not in base_meta and "stack" not in base_meta
    assert read(out, third)[1]["stack"] == [first, third]
    assert read(out, other_rank)[1]["stack"] == [other_rank]

    alone.clear(), stacks.clear()
    run([first, second, third], out, prompts, "--stack_size", "2")  # all up to date: the size is no setting
    assert (alone, stacks) == ([], [])
    run([second], out, prompts, "--stack_size", "1")  # sampled alone now: a different draw, written again
    assert alone == [second] and "stacked" not in read(out, second)[1]


def test_stacks_hold_at_most_stack_size_adapters(adapters, prompts, tmp_path, monkeypatch):
    stacks = spy(monkeypatch, "load_stacked_policy")
    run(adapters, tmp_path / "gen", prompts, "--stack_size", "2", "--num_prompts", "1")
    assert stacks == [adapters[:2], adapters[2:]]


def test_stack_size_below_one_is_one_line(error_line, tmp_path):
    line = error_line(generate_cli, ["--stack_size", "0", "--out_dir", str(tmp_path / "out")], alone=True)
    assert "--stack_size must be >= 1" in line and "got 0" in line
    assert not (tmp_path / "out").exists()


def test_a_retrained_run_is_sampled_again_though_its_folder_keeps_its_name(
    adapters, prompts, tmp_path, caplog
):
    """The CSV's hash covers the weights: new weights in the same run folder are never served old samples."""
    import shutil

    caplog.set_level("INFO")
    run_dir = tmp_path / "run"
    shutil.copytree(adapters[0], run_dir)
    out = tmp_path / "out"
    run([run_dir], out, prompts, "--stack_size", "1")
    first = read(out, str(run_dir))[1]
    run([run_dir], out, prompts, "--stack_size", "1")
    assert "up to date, skipped" in caplog.text  # unchanged weights: kept

    caplog.clear()
    shutil.copy(Path(adapters[1]) / "adapter_model.safetensors", run_dir / "adapter_model.safetensors")
    run([run_dir], out, prompts, "--stack_size", "1")
    second = read(out, str(run_dir))[1]
    assert "up to date, skipped" not in caplog.text
    assert second["weights_sha256"] != first["weights_sha256"]
    assert second["settings_hash"] != first["settings_hash"]


@pytest.mark.parametrize(
    "first, second",
    [("{tmp}/a/gpt_imdb_jsd_beta1", "{tmp}/b/gpt_imdb_jsd_beta1"), ("user/m", "{tmp}/user__m")],
)
def test_two_models_that_would_write_one_file_are_refused_before_any_work(
    first, second, error_line, tmp_path
):
    """Two run folders of one name, or a Hub id and a folder named as its tag: one CSV would overwrite
    the other's samples."""
    models = [name.format(tmp=tmp_path) for name in (first, second)]
    for name in models:
        if name.startswith(str(tmp_path)):  # a run folder; `user/m` stays a Hub id
            Path(name).mkdir(parents=True)
    line = error_line(generate_cli, ["--models", *models, "--out_dir", str(tmp_path / "out")], alone=True)
    assert models[0] in line and models[1] in line and "would both write" in line
    assert not (tmp_path / "out").exists()
