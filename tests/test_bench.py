"""Every benchmark runs in its `--quick` mode and reports its ratios (their size is docs/performance.md's business).

Speed is never asserted here: a test suite on a shared machine is no place to time things. What is
checked is that each script still runs end to end against the current code and prints the fields
docs/performance.md quotes.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from common.rewards import native_bf16

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *flags: str) -> list[dict]:
    """The JSON lines a `bench/` script prints."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", *flags],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"')]


def positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


@pytest.mark.slow
def test_train_bench_compares_the_default_with_the_study():
    lines = run_bench("train.py")
    runs = {line["variant"]: line for line in lines if "variant" in line}
    assert set(runs) == {"study", "default"}
    assert runs["study"]["speedup_vs_study"] == 1.0 and positive(runs["default"]["speedup_vs_study"])
    assert positive(runs["default"]["ref_cache_s"]) and runs["study"]["ref_cache_s"] is None
    summary = lines[-1]
    assert all(
        positive(summary[key]) for key in ("speedup", "speedup_with_fill_over_18_runs", "peak_rss_gib")
    )


@pytest.mark.slow
def test_generation_bench_compares_batched_with_the_study_loop():
    (result,) = run_bench("generation.py")
    assert result["decoding"] == "diverse_beam" and result["continuations"] == 6 * result["prompts"]
    assert all(positive(result[key]) for key in ("study_loop_per_s", "batched_per_s", "speedup"))
    assert positive(result["static_cache_speedup"])


@pytest.mark.slow
def test_scoring_bench_compares_fp32_and_bf16_with_the_pipeline_loop():
    (result,) = run_bench("scoring.py")
    assert result["texts"] == 180
    assert all(positive(result[key]) for key in ("speedup", "bf16_speedup", "bf16_vs_float32", "score_range"))
    assert 0 <= result["bf16_max_abs_diff"] < result["score_range"]
    assert abs(result["bf16_mean_shift"]) <= result["bf16_max_abs_diff"]
    assert 0 < result["bf16_same_pairs"] <= 1
    assert result["default_dtype"] == ("bfloat16" if native_bf16("cpu") else "float32")


@pytest.mark.slow
def test_grid_bench_compares_one_at_a_time_with_stacked():
    lines = run_bench("grid.py")
    modes = {line["mode"]: line for line in lines if "mode" in line}
    assert set(modes) == {"one at a time", "stacked by 3"}
    assert all(
        positive(line[key]) for line in modes.values() for key in ("wall_s", "tokens_per_s", "speedup")
    )


@pytest.mark.slow
def test_padding_bench_counts_the_padded_share_of_stacked_batches():
    (result,) = run_bench("padding.py")
    assert result["runs"] == 3 and result["batch"] == 8 and result["steps_per_epoch"] == 8  # 64 pairs
    assert 0 < result["padded_fraction_alone"] <= result["padded_fraction_stacked"] < 1
    assert result["mean_width_alone"] <= result["mean_width_stacked"] <= result["max_length"]


# Every numeric flag of every bench script, with values it must refuse: a count below its meaningful least
# (`--frontier_runs -3` trained all but three of the grid's runs), a fraction, a word, nan, inf.
NOT_A_COUNT = ["abc", "1.5", "nan"]
BELOW_ONE = ["0", "-3", *NOT_A_COUNT]
BELOW_ZERO = ["-1", *NOT_A_COUNT]
BAD_VALUES = {
    "bench.paper_gpu": {
        "--minutes": ["-5", "nan", "inf", "abc"],
        "--prompts": BELOW_ONE, "--dataset_tokens": BELOW_ONE, "--eval_prompts": BELOW_ONE,
        "--train_steps": BELOW_ZERO, "--samples": BELOW_ONE, "--sample_tokens": BELOW_ONE,
        "--test_pairs": BELOW_ONE, "--frontier_runs": [*BELOW_ONE, "127"], "--frontier_steps": BELOW_ONE,
        "--frontier_pairs": BELOW_ONE, "--rloo_steps": BELOW_ZERO, "--rloo_tokens": BELOW_ONE,
    },
    "bench.grid": {
        "--steps": BELOW_ZERO, "--stack_size": BELOW_ONE, "--runs": [*BELOW_ONE, "19"],
        "--pairs": BELOW_ONE, "--parallel": ["0", "1,-2", "1,x", ""],
    },
    "bench.generation": {
        "--prompts": BELOW_ONE, "--batch_size": BELOW_ONE, "--loop_prompts": BELOW_ONE,
        "--max_new_tokens": BELOW_ONE,
    },
    "bench.scoring": {"--prompts": BELOW_ONE, "--batch_size": BELOW_ONE},
    "bench.padding": {"--runs": [*BELOW_ONE, "19"], "--length_buckets": BELOW_ONE},
    "bench.train": {"--steps": BELOW_ONE, "--warmup": [*BELOW_ONE, "40"], "--repeats": BELOW_ONE},
    "bench.help_time": {"--repeats": BELOW_ONE},
}  # fmt: skip
REQUIRED = {"bench.paper_gpu": ["--out"]}  # flags a script needs before it reads any other: a folder
CASES = [(module, flag, value) for module, flags in BAD_VALUES.items() for flag, values in flags.items()
         for value in values]  # fmt: skip


def numeric_flags(module: str) -> set[str]:
    """The flags of a script's parser that take a number (a `type` other than text or a path)."""
    from scripts.build_help import live_parser

    return {
        action.option_strings[-1]
        for action in live_parser(module)._actions
        if action.option_strings and action.type not in (None, str, Path)
    }


@pytest.mark.parametrize("module", sorted(BAD_VALUES))
def test_the_table_covers_every_numeric_flag_of_every_bench_script(module):
    """A flag added later joins the table, or this fails; every script with flags is in it."""
    assert numeric_flags(module) == set(BAD_VALUES[module])


def test_every_bench_script_with_flags_is_in_the_table():
    scripts = {f"bench.{path.stem}" for path in (ROOT / "bench").glob("*.py")
               if "add_argument(" in path.read_text()}  # fmt: skip
    assert scripts == set(BAD_VALUES)


@pytest.mark.parametrize(("module", "flag", "value"), CASES, ids=[f"{m[6:]}{f}={v}" for m, f, v in CASES])
def test_a_bad_number_is_one_error_line_naming_the_flag(
    module, flag, value, tmp_path, monkeypatch, error_line
):
    """Status 2, one `error:` line naming the flag and nothing else on stderr, nothing written: no
    `--out` folder and no scratch folder."""
    import importlib
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "out"
    argv = [*(item for name in REQUIRED.get(module, []) for item in (name, str(out))), f"{flag}={value}"]
    line = error_line(importlib.import_module(module).cli, argv, alone=True)
    assert line.startswith(f"error: argument {flag}: "), line
    # Only the scripts' own scratch folders (bench.harness.scratch_folder) are looked for: libraries make
    # caches of their own in the temp folder the first time a process imports them (torchinductor_<user>,
    # wandb's media), in whichever test that happens to be.
    left = [path.name for path in scratch.iterdir() if path.name.startswith(("bench-", "paper-gpu-"))]
    assert not out.exists() and left == []


def test_the_bench_scripts_take_their_documented_values():
    """The values the docs and recipes use stay accepted: 0 steps (the recipe's epochs), 0 minutes (no
    deadline), `ablation` within a list of variants."""
    from bench import grid, paper_gpu, train

    assert grid.parse_args(["--steps", "0", "--parallel", "1,2"]).parallel == [1, 2]
    assert paper_gpu.parse_args(["--out", "x", "--minutes", "0", "--train_steps", "0"]).minutes == 0
    assert paper_gpu.parse_args(["--out", "x", "--quick"]).frontier_runs == 3
    names = train.parse_args(["--variants", "ablation,default_batch64"]).names
    assert names == [*train.ABLATION, "default_batch64"]


def test_every_scratch_folder_has_a_prefix_the_bad_number_test_looks_for():
    prefixes = re.findall(
        r'scratch_folder\(prefix="([^"]+)"', "".join(p.read_text() for p in (ROOT / "bench").glob("*.py"))
    )
    assert prefixes and all(prefix.startswith(("bench-", "paper-gpu-")) for prefix in prefixes), prefixes
