"""Grid training throughput: the runs of a grid one at a time vs stacked as LoRA adapters over one base
model (`train_dpo/stack.py`), measured in the same process on the same pairs.

    poetry run python bench/grid.py --grid study --steps 30            # tiny GPT-2, CPU: the 18-run grid
    poetry run python bench/grid.py --grid frontier --steps 30         # the frontier grid, 3 seeds: 126 runs
    python bench/grid.py --model gpt2-124m --grid study --preset paper --steps 60   # GPU: GPT-2 small
    python bench/grid.py --model gpt2-124m --preset paper --steps 0 --stacked_only   # GPU: the whole grid
    poetry run python bench/grid.py --parallel 1,2 --steps 10          # runs side by side, one process each
    poetry run python bench/grid.py --quick                            # 3 runs, 4 steps: does it run

Every run trains `--steps` optimizer steps on the preset's training flags (recipes/<preset>/grid.yaml)
and its learning rate on that grid, reading a reference cache filled beforehand, so the two modes do the
same work. Both go through `reproduce.py`'s scheduler (`train_runs`); the ratio of their wall times is
the speed-up. On a GPU it also reports each mode's model FLOPs utilisation: 4 x parameters x
tokens per second (a forward pass and the input gradients; the frozen base has no weight gradient)
over the GPU's dense bf16 peak, over the whole wall time (`mfu`) and inside the training loops alone
(`loop_mfu`: the runs' set-up and split left out), and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench.harness import (
    base_parameters,
    device_name,
    frozen_base_mfu,
    gpu_peak_gib,
    loop_seconds,
    model_dir,
    preference_pairs,
    reset_gpu_peak,
    scratch_folder,
    stops_cleanly,
    trained_tokens,
)
from common.cli import ArgParser, count_type
from dataset.main import main as build_dataset
from reproduce import learning_rate, read_grid_recipe
from train_dpo.sweep import GRIDS, fill_reference_cache, run_flags, train_runs


def grid_jobs(grid: str, preset: str, flags: list[str], scratch: Path) -> list[tuple[Path, list[str], dict]]:
    """One job per run of the grid, as reproduce.py builds them (its learning rates, one seed)."""
    recipe = read_grid_recipe(preset)
    specs = GRIDS[grid]()  # the frontier grid with its 3 seeds
    return [(scratch / spec.name(with_seed=True), run_flags(spec, flags, learning_rate(recipe, grid, spec),
             scratch / spec.name(with_seed=True)), {}) for spec in specs]  # fmt: skip


def saved_pairs(scratch: Path) -> str:
    """The benchmark's pairs as one saved dataset, as `reproduce.py` trains on.

    A scored file paired on the fly is split by prompt with each run's seed, so runs of different seeds
    would train on different pairs (and could not share a stack); pairing it once with seed 0 gives
    every run the same ones.
    """
    pairs = preference_pairs()
    if not pairs.endswith(".json"):
        return pairs
    build_dataset(["--stages", "pair", "--scored_file", pairs, "--out_dir", str(scratch / "data")])
    return str(scratch / "data" / "dataset" / "hf")


def steps_done(run_dir: Path) -> int:
    return json.loads((run_dir / "trainer_state.json").read_text())["global_step"]


def measure(jobs, stack_size: int, parallel: int, scratch: Path) -> dict:
    """Wall time of training every job, `stack_size` at a time (1: one by one), `parallel` side by side."""
    reset_gpu_peak()
    start = time.perf_counter()
    train_runs(jobs, log=lambda message: None, parallel=parallel, stack_size=stack_size, stacks_dir=scratch)
    wall = time.perf_counter() - start
    run_dirs = [run_dir for run_dir, _, _ in jobs]
    tokens, loop = trained_tokens(run_dirs), loop_seconds(run_dirs, scratch)
    return {
        "wall_s": round(wall, 1),
        "tokens_per_s": round(tokens / wall),
        "loop_s": round(loop, 1),  # inside the training loops: the runs' set-up and split left out
        "loop_tokens_per_s": round(tokens / loop),
        "steps_per_run": max(steps_done(run_dir) for run_dir, _, _ in jobs),
        "gpu_peak_gib": gpu_peak_gib(),
    }


def process_counts(text: str) -> list[int]:
    """`--parallel 1,2`: the numbers of processes side by side, each >= 1."""
    count = count_type(1)
    try:
        return [count(item) for item in text.split(",")]
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"comma-separated process counts: {error}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, gpt2-124m (random weights), or a dir / Hub id")
    parser.add_argument(
        "--preset", default="tiny", help="whose training flags and learning rates: tiny, paper"
    )
    parser.add_argument("--grid", default="study", choices=list(GRIDS))
    parser.add_argument(
        "--steps", type=count_type(0), default=30, help="optimizer steps per run; 0: the recipe's epochs"
    )
    parser.add_argument(
        "--stack_size", type=count_type(1), default=18, help="runs per stack in the stacked mode"
    )
    parser.add_argument(
        "--runs", type=count_type(1), default=None, help="only the grid's first N runs (a quick look)"
    )
    parser.add_argument(
        "--pairs",
        type=count_type(1),
        default=None,
        help="train on N of the pairs (runs of one seed share them)",
    )
    parser.add_argument(
        "--parallel",
        type=process_counts,
        default=None,
        help="instead: one at a time vs N processes side by side (comma-separated Ns)",
    )
    parser.add_argument("--stacked_only", action="store_true", help="time the stacked mode alone")
    parser.add_argument("--quick", action="store_true", help="the grid's first 3 runs, 4 steps, one stack")
    args = parser.parse_args(argv)
    if args.stacked_only and args.parallel:
        parser.error("--stacked_only times the stacked mode; --parallel times runs side by side: choose one")
    if args.quick:
        args.runs, args.steps, args.stack_size = 3, 4, 3
    check_runs(parser, args)
    return args


def check_runs(parser, args) -> None:
    """`--runs` at most the grid's size: more would train the whole grid while the report counted more."""
    size = len(GRIDS[args.grid]())
    if args.runs is not None and args.runs > size:
        parser.error(f"argument --runs: the {args.grid} grid has {size} runs, got {args.runs}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    with scratch_folder(prefix="bench-grid-") as scratch:
        recipe = read_grid_recipe(args.preset)
        pairs = saved_pairs(scratch)
        # A whole run logs every 10 steps: its token count then misses at most the last 9 steps' tokens.
        flags = ["--model", model_dir(args.model, scratch), "--dataset", pairs, *recipe["train"],
                 "--max_steps", str(args.steps or -1), "--save_strategy", "no",
                 "--logging_steps", str(args.steps or 10),
                 "--max_eval_pairs", "8", "--ref_logps_cache", str(scratch / "ref_cache")]  # fmt: skip
        if args.pairs:
            flags += ["--max_train_pairs", str(args.pairs)]
        parameters = base_parameters(flags[1])
        fill_reference_cache([*flags, "--seed", "0"])

        def jobs(mode: str):
            return grid_jobs(args.grid, args.preset, flags, scratch / mode)[: args.runs]

        modes = {} if args.stacked_only else {"one at a time": (1, 1)}
        if args.parallel:
            modes.update({f"{n} side by side": (1, n) for n in args.parallel if n > 1})
        else:
            modes[f"stacked by {args.stack_size}"] = (args.stack_size, 1)
        results = {mode: measure(jobs(mode), size, parallel, scratch / f"{mode} stacks")
                   for mode, (size, parallel) in modes.items()}  # fmt: skip
    base = results["one at a time"]["wall_s"] if "one at a time" in results else None
    runs = len(grid_jobs(args.grid, args.preset, flags, Path("."))[: args.runs])
    for mode, result in results.items():
        result.update(mode=mode, speedup=round(base / result["wall_s"], 2) if base else None)
        result["mfu"] = frozen_base_mfu(parameters, result["tokens_per_s"])
        result["loop_mfu"] = frozen_base_mfu(parameters, result["loop_tokens_per_s"])
        print(json.dumps(result))
    print(json.dumps({"grid": args.grid, "runs": runs, "steps": args.steps, "model": args.model,
                      "parameters": parameters, "preset": args.preset, "device": device_name()}))  # fmt: skip


cli = stops_cleanly(main)

if __name__ == "__main__":
    cli()
