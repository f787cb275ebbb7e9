"""Padding in stacked training batches: the share of their positions that hold no token.

    poetry run python bench/padding.py                     # the study grid: 18 runs x batch 8, tiny tokenizer
    poetry run python bench/padding.py --model gpt2        # GPT-2's tokenizer (from the Hub or its cache)
    poetry run python bench/padding.py --quick             # 3 runs on 64 pairs: does it run

A stack (`train_dpo/stack.py`) puts one batch of every run into one tensor, padded to its longest row, so
each run's block is as wide as the widest pair of any run. Over one epoch of the grid's stacked batches,
drawn and collated as a stack draws them (`StackedBatchSampler`, `StackCollator` over TRL's collator),
this counts the positions the attention mask leaves out; then the same for run 0's batches alone; then
both again with the batches drawn from length buckets (`--length_buckets`, train_dpo/length_buckets.py). The
pairs are the benchmarks' (`bench.harness.preference_pairs`), paired once as `bench/grid.py` does, and
tokenized by TRL for run 0 (the runs of a stack share everything but `PER_RUN`). Nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import os

from bench.grid import check_runs, grid_jobs, saved_pairs
from bench.harness import model_dir, scratch_folder, stops_cleanly
from common.cli import ArgParser, count_type
from reproduce import read_grid_recipe
from train_dpo.length_buckets import pair_widths
from train_dpo.stack import SOURCE_COLUMN, StackCollator, StackedBatchSampler
from train_dpo.sweep import GRIDS
from train_dpo.train import build_trainer
from train_dpo.train import parse_args as parse_run_args


def padding(batches) -> dict:
    """Padded share of the positions of collated `batches` (chosen and rejected rows); their mean width."""
    positions = tokens = width = count = 0
    for batch in batches:
        mask = batch["attention_mask"]
        positions, tokens = positions + mask.numel(), tokens + int(mask.sum())
        width, count = width + mask.shape[1], count + 1
    return {"padded_fraction": round(1 - tokens / positions, 4), "mean_width": round(width / count, 1)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="whose tokenizer: tiny, or a dir / Hub id (gpt2)")
    parser.add_argument("--preset", default="paper", help="whose training flags: paper (the study's), tiny")
    parser.add_argument("--grid", default="study", choices=list(GRIDS))
    parser.add_argument("--runs", type=count_type(1), default=None, help="only the grid's first N runs")
    parser.add_argument("--quick", action="store_true", help="the grid's first 3 runs on 64 pairs")
    parser.add_argument(
        "--length_buckets",
        type=count_type(1),
        default=None,
        help="the lever's number of buckets, measured beside uniform batches (default 8; 4 with --quick, "
        "whose 64 pairs hold 2 batches a bucket)",
    )
    args = parser.parse_args(argv)
    if args.length_buckets is None:
        args.length_buckets = 4 if args.quick else 8
    if args.quick:
        args.runs = 3
    check_runs(parser, args)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    with scratch_folder(prefix="bench-padding-") as scratch:
        recipe = read_grid_recipe(args.preset)
        flags = ["--model", model_dir(args.model, scratch), "--dataset", saved_pairs(scratch),
                 *recipe["train"], "--save_strategy", "no",
                 *(["--max_train_pairs", "64"] if args.quick else [])]  # fmt: skip
        jobs = grid_jobs(args.grid, args.preset, flags, scratch / "runs")[: args.runs]
        runs = [parse_run_args(run_flags)[1] for _, run_flags, _ in jobs]
        trainer = build_trainer(*parse_run_args(jobs[0][1]))
        pairs = trainer.train_dataset
        rows = pairs.add_column(SOURCE_COLUMN, [0] * len(pairs)).to_list()
        seeds = [run.data_seed if run.data_seed is not None else run.seed for run in runs]
        collate = StackCollator(trainer.data_collator, len(runs))
        result = {"grid": args.grid, "runs": len(runs), "distinct_orders": len(set(seeds)),
                  "batch": trainer.args.train_batch_size, "pairs": len(rows),
                  "max_length": trainer.args.max_length, "tokenizer": args.model,
                  "length_buckets": args.length_buckets}  # fmt: skip
        widths = [pair_widths(pairs)] * len(runs)
        for lever, buckets in (("", 0), ("_bucketed", args.length_buckets)):  # uniform, then the lever
            tables = [range(len(rows))] * len(runs)
            sampler = StackedBatchSampler(tables, seeds, trainer.args.train_batch_size,
                                          trainer.args.dataloader_drop_last, buckets, widths)  # fmt: skip
            stacked = padding(collate([rows[i] for i in batch]) for batch in sampler)
            lone = sampler.run_batches(0)
            alone = padding(trainer.data_collator([rows[i] for i in batch]) for batch in lone)
            result["steps_per_epoch"] = len(sampler)
            for mode, found in (("stacked", stacked), ("alone", alone)):
                result[f"padded_fraction_{mode}{lever}"] = found["padded_fraction"]
                result[f"mean_width_{mode}{lever}"] = found["mean_width"]
    print(json.dumps(result))


cli = stops_cleanly(main)

if __name__ == "__main__":
    cli()
