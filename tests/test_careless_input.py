"""Careless input found by trying the CLIs: each is refused in one line, warned about with a count, or read."""

import json
import logging
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from common.atomic import staging_dir
from common.prompts import load_prompts
from dataset.build import build_dataset
from dataset.main import cli as dataset_cli
from train_dpo.data import load_preference_dataset
from train_dpo.evaluate import read_generations
from train_dpo.train import cli as train_cli

BOM = "\ufeff"


def pairs_file(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in rows))
    return path


def train_argv(model: Path, dataset: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--dataset", str(dataset), "--output_dir", str(out), "--max_steps", "1",
            "--save_strategy", "no", "--logging_steps", "1", *extra]  # fmt: skip


LONG_PROMPT = "The film was a long and winding story about a family"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max_length", "4"],
         "--max_length: all 8 training pairs keep no answer token at --max_length 4 (keep_start)"),
        (["--max_length", "4", "--truncation_mode", "keep_end"],
         "--max_length: all 8 training pairs lose their whole prompt at --max_length 4 (keep_end)"),
    ],
)  # fmt: skip
def test_a_max_length_that_leaves_nothing_to_learn_is_refused(
    extra, message, tiny_model_dir, tmp_path, error_line
):
    data = pairs_file(
        tmp_path / "pairs.jsonl", [(f"Prompt number {i} is here", " good.", " bad.") for i in range(8)]
    )
    line = error_line(train_cli, train_argv(tiny_model_dir, data, tmp_path / "run", *extra))
    assert line == f"error: {message}"
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()


def test_pairs_that_lose_their_answer_are_counted(tiny_model_dir, tmp_path, caplog):
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(tiny_model_dir)(LONG_PROMPT, add_special_tokens=False).input_ids
    max_length = len(tokens)  # the long prompt fills it, so its answers get no token under keep_start
    rows = [(LONG_PROMPT, " good.", " bad.")] * 3 + [("The film", " good.", " bad.")] * 5
    data = pairs_file(tmp_path / "pairs.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="train_dpo"):
        train_cli(train_argv(tiny_model_dir, data, tmp_path / "run", "--max_length", str(max_length),
                             "--truncation_mode", "keep_start"))  # fmt: skip
    assert (
        f"3 of 8 training pairs keep no answer token at --max_length {max_length} (keep_start)" in caplog.text
    )
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()


def test_pairs_whose_answers_are_equal_are_counted_or_refused(tiny_model_dir, tmp_path, error_line, caplog):
    same = pairs_file(
        tmp_path / "same.jsonl", [(f"Prompt {i}", " the same.", " the same.") for i in range(8)]
    )
    line = error_line(train_cli, train_argv(tiny_model_dir, same, tmp_path / "run"))
    assert (
        line
        == "error: the preference data: all 8 training pairs have chosen == rejected (zero margin, nothing to learn)"
    )

    some = pairs_file(
        tmp_path / "some.jsonl", [(f"Prompt {i}", " good.", " good." if i < 2 else " bad.") for i in range(8)]
    )
    with caplog.at_level(logging.WARNING, logger="train_dpo"):
        train_cli(train_argv(tiny_model_dir, some, tmp_path / "run2"))
    assert "2 of 8 training pairs have chosen == rejected" in caplog.text


def test_a_key_written_twice_in_a_yaml_config_is_refused(tmp_path, error_line):
    recipe = tmp_path / "run.yaml"
    recipe.write_text("beta: 0.1\ndivergence: jsd\nbeta: 0.5\n")
    line = error_line(train_cli, ["--config", str(recipe), "--output_dir", str(tmp_path / "run")])
    assert (
        line
        == f"error: --config {recipe}: not valid YAML (duplicate key 'beta' (set it once) at line 3, column 1)"
    )


def test_a_model_that_is_a_file_is_named_as_a_file(tmp_path, error_line):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not a folder")
    line = error_line(train_cli, ["--model", str(weights), "--output_dir", str(tmp_path / "run")])
    assert (
        line
        == f"error: --model {weights}: is a file; expected a model directory (with config.json) or a Hub id"
    )


def test_utf8_files_with_a_byte_order_mark_are_read(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(BOM + json.dumps(["First prompt", "Second prompt"]), encoding="utf-8")
    assert load_prompts(str(prompts)) == ["First prompt", "Second prompt"]
    lines = tmp_path / "prompts.jsonl"
    lines.write_text(BOM + '{"prompt": "One"}\n{"prompt": "Two"}\n', encoding="utf-8")
    assert load_prompts(str(lines)) == ["One", "Two"]

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        BOM + json.dumps({"prompt": "P", "chosen": " a", "rejected": " b"}) + "\n", encoding="utf-8"
    )
    assert load_preference_dataset(str(pairs))["train"][0] == {
        "prompt": "P",
        "chosen": " a",
        "rejected": " b",
    }

    generations = tmp_path / "model.csv"
    generations.write_text(BOM + "prompt,answers\nP,P and more\n", encoding="utf-8")
    assert list(read_generations(generations).columns) == ["prompt", "answers"]

    recipe = tmp_path / "run.yaml"
    recipe.write_text(BOM + "beta: 0.25\n", encoding="utf-8")
    from train_dpo.train import parse_args

    assert parse_args(["--config", str(recipe), "--model", str(tiny_model_dir)])[1].beta == 0.25


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_built_folders_get_the_usual_permissions(tmp_path, umask_022, tiny_model_dir):
    with staging_dir(tmp_path / "target") as scratch:
        assert mode(scratch) == 0o755
    records = [{"prompt": f"p{i}", "answers": [f"p{i} a", f"p{i} b", f"p{i} c", f"p{i} d", f"p{i} e", f"p{i} f"],
                "rm_scores": [6, 5, 4, 3, 2, 1]} for i in range(10)]  # fmt: skip
    build_dataset(records, tmp_path / "out" / "dataset", [(0, 5)], 0.2, 0)
    assert mode(tmp_path / "out" / "dataset") == mode(tmp_path / "out") == 0o755
    from common.tiny import build_tiny_gpt2

    assert mode(build_tiny_gpt2(tmp_path / "models" / "tiny")) == 0o755


def test_dataset_cli_reads_a_prompt_csv_with_a_byte_order_mark(tmp_path, tiny_model_dir):
    csv = tmp_path / "prompts.csv"
    pd.DataFrame({"prompt": [f"Prompt {i}" for i in range(6)]}).to_csv(csv, index=False, encoding="utf-8-sig")
    assert csv.read_bytes().startswith(BOM.encode())
    dataset_cli(["--stages", "prompts", "--prompts", str(csv), "--sft_model", str(tiny_model_dir),
                 "--num_prompts", "4", "--num_eval_prompts", "2", "--out_dir", str(tmp_path / "out")])  # fmt: skip
    saved = json.loads((tmp_path / "out" / "prompts.json").read_text())
    assert sorted(saved["train"] + saved["eval"]) == [f"Prompt {i}" for i in range(6)]
