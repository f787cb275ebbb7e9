"""Every benchmark runs in its `--quick` mode and reports its ratios (their size is docs/performance.md's business).

Speed is never asserted here: a test suite on a shared machine is no place to time things. What is
checked is that each script still runs end to end against the current code and prints the fields
docs/performance.md quotes.
"""

import json
import os
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
