"""Sweep throughput: training runs one at a time vs several side by side on one GPU, and the study grid's
projected wall time from the measured rates.

    python bench/grid.py --model gpt2-124m --steps 150 --parallel 1,4,8
    poetry run python bench/grid.py --quick                     # tiny GPT-2, CPU, 2 runs side by side

Runs go through `reproduce.py`'s own scheduler (`train_runs`): one at a time in-process, or each in
its own `train_dpo/train.py` process side by side; all at the study's batch 8, reading the shared
reference cache. Per setting it prints the wall time from launch to the last exit, the aggregate
pairs/s, and the grid's projected training time: 18 runs of 3 epochs over the training pairs, in
waves of `parallel` runs, each wave paying the measured start-up.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

from bench.harness import device_name, model_dir, preference_pairs
from train_dpo.sweep import fill_reference_cache, train_runs

GRID_RUNS, EPOCHS = 18, 3  # the study's trained models (the 19th is the SFT policy itself)


def side_by_side(parallel: int, flags: list[str], scratch: Path) -> dict:
    """Train `parallel` runs as `reproduce.py --parallel_runs` does; wall time and the runs' training time."""
    runs = [scratch / f"p{parallel}_run{i}" for i in range(parallel)]
    jobs = [(run, [*flags, "--seed", str(i), "--output_dir", str(run)], {}) for i, run in enumerate(runs)]
    start = time.perf_counter()
    train_runs(jobs, log=lambda message: None, parallel=parallel)
    wall = time.perf_counter() - start
    train_s = [json.loads((run / "train_results.json").read_text())["train_runtime"] for run in runs]
    return {"wall_s": wall, "train_s": max(train_s), "startup_s": wall - max(train_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, gpt2-124m (random weights), or a dir / Hub id")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps of batch 8 per run")
    parser.add_argument("--parallel", default="1,4", help="comma-separated numbers of runs side by side")
    parser.add_argument("--quick", action="store_true", help="tiny runs of 10 steps, 1 and 2 side by side")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.parallel = 10, "1,2"
    settings = [int(k) for k in args.parallel.split(",")]
    os.environ.setdefault("TQDM_DISABLE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        flags = ["--model", model_dir(args.model, scratch), "--dataset", preference_pairs(),
                 "--max_steps", str(args.steps), "--save_strategy", "no", "--logging_steps", "10",
                 "--max_eval_pairs", "8",
                 "--ref_logps_cache", str(scratch / "ref_cache")]  # fmt: skip
        fill_reference_cache([*flags, "--seed", "0"])
        from train_dpo.train import build_trainer, parse_args

        probe = build_trainer(*parse_args([*flags, "--output_dir", str(scratch / "probe")]))
        train_pairs = len(probe.train_dataset)
        del probe
        results = []
        for parallel in settings:
            measured = side_by_side(parallel, flags, scratch)
            pairs = parallel * args.steps * 8
            per_run_rate = args.steps * 8 / measured["train_s"]  # pairs/s of one run while `parallel` share
            wave = measured["startup_s"] + EPOCHS * train_pairs / per_run_rate
            results.append({
                "parallel": parallel,
                "wall_s": round(measured["wall_s"], 1),
                "startup_s": round(measured["startup_s"], 1),
                "pairs_per_s": round(pairs / measured["wall_s"], 1),
                "pairs_per_s_while_training": round(parallel * per_run_rate, 1),
                "projected_grid_training_min": round(math.ceil(GRID_RUNS / parallel) * wave / 60, 1),
            })  # fmt: skip
    for result in results:
        result["speedup_vs_one_at_a_time"] = round(
            results[0]["projected_grid_training_min"] / result["projected_grid_training_min"], 2
        )
        print(json.dumps(result))
    summary = {"model": args.model, "device": device_name(), "steps": args.steps, "train_pairs": train_pairs}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
