"""Reproduce the whole study with one command: dataset, the grid of runs, eval generation, evaluation,
results table, figures and the executed notebook.

    poetry run python reproduce.py --preset tiny              # offline, 2 CPU cores, ~10 minutes
    poetry run python reproduce.py --preset paper             # the study's models and data (GPU)
    poetry run python reproduce.py --preset tiny --dry-run    # print the plan only
    poetry run python reproduce.py --preset tiny --only jsd,alpha --seeds 3 --extended

Everything lands in results/<preset>/: data/, runs/<run name>/, generations/, eval/, figures/ and
results.ipynb. Finished work is never redone (each run has a manifest with its config hash); a killed
sweep resumes where it stopped, each run from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import config
from dataset.appendlog import settings_hash
from dataset.atomic import write_atomic
from dataset.lock import output_lock
from errors import InputError, exits_cleanly
from train_dpo.sweep import is_finished, run_flags, run_status, select, study_grid, train_runs

logger = logging.getLogger("reproduce")

# Per preset: where the base policy comes from, and the flags of every stage.
PRESETS = {
    "tiny": {
        "sft": "train",  # a tiny GPT-2 trained from scratch by train_dpo/sft.py
        "dataset": [
            "--preset",
            "tiny",
            "--num_prompts",
            "512",
            "--num_eval_prompts",
            "100",
            "--max_new_tokens",
            "48",
        ],  # fmt: skip
        "train": [
            "--max_length",
            "128",
            "--num_train_epochs",
            "1",
            "--save_steps",
            "40",
            "--logging_steps",
            "10",
            "--max_eval_pairs",
            "64",
        ],  # fmt: skip
        "lr": {"reverse_kl": 5e-3, "f": 5e-4},  # the study's 10x ratio between DPO and the f-divergences
        "generate": ["--samples", "4", "--max_new_tokens", "32", "--batch_size", "64"],
        "evaluate": ["--reward_model", "vader", "--max_test_pairs", "128"],
    },
    "paper": {
        "sft": config.SFT_MODEL,
        "dataset": ["--preset", "paper"],
        "train": ["--num_train_epochs", "3", "--per_device_train_batch_size", "8", "--save_steps", "200"],
        "lr": {"reverse_kl": 1e-4, "f": 1e-5},
        "generate": ["--samples", "4", "--max_new_tokens", "64"],
        "evaluate": ["--reward_model", config.REWARD_MODEL],
    },
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=list(PRESETS), required=True)
    parser.add_argument("--only", default=None, help="comma-separated run families, e.g. jsd,alpha,sigmoid")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per configuration")
    parser.add_argument("--extended", action="store_true", help="add alpha 0.1/0.9, Jeffreys, Neyman chi^2")
    parser.add_argument(
        "--parallel_runs",
        type=int,
        default=None,
        help="runs trained side by side, each in its own process (default: one per GPU, 1 on CPU)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    parser.add_argument("--results_dir", default=None, help="default: results/<preset>")
    parser.add_argument(
        "--sft_epochs", type=float, default=2.0, help="tiny preset: SFT epochs of the base policy"
    )
    for stage in ("dataset", "train", "generate", "evaluate"):
        parser.add_argument(
            f"--{stage}_args", default="", help=f"extra flags for the {stage} stage (override the preset)"
        )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        raise InputError(f"--seeds must be >= 1, got {args.seeds}")
    if args.parallel_runs is not None and args.parallel_runs < 1:
        raise InputError(f"--parallel_runs must be >= 1, got {args.parallel_runs}")
    check_train_args(args.train_args)
    return args


# Flags that each grid run sets itself (a later flag wins, so one in --train_args would be silently
# overridden while the manifest records it), and where to change them instead.
GRID_FLAGS = {
    "--beta": "the grid in train_dpo/sweep.py (study_grid)",
    "--loss_type": "the grid in train_dpo/sweep.py (study_grid)",
    "--divergence": "the grid in train_dpo/sweep.py (study_grid)",
    "--alpha": "the grid in train_dpo/sweep.py (study_grid)",
    "--learning_rate": "the preset's 'lr' in reproduce.py (PRESETS)",
    "--seed": "--seeds",
    "--output_dir": "--results_dir",
    "--resume": "nothing: every run resumes",
}


def check_train_args(train_args: str) -> None:
    """Refuse flags in --train_args that each grid run sets, naming what to change instead."""
    for flag in train_args.split():
        name = flag.split("=", 1)[0]
        if name in GRID_FLAGS:
            raise InputError(
                f"--train_args: {name} is set by each run of the grid; change {GRID_FLAGS[name]}"
            )


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    started = time.time()
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    root = Path(args.results_dir or config.RESULTS_DIR / args.preset)
    try:
        grid = select(study_grid(args.extended, args.seeds), args.only)
    except ValueError as error:
        raise InputError(str(error)) from None

    sft_dir = config.MODELS_DIR / "tiny-gpt2-sft"  # shared by every tiny sweep
    base = str(sft_dir) if preset["sft"] == "train" else preset["sft"]
    data_dir = root / "data"
    # Reference log-probs depend only on the base policy and the pairs: computed once, shared by all runs.
    common = ["--model", base, "--dataset", str(data_dir / "dataset" / "hf"), "--ref_logps_cache",
              str(root / "ref_logps"), *preset["train"], *args.train_args.split()]  # fmt: skip
    runs = []
    for spec in grid:
        lr = preset["lr"]["reverse_kl" if spec.divergence == "reverse_kl" else "f"]
        run_dir = root / "runs" / spec.name(with_seed=args.seeds > 1)
        runs.append((run_dir, run_flags(spec, common, lr, run_dir)))
    upstream = upstream_inputs(args, base, data_dir)  # as things stand; the real build may change them
    plan = [(run_dir.name, run_status(run_dir, run_inputs(flags, upstream))) for run_dir, flags in runs]

    print(f"plan for preset '{args.preset}' -> {root}")
    if preset["sft"] == "train":
        print(
            f"  base policy: {'cached' if (sft_dir / 'sft_manifest.json').is_file() else 'train'} {sft_dir}"
        )
    print(f"  dataset: {data_dir / 'dataset'} (each stage resumes or is skipped when complete)")
    for name, status in plan:
        print(f"  run {name}: {status}")
    print(f"  then: eval generation for {len(grid) + 1} models, evaluation, figures, notebook")
    if args.dry_run:
        return
    with output_lock(root):  # one sweep per results folder; its runs and dataset lock their own folders
        run_stages(args, preset, root, grid, runs, started, argv)


def run_stages(args, preset: dict, root: Path, grid, runs, started: float, argv) -> None:
    """Base policy, dataset, training runs, eval generation, evaluation, notebook, in that order."""
    sft_dir = config.MODELS_DIR / "tiny-gpt2-sft"
    base = str(sft_dir) if preset["sft"] == "train" else preset["sft"]
    data_dir = root / "data"
    if preset["sft"] == "train":
        from train_dpo.sft import train_sft

        train_sft(sft_dir, epochs=args.sft_epochs)
    from dataset.main import main as build_dataset

    build_dataset(
        [*preset["dataset"], "--sft_model", base, "--out_dir", str(data_dir), *args.dataset_args.split()]
    )
    upstream = upstream_inputs(args, base, data_dir)  # now of the base policy and dataset just built
    jobs = [(run_dir, flags, inputs) for run_dir, flags in runs
            if not is_finished(run_dir, inputs := run_inputs(flags, upstream))]  # fmt: skip
    train_runs(jobs, logger.info, args.parallel_runs)

    from train_dpo.evaluate import main as evaluate
    from train_dpo.generate import main as generate

    models = [base, *(str(root / "runs" / spec.name(with_seed=args.seeds > 1)) for spec in grid)]
    prompts = str(data_dir / "dataset" / "eval_prompts.json")
    generations, tables = str(root / "generations"), str(root / "eval")
    generate(["--models", *models, "--prompts", prompts, "--out_dir", generations, *preset["generate"],
              *args.generate_args.split()])  # fmt: skip
    evaluate(["--generations", generations, "--tokenizer", base, "--out_dir", tables, *preset["evaluate"],
              *args.evaluate_args.split()])  # fmt: skip
    execute_notebook(root)
    elapsed = time.time() - started
    command = "poetry run python reproduce.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_atomic(
        root / "reproduce.json", json.dumps({"command": command, "wall_time_s": round(elapsed)}, indent=2)
    )
    print(f"done in {elapsed / 60:.1f} min: {root / 'eval' / 'summary.md'}, {root / 'results.ipynb'}")


def upstream_inputs(args, base: str, data_dir: Path) -> dict:
    """What every run depends on beyond its own flags: the base policy and the pairs' content.

    The pairs are named by the SHA-256s their dataset's manifest records (None before it is built), the
    tiny base policy by its SFT manifest's settings hash; a Hub id stands for itself.
    """
    dataset = read_json(data_dir / "dataset" / "manifest.json").get("files")
    sft = read_json(Path(base) / "sft_manifest.json").get("settings_hash")
    return {"preset": args.preset, "sft_epochs": args.sft_epochs, "dataset_args": args.dataset_args,
            "dataset": dataset and settings_hash(dataset), "base_model": sft or base}  # fmt: skip


def run_inputs(flags: list[str], upstream: dict) -> dict:
    """A run's resolved settings (as train.py fingerprints them) beside its upstream inputs, as JSON reads
    them back, so that a manifest's record compares equal to a fresh one."""
    from train_dpo.fingerprint import run_settings
    from train_dpo.train import parse_args as parse_train_args

    inputs = {"settings": run_settings(*parse_train_args(flags)), **upstream}
    return json.loads(json.dumps(inputs, default=str))


def read_json(path: Path) -> dict:
    """A JSON object from `path`, or {} when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def execute_notebook(root: Path) -> None:
    """Run results.ipynb on this preset's tables and keep the executed copy beside them."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(Path(__file__).resolve().parent / "results.ipynb", as_version=4)
    previous = os.environ.get("FDPO_RESULTS_DIR")
    os.environ["FDPO_RESULTS_DIR"] = str(root)
    try:
        NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
    finally:
        if previous is None:
            del os.environ["FDPO_RESULTS_DIR"]
        else:
            os.environ["FDPO_RESULTS_DIR"] = previous
    write_atomic(root / "results.ipynb", nbformat.writes(notebook))


cli = exits_cleanly(main)

if __name__ == "__main__":
    cli()
