"""Seconds each entry point takes to print `--help`, run as a user runs it (a fresh interpreter each time).

    poetry run python bench/help_time.py                 # 5 repeats of each; JSON on stdout
    poetry run python bench/help_time.py --repeats 3 --flag=--help-all
    git archive HEAD~1 | tar -x -C /tmp/before && \
    poetry run python bench/help_time.py --repeats 3 --baseline /tmp/before   # before/after, same load

Each command runs with this interpreter (not through `poetry run`, whose own start-up, ~0.5 s, is the same
for every command) from the checkout's root. The figure per entry point is the median of the repeats,
with the min and max beside it: on a shared machine one slow start says little, so compare medians taken
in the same call. `--baseline` times another copy of the checkout too, alternating run by run with this
one so that both see the same load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import stops_cleanly
from common.cli import ArgParser, count_type
from common.errors import RunFailed

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {  # what a user types after `python`
    "reproduce.py": ["reproduce.py"],
    "dataset/main.py": ["dataset/main.py"],
    "train_dpo/train.py": ["train_dpo/train.py"],
    "train_dpo/sft.py": ["train_dpo/sft.py"],
    "train_dpo/generate.py": ["train_dpo/generate.py"],
    "train_dpo/evaluate.py": ["train_dpo/evaluate.py"],
    "train_dpo/stack.py": ["train_dpo/stack.py"],
    "-m train_dpo.train": ["-m", "train_dpo.train"],
    "-m train_dpo.stack": ["-m", "train_dpo.stack"],
}


def seconds(command: list[str], root: Path) -> float:
    """Wall-clock seconds of one `python <command>` run in `root`; a non-zero exit is an error, not a time."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *command], cwd=root, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RunFailed(f"python {' '.join(command)} exited {done.returncode}: {last}", done.returncode)
    return elapsed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=count_type(1), default=5, help="runs of each command")
    parser.add_argument("--flag", default="--help", help="the help flag to pass: -h, --help or --help-all")
    parser.add_argument("--only", nargs="*", default=None, help="entry points to time (default: all)")
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to time alongside")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    roots = {"seconds": REPO, **({"baseline_seconds": args.baseline.resolve()} if args.baseline else {})}
    report = {"flag": args.flag, "repeats": args.repeats, **{key: {} for key in roots}}
    for name, command in COMMANDS.items():
        if args.only and name not in args.only:
            continue
        runs = {key: [] for key in roots}
        for _ in range(args.repeats):
            for key, root in roots.items():
                runs[key].append(seconds([*command, args.flag], root))
        for key, times in runs.items():
            report[key][name] = {
                "median_s": round(statistics.median(times), 3),
                "min_s": round(min(times), 3),
                "max_s": round(max(times), 3),
            }
    print(json.dumps(report, indent=2))


cli = stops_cleanly(main)  # Ctrl-C or SIGTERM: subprocess.run kills the command it waits for

if __name__ == "__main__":
    cli()
