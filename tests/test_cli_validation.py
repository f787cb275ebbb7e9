"""Bad flags at the two entry points: exit status 2 and one `error:` line, before any model or data loads.

Complements the cases in test_train.py and test_dataset_main.py (those need the tiny model; these do not).
"""

import json

import pytest
import torch

from dataset.main import cli as dataset_cli
from train_dpo.train import cli as train_cli
from train_dpo.train import parse_args


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--beta", "-1"], "--beta must be > 0, got -1.0"),
        (["--beta", "nan"], "--beta must be a finite number, got nan"),
        (["--beta", "inf"], "--beta must be a finite number, got inf"),
        (["--beta", "abc"], "argument --beta: invalid float value: 'abc'"),
        (["--divergence", "alpha", "--alpha", "0"], "alpha must lie in (0, 1), got 0.0"),
        (["--divergence", "alpha", "--alpha", "1"], "alpha must lie in (0, 1), got 1.0"),
        (["--divergence", "alpha", "--alpha", "-0.3"], "alpha must lie in (0, 1), got -0.3"),
        (["--divergence", "alpha", "--alpha", "1e-9"], "alpha 1e-09 is too small"),
        (["--divergence", "kl"], "unknown divergence 'kl'"),
        (["--loss_type", "nope"], "--loss_type: unknown loss type nope"),
        (["--loss_type", "sigmoid", "sigmod"], "--loss_type: unknown loss type sigmod"),
        (["--divergence", "forward_kl", "--loss_type", "robust"], "has no f-divergence form"),
        (["--divergence", "jsd", "--f_divergence_type", "alpha_divergence"], "not TRL's --f_divergence_type"),
        (["--divergence", "jsd", "--alpha", "0.5"], "--alpha is only used with --divergence alpha"),
        (
            ["--divergence", "jsd", "--ld_alpha", "0.5"],
            "--ld_alpha and --use_weighting are TRL's, for reverse_kl only",
        ),
        (
            ["--max_prompt_length", "128"],
            "--max_prompt_length was removed in TRL 1: longer prompts are dropped",
        ),
        (["--max_completion_length=64"], "--max_completion_length was removed in TRL 1"),
        (["--test_size", "1"], "--test_size must lie in [0, 1)"),
        (["--max_train_pairs", "0"], "--max_train_pairs must be >= 1"),
        (["--use_peft", "maybe"], "argument --use_peft"),
        (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
        (["--no_such_flag", "1"], "error: unknown flag(s): --no_such_flag 1 (see --help)"),
        (["--config"], "--config needs a YAML file path"),
        (["--config", "missing.yaml"], "--config missing.yaml: cannot read (No such file or directory)"),
        (["--config", "."], "--config .: cannot read (Is a directory)"),
    ],
)
def test_train_flags(flags, message, tmp_path, error_line):
    line = error_line(train_cli, ["--output_dir", str(tmp_path / "run"), *flags], alone=True)
    assert message in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("beta: [0.1", "not valid YAML"),
        ("- beta\n- 0.1\n", "expected a mapping of option: value, got a list"),
        ("beta: 0.1\nbetta: 0.2\n", "unknown option 'betta'"),
        ("seed: 1.5\n", "recipe.yaml: seed: expected an integer, got 1.5"),
        ("beta: fast\n", "recipe.yaml: argument --beta: invalid float value: 'fast'"),
        ("use_peft: [true]\n", "use_peft: expected a single value, not a list"),
        ("divergence: alpha\nalpha: 0\n", "alpha must lie in (0, 1)"),
    ],
)
def test_train_config_files(yaml_text, message, tmp_path, error_line):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml_text)
    line = error_line(train_cli, ["--config", str(recipe), "--output_dir", str(tmp_path / "run")], alone=True)
    assert message in line


@pytest.mark.parametrize("yaml_text", ["", "# settings to come\n\n"])
def test_an_empty_config_file_sets_nothing(yaml_text, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml_text)
    flags = ["--output_dir", str(tmp_path / "run"), "--beta", "0.5"]
    assert parse_args(["--config", str(recipe), *flags]) == parse_args(flags)


def test_config_equals_path_reads_the_file_as_config_space_path(tmp_path, error_line):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("beta: 0.5\nseed: 7\n")
    flags = ["--output_dir", str(tmp_path / "run"), "--seed", "3"]
    joined = parse_args([f"--config={recipe}", *flags])
    assert joined == parse_args(["--config", str(recipe), *flags])
    assert (joined[1].beta, joined[1].seed) == (0.5, 3)  # the file's value, and a flag over the file's
    line = error_line(train_cli, ["--config=missing.yaml", *flags], alone=True)
    assert line == "error: --config missing.yaml: cannot read (No such file or directory)"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--pairs", "3-0"], "pair (3, 0) must rank the chosen answer above the rejected one"),
        (["--pairs", "2-2"], "pair (2, 2) must rank the chosen answer above the rejected one"),
        (["--pairs", "1--3"], "--pairs must look like '0-3,0-4'"),
        (["--pairs", "0-3,"], "--pairs must look like '0-3,0-4'"),
        (["--k", "4"], "--pairs: pair index (0, 4) out of range for K=4"),
        (["--k", "8", "--pairs", "0-8"], "--pairs: pair index (0, 8) out of range for K=8"),
        (["--test_size", "1"], "--test_size must lie in [0, 1)"),
        (["--test_size", "-0.1"], "--test_size must lie in [0, 1)"),
        (["--num_eval_prompts", "-1"], "--num_eval_prompts must be >= 0"),
        (["--stages", ","], "--stages: no stage given"),
        (["--decoding", "sample", "--top_p", "0"], "sampling needs 0 < --top_p <= 1"),
        (
            ["--decoding", "sample", "--temperature", "0"],
            "sampling needs 0 < --top_p <= 1, --temperature > 0",
        ),
        (["--max_new_tokens", "0"], "--max_new_tokens must be >= 1"),
        (["--num_prompts", "many"], "invalid int value: 'many'"),
        (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    ],
)
def test_dataset_flags(flags, message, tmp_path, error_line):
    out = tmp_path / "out"
    line = error_line(dataset_cli, [*flags, "--out_dir", str(out)], alone=True)
    assert message in line
    assert not out.exists()


def test_dataset_pairs_beyond_the_scored_files_answers(tmp_path, error_line):
    scored = tmp_path / "scored.json"
    scored.write_text(
        json.dumps([{"prompt": "p", "answers": ["a", "b", "c", "d"], "rm_scores": [4, 3, 2, 1]}])
    )
    flags = ["--stages", "pair", "--scored_file", str(scored), "--out_dir", str(tmp_path / "out")]
    line = error_line(dataset_cli, flags, alone=True)
    assert "--pairs: pair index (0, 4) out of range for K=4" in line
    assert not (tmp_path / "out" / "dataset").exists()


def test_dataset_scored_file_with_a_nan_score(tmp_path, error_line):
    scored = tmp_path / "scored.json"
    scored.write_text('[{"prompt": "p", "answers": ["a", "b"], "rm_scores": [NaN, 1.0]}]')
    flags = ["--stages", "pair", "--scored_file", str(scored), "--pairs", "0-1", "--out_dir", str(tmp_path)]
    line = error_line(dataset_cli, flags, alone=True)
    assert line == f"error: {scored}: record 0 has a score that is not a finite number"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_bf16_without_a_gpu_names_the_way_out(tmp_path, error_line):
    line = error_line(train_cli, ["--bf16", "true", "--output_dir", str(tmp_path / "run")], alone=True)
    assert line == "error: --bf16 true without a GPU needs --use_cpu true (bf16 autocast on the CPU)"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("module", "flags", "message"),
    [
        (
            "reproduce",
            ["--preset", "tiny", "--dry"],
            "error: unrecognized arguments: --dry",
        ),  # no abbreviation
        ("reproduce", ["--preset", "huge"], "error: argument --preset: invalid choice: 'huge'"),
        ("train_dpo.sft", ["--epoch", "3"], "error: unrecognized arguments: --epoch 3"),
        (
            "train_dpo.stack",
            ["--runs", "runs.json"],
            "error: the following arguments are required: --stack_dir",
        ),
    ],
)
def test_the_plain_argparse_entry_points_fail_in_one_line(module, flags, message, error_line):
    """reproduce.py, sft.py and stack.py: a bad flag is one `error:` line, no usage text (common.cli.ArgParser)."""
    import importlib

    assert error_line(importlib.import_module(module).cli, flags, alone=True).startswith(message)
