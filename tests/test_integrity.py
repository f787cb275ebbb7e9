"""Results are what they say they are: same seed, same weights; stale output never passes for new."""

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from conftest import hold_lock
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from synthetic import scored_file

import config
from train_dpo.train import parse_args, train

REPO = Path(__file__).resolve().parents[1]


def short_run(out_dir: Path, *extra: str) -> dict[str, torch.Tensor]:
    """A 2-step tiny run; its final adapter weights."""
    flags = ["--model", "tiny", "--dataset", scored_file(), "--output_dir", str(out_dir), "--max_train_pairs", "16", "--max_eval_pairs", "8",
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


def test_generations_of_an_sft_model_retrained_in_its_folder_are_refused(
    prompt_files, tiny_model_dir, tmp_path, error_line
):
    from transformers import GPT2LMHeadModel

    from dataset.main import cli

    sft = tmp_path / "sft"
    shutil.copytree(tiny_model_dir, sft)
    a, _ = prompt_files
    out = tmp_path / "out"
    build_generations(sft, out, a)
    before = (out / "generations.jsonl").read_bytes()
    model = GPT2LMHeadModel.from_pretrained(sft)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # retrained: same folder, other weights
    model.save_pretrained(sft)
    argv = ["--preset", "tiny", "--sft_model", str(sft), "--out_dir", str(out), "--stages", "prompts,generate",
            "--prompts", str(a), "--num_prompts", "16", "--num_eval_prompts", "4", "--k", "2",
            "--max_new_tokens", "4"]  # fmt: skip
    line = error_line(cli, argv)
    assert "generations.jsonl: made with other settings (weights_sha256" in line and "--overwrite" in line, (
        line
    )
    assert (out / "generations.jsonl").read_bytes() == before


def test_generations_of_a_hub_model_pushed_to_since_are_refused(
    prompt_files, tiny_model_dir, tmp_path, error_line
):
    """A Hub id stands for the commit that loading it reads (offline: the cached `main`), so generations
    written from one commit do not pass for the next: the refusal names both commits."""
    from huggingface_hub import constants

    from dataset.main import cli

    repo = Path(constants.HF_HUB_CACHE) / "models--fdpo-tests--pushed-sft"  # the Hub cache's own layout

    def push(commit: str) -> None:
        shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)

    push("a" * 40)
    a, _ = prompt_files
    out = tmp_path / "out"
    build_generations("fdpo-tests/pushed-sft", out, a)
    before = (out / "generations.jsonl").read_bytes()
    push("b" * 40)
    argv = ["--preset", "tiny", "--sft_model", "fdpo-tests/pushed-sft", "--out_dir", str(out), "--stages",
            "prompts,generate", "--prompts", str(a), "--num_prompts", "16", "--num_eval_prompts", "4", "--k", "2",
            "--max_new_tokens", "4"]  # fmt: skip
    line = error_line(cli, argv)
    assert f"made with other settings (hub_commit {'a' * 40} → {'b' * 40})" in line, line
    assert (out / "generations.jsonl").read_bytes() == before


def second_writer(entry: str, folder: Path, tiny_model_dir: Path) -> tuple:
    """(cli, argv) of an entry point writing `folder`."""
    if entry == "dataset":
        from dataset.main import cli

        return cli, ["--preset", "tiny", "--sft_model", str(tiny_model_dir), "--out_dir", str(folder)]
    if entry == "train":
        from train_dpo.train import cli

        return cli, ["--model", str(tiny_model_dir), "--output_dir", str(folder), "--max_steps", "1"]
    from reproduce import cli

    return cli, ["--preset", "tiny", "--only", "jsd", "--results_dir", str(folder)]


@pytest.mark.parametrize("entry", ["dataset", "train", "reproduce"])
def test_a_second_writer_of_a_folder_is_refused_naming_the_first(entry, tiny_model_dir, tmp_path, error_line):
    folder = tmp_path / "out"
    holder = hold_lock(folder)
    try:
        cli, argv = second_writer(entry, folder, tiny_model_dir)
        line = error_line(cli, argv)
        assert line == (
            f"error: {folder}: another process (pid {holder.pid}) is writing here; wait for it to end or use "
            "another folder"
        )
        assert sorted(path.name for path in folder.iterdir()) == [".lock"]  # the second wrote nothing
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_writer_is_taken_over(tmp_path):
    from common.lock import output_lock

    holder = hold_lock(tmp_path)
    holder.kill()
    holder.wait()
    assert (tmp_path / ".lock").read_text() == f"{holder.pid}\n"  # its name is still there
    with output_lock(tmp_path):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"


def interleave(path: Path, batch: int) -> None:
    """Rewrite a finished log as two writers of one folder left it: their batches alternate."""
    lines = path.read_bytes().splitlines(keepends=True)
    batches = [lines[i : i + batch] for i in range(0, len(lines), batch)]
    path.write_bytes(
        b"".join(line for pair in zip(batches, batches, strict=True) for b in pair for line in b)
    )


def test_a_state_file_that_disagrees_with_its_data_is_said_in_one_line_and_rebuilt(
    prompt_files, tiny_model_dir, tmp_path, error_line
):
    from dataset.main import cli

    a, _ = prompt_files
    out = tmp_path / "out"
    build_generations(tiny_model_dir, out, a, "--batch_size", "4")
    expected = (out / "generations.jsonl").read_bytes()
    interleave(out / "generations.jsonl", 4)  # the state still says complete, 16 records

    argv = ["--preset", "tiny", "--sft_model", str(tiny_model_dir), "--out_dir", str(out), "--k", "2",
            "--max_new_tokens", "4", "--batch_size", "4"]  # fmt: skip
    line = error_line(cli, [*argv, "--stages", "score"])
    assert line.endswith(
        "generations.jsonl: its state file counts 16 complete records, but only the first 4 read back in "
        "order; rerun the generate stage to rebuild it from there"
    ), line
    cli([*argv, "--stages", "generate,score"])
    assert (out / "generations.jsonl").read_bytes() == expected
    assert len((out / "scored.jsonl").read_text().splitlines()) == 16


def test_a_run_whose_config_changed_is_retrained_never_resumed(tmp_path, tiny_model_dir):
    from reproduce import run_inputs
    from train_dpo.sweep import mark_finished, run_status

    def run(out_dir: Path, *extra: str) -> tuple[list[str], dict[str, torch.Tensor]]:
        flags = ["--model", str(tiny_model_dir), "--dataset", scored_file(), "--output_dir", str(out_dir), "--max_train_pairs", "16",
                 "--max_eval_pairs", "8", "--max_length", "64", "--max_steps", "2", "--save_steps", "2",
                 "--per_device_train_batch_size", "4", "--learning_rate", "5e-3", "--seed", "0", *extra]  # fmt: skip
        train(*parse_args([*flags, "--resume", "true"]))
        return flags, load_file(out_dir / "adapter_model.safetensors")

    upstream = {"dataset": "a"}
    flags, old = run(tmp_path / "run")
    assert (tmp_path / "run" / "checkpoint-2").is_dir()  # what a resume would start from
    mark_finished(tmp_path / "run", run_inputs(flags, upstream), flags)
    assert run_status(tmp_path / "run", run_inputs(flags, upstream)) == "cached"
    changed = [*flags, "--weight_decay", "0.1"]
    assert run_status(tmp_path / "run", run_inputs(changed, upstream)) == (
        "retrain (config changed: weight_decay 0.0 → 0.1)"
    )
    assert run_status(tmp_path / "run", run_inputs(flags, {"dataset": "b"})) == (
        "retrain (config changed: dataset a → b)"
    )

    _, retrained = run(tmp_path / "run", "--weight_decay", "0.1")
    _, fresh = run(tmp_path / "fresh", "--weight_decay", "0.1")
    assert json.loads((tmp_path / "run" / "train_results.json").read_text())["train_loss"] > 0
    assert any(not torch.equal(old[name], retrained[name]) for name in old)
    assert all(torch.equal(fresh[name], retrained[name]) for name in fresh)  # as if trained from scratch
    assert run_status(tmp_path / "run", run_inputs(flags, upstream)).startswith("retrain")  # not "cached"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("entry", ["dataset", "run", "sft", "tiny"])
def test_an_output_folder_the_project_did_not_write_is_never_replaced(
    entry, tmp_path, data_dir, tiny_model_dir, error_line
):
    clone = tmp_path / "clone"  # stands for a clone of this repo
    (clone / "dataset").mkdir(parents=True)
    for name in "abcdefghijklm":
        (clone / "dataset" / f"{name}.py").write_text(f"# module {name}\n")
    (clone / "README.md").write_text("# a project\n")
    link = tmp_path / "L"
    link.symlink_to(clone)
    before = snapshot(clone)
    if entry == "dataset":
        from dataset.main import cli

        argv = [
            "--stages",
            "pair",
            "--scored_file",
            str(data_dir / config.SCORED_FILE),
            "--out_dir",
            str(link),
        ]
        target, manifest = link / "dataset", "manifest.json"
    elif entry == "run":
        from train_dpo.train import cli

        argv = ["--model", str(tiny_model_dir), "--output_dir", str(link), "--max_steps", "1"]
        target, manifest = link, "run_config.json"
    elif entry == "sft":
        from train_dpo.sft import cli

        argv = ["--out_dir", str(link / "dataset"), "--epochs", "0.01"]
        target, manifest = link / "dataset", "sft_manifest.json"
    else:
        from common.errors import exits_cleanly
        from common.tiny import build_tiny_gpt2

        cli, argv = exits_cleanly(lambda argv: build_tiny_gpt2(argv[0], data_dir)), [link / "dataset"]
        target, manifest = link / "dataset", "tiny_manifest.json"
    assert error_line(cli, argv) == (
        f"error: {target}: exists and was not written by this project (it has no {manifest}); it is left alone: "
        "move it away or choose another output folder"
    )
    assert snapshot(clone) == before and sorted(path.name for path in tmp_path.iterdir()) == ["L", "clone"]


@pytest.mark.parametrize(
    ("flag", "instead"),
    [("--beta 0.3", "--beta is set by each run of the grid; change the grid in train_dpo/sweep.py (study_grid, frontier_grid)"),
     ("--learning_rate=1e-3", "--learning_rate is set by each run of the grid; change 'lr' or "
      "'frontier_lr' in recipes/<preset>/grid.yaml"),
     ("--seed 3", "--seed is set by each run of the grid; change --seeds"),
     ("--output_dir x", "--output_dir is set by each run of the grid; change --results_dir")],
)  # fmt: skip
def test_train_args_that_the_grid_sets_are_refused_naming_what_to_change(flag, instead, tmp_path, error_line):
    from reproduce import cli

    argv = ["--preset", "tiny", "--results_dir", str(tmp_path / "r"), "--train_args", f"--max_steps 2 {flag}"]
    assert error_line(cli, argv, alone=True) == f"error: --train_args: {instead}"
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_ctrl_c_ends_in_one_line_with_status_130_and_the_rerun_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "dataset/main.py", "--preset", "tiny", "--sft_model", str(tiny_model_dir),
            "--out_dir", str(out), "--stages", "prompts,generate", "--num_prompts", "16", "--num_eval_prompts", "4",
            "--k", "2", "--batch_size", "2", "--max_new_tokens", "8"]  # fmt: skip
    process = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True)
    state = out / "generations.jsonl.state.json"
    while process.poll() is None and not (state.is_file() and json.loads(state.read_text())["records"] > 0):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    err = process.stderr.read()
    assert process.wait() == 130
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        "error: interrupted; finished work and the last checkpoint are kept, rerun the command to resume"
    ), err
    kept = json.loads(state.read_text())["records"]
    assert 0 < kept < 16
    from dataset.main import cli

    cli(argv[2:])  # the same command again, in this process
    assert [json.loads(line)["idx"] for line in (out / "generations.jsonl").read_text().splitlines()] == list(
        range(16)
    )


def other_value(value):
    """A value of the same kind that differs from `value`."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, "x"]
    if isinstance(value, dict):
        return {**value, "x": 1}
    return 1  # None


@pytest.fixture(scope="module")
def base_run():
    """A run's parsed configs and the fingerprint of its settings (the input hashes stand fixed)."""
    from train_dpo.fingerprint import fingerprint_of, run_settings

    script_args, training_args = parse_args(["--model", "m", "--output_dir", "unused"])
    return script_args, training_args, fingerprint_of(run_settings(script_args, training_args), "d", "m")


def retrained(old: dict, new: dict) -> bool:
    """Whether a run recorded with fingerprint `old` is started over, not resumed, under `new`."""
    from train_dpo.fingerprint import discard_stale_checkpoints

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "checkpoint-4").mkdir()
        (Path(folder) / "run_config.json").write_text(json.dumps({"fingerprint": old}))
        discard_stale_checkpoints(folder, new)
        return not (Path(folder) / "checkpoint-4").exists()


def test_changing_any_one_setting_of_a_run_changes_its_hash_and_retrains_it(base_run):
    """Every field of both configs, one at a time (all of them, not a sample)."""
    from train_dpo.fingerprint import UNHASHED, fingerprint_of, run_settings

    script_args, training_args, old = base_run
    assert not retrained(old, old)  # the same run resumes
    checked = 0
    for owner in (script_args, training_args):
        for name in [field.name for field in fields(owner) if field.init]:
            for value in (other_value(getattr(owner, name)), {"x": 1}):  # a dict for config objects
                changed = copy.copy(owner)
                setattr(changed, name, value)
                pair = (changed, training_args) if owner is script_args else (script_args, changed)
                try:
                    new = fingerprint_of(run_settings(*pair), "d", "m")
                    break
                except AttributeError:  # to_dict serialises it as a config object
                    continue
            if name in UNHASHED:  # where the run writes or reports, not what it learns
                assert new == old, name
                continue
            assert new["hash"] != old["hash"] and retrained(old, new), name
            checked += 1
    assert checked > 120  # 142 hashed fields with transformers 5.24 and TRL 1.16: none was skipped


@settings(max_examples=40, deadline=None)
@given(split=st.sampled_from(["train", "test"]), row=st.integers(0, 2), column=st.sampled_from(
    ["prompt", "chosen", "rejected"]), text=st.text(max_size=8))  # fmt: skip
def test_changing_any_one_pair_changes_the_run_hash_and_retrains_it(split, row, column, text):
    from datasets import Dataset, DatasetDict

    from train_dpo.fingerprint import data_sha256, fingerprint_of

    rows = {
        s: [{"prompt": f"{s}{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(3)]
        for s in ("train", "test")
    }
    old = fingerprint_of(
        {}, data_sha256(DatasetDict({s: Dataset.from_list(r) for s, r in rows.items()})), "m"
    )
    if rows[split][row][column] == text:
        return
    rows[split][row][column] = text
    new = fingerprint_of(
        {}, data_sha256(DatasetDict({s: Dataset.from_list(r) for s, r in rows.items()})), "m"
    )
    assert new["hash"] != old["hash"] and retrained(old, new)


@settings(max_examples=40, deadline=None)
@given(
    prompts=st.lists(st.text(max_size=6), min_size=1, max_size=6),
    where=st.integers(0, 5),
    text=st.text(max_size=6),
)
def test_changing_any_one_prompt_changes_the_generations_hash_and_is_refused(prompts, where, text):
    from common.appendlog import AppendLog
    from common.errors import InputError
    from common.generation import Decoding
    from dataset.generate import generation_settings

    where %= len(prompts)
    changed = [*prompts[:where], text, *prompts[where + 1 :]]
    if changed == prompts:
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "generations.jsonl"
        AppendLog(path, generation_settings(prompts, "m", Decoding(), 0, 4)).open()
        with pytest.raises(InputError, match="made with other settings"):
            AppendLog(path, generation_settings(changed, "m", Decoding(), 0, 4)).open()
