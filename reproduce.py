"""Reproduce the whole study with one command: dataset, the grid of runs, eval generation, evaluation,
results table, figures and the executed notebook.

    poetry run python reproduce.py --preset tiny              # offline, 2 CPU cores, ~10 minutes
    poetry run python reproduce.py --preset paper             # the study's models and data (GPU)
    poetry run python reproduce.py --preset tiny --dry-run    # print the plan only
    poetry run python reproduce.py --preset tiny --only jsd,alpha --seeds 3 --extended
    poetry run python reproduce.py --preset tiny --grid frontier   # one lr, a beta sweep, 5 seeds: matched KL
    poetry run python reproduce.py --preset tiny --grid frontier --no_rloo   # without the online-RL baseline
    poetry run python reproduce.py --preset tiny --grid frontier --pairs sampled   # pairs sampled as RLOO is

Everything lands in results/<preset>/ (results/<preset>-frontier[-sampled]/ for the frontier grid): data/,
runs/<run name>/, generations/, eval/, figures/ and results.ipynb. Finished work is never redone (each run
has a manifest with its config hash); a killed sweep resumes where it stopped, each run from its last
checkpoint.
"""

from __future__ import annotations

import common.help  # noqa: F401  (first: answers --help before the heavy imports below)

# isort: split
import argparse
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

import config
from common import imdb
from common.appendlog import settings_hash
from common.atomic import write_atomic
from common.cli import ArgParser, presets, read_recipe, recipe_path
from common.errors import InputError, exits_cleanly
from common.lock import output_lock
from common.readers import check_model_folder
from common.rewards import LEXICONS
from common.secrets import refuse_secrets_in_configs
from train_dpo.divergences import get_divergence
from train_dpo.losses import ONLINE_LOSS
from train_dpo.sweep import (
    GRIDS,
    RLOO_BETAS,
    check_unique_names,
    frontier_grid,
    is_finished,
    planned_statuses,
    run_flags,
    run_status,
    select,
    study_grid,
    train_runs,
)

logger = logging.getLogger("reproduce")

STAGES = ("dataset", "train", "generate", "evaluate")
DEFAULT_STACK_SIZE = 18  # the study's grid; memory grows with it (the batch is this many runs' batches)


def as_flags(values: dict) -> list[str]:
    """A recipe's {option: value} as the command-line flags that set them."""
    flags = []
    for key, value in values.items():
        items = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *(str(item).lower() if isinstance(item, bool) else str(item) for item in items)]
    return flags


def read_grid_recipe(preset: str, args: argparse.Namespace | None = None) -> dict:
    """`recipes/<preset>/grid.yaml`: the base policy, each stage's flags, learning rates and rewards.

    Each stage's mapping becomes flags under one precedence rule, flag > `--config` > recipe > default: a
    setting that the stage's extra flags in `args` give, or a `--config` file among them, is dropped from
    the recipe's flags, which would else outrank the `--config` (the stage reads the recipe's as flags).
    A setting the grid owns (`SWEEP_OWNED`) is refused in every channel: the recipe's mapping, the stage's
    own recipe it names by `preset`, the extra flags and their `--config` files.

    With `--pairs sampled` in `args`, the recipe's `sampled_pairs` mapping is layered over its `dataset`
    mapping (its settings win), so the frontier grid's pairs come from the SFT policy sampled as the
    online-RL runs sample it; the mapping is checked whichever source is asked for.
    """
    recipe = read_recipe(preset, "grid")
    required = ("sft", *STAGES, "lr", "frontier_lr", "reward", "gold_reward")
    missing = [key for key in required if key not in recipe]
    if missing:
        raise InputError(f"{recipe_path(preset, 'grid')}: missing {', '.join(missing)}")
    optional = ("rloo",) if "rloo" in recipe else ()  # a preset may have no online-RL baseline
    for stage in (*STAGES, *optional, *(SAMPLED_PAIRS,) * (SAMPLED_PAIRS in recipe)):
        if not isinstance(recipe[stage], dict):
            raise InputError(f"{recipe_path(preset, 'grid')}: {stage}: expected a mapping of option: value")
    if SAMPLED_PAIRS in recipe:  # refused here whichever source is asked for: a recipe error shows at once
        check_sweep_owned("dataset", recipe[SAMPLED_PAIRS], [], preset, SAMPLED_PAIRS)
    if getattr(args, "pairs", "beam") == "sampled":
        if SAMPLED_PAIRS not in recipe:
            raise InputError(
                f"{recipe_path(preset, 'grid')}: no {SAMPLED_PAIRS} mapping, which --pairs sampled layers "
                "over its dataset mapping; add one (recipes/tiny/grid.yaml has it) or leave --pairs out"
            )
        recipe["dataset"] = {**recipe["dataset"], **recipe[SAMPLED_PAIRS]}
    for stage in (*STAGES, *optional):
        given = getattr(args, f"{stage}_args", []) if args is not None else []
        check_sweep_owned(stage, recipe[stage], given, preset)
        overridden = given_settings(given)
        recipe[stage] = as_flags(
            {key: value for key, value in recipe[stage].items() if key not in overridden}
        )
    return recipe


# The grid recipe's mapping of the frontier grid's second pair source (`--pairs sampled`), layered over its
# `dataset` mapping.
SAMPLED_PAIRS = "sampled_pairs"
PAIR_SOURCES = ("beam", "sampled")
# Seeds per configuration by default: every frontier family, DPO and RLOO alike, gets the 5 that the rule
# of analysis/frontier.py gave only the families near reverse KL.
DEFAULT_SEEDS = {"study": 1, "frontier": 5}

# Settings each run or stage of a sweep gets from the sweep itself (a later flag wins, so one given in a
# stage's flags, its `--config` or its recipe would be silently overridden while the manifest records it),
# and where to change them instead.
GRID = "the grid in train_dpo/sweep.py (study_grid, frontier_grid)"
SWEEP_OWNED = {
    "train": {"beta": GRID, "loss_type": GRID, "divergence": f"{GRID}, or add one with --divergences",
              "alpha": GRID, "learning_rate": "'lr' or 'frontier_lr' in recipes/<preset>/grid.yaml",
              "seed": "--seeds", "output_dir": "--results_dir", "resume": "nothing: every run resumes",
              "model": "the recipe's `sft` (or FDPO_SFT_MODEL)", "dataset": "--dataset_args",
              "ref_logps_cache": "--results_dir"},
    "dataset": {"sft_model": "the recipe's `sft` (or FDPO_SFT_MODEL)",
                "reward_model": "the recipe's `reward` (or FDPO_REWARD_MODEL)", "out_dir": "--results_dir"},
    "generate": {"models": "--only", "prompts": "--dataset_args", "out_dir": "--results_dir",
                 "stack_size": "--stack_size"},
    "evaluate": {"generations": "--results_dir", "tokenizer": "the recipe's `sft`",
                 "out_dir": "--results_dir",
                 "reward_model": "the recipe's `reward`", "gold_reward_model": "the recipe's `gold_reward`"},
}  # fmt: skip
# An online-RL run's learning rate is its own recipe's (recipes/<preset>/rloo.yaml).
SWEEP_OWNED["rloo"] = {key: where for key, where in SWEEP_OWNED["train"].items() if key != "learning_rate"}
SWEEP_OWNED["rloo"] |= {"reward_model": "the recipe's `reward` (or FDPO_REWARD_MODEL)"}
SWEEP_OWNED["rloo"].pop("ref_logps_cache")
PER_RUN = frozenset({"beta", "loss_type", "divergence", "alpha", "seed", "learning_rate"})


def given_settings(flags: list[str]) -> set[str]:
    """The settings a stage's extra flags give, by flag (any spelling) or in a `--config` file they name."""
    from common.cli import read_yaml_mapping
    from common.secrets import setting_name

    names = {setting_name(flag) for flag in flags if flag.startswith("--")} - {"config"}
    return names | {key for path in config_files(flags) for key in read_yaml_mapping(path)}


def config_files(flags: list[str]) -> list[str]:
    """The `--config` files named in a stage's extra flags."""
    found = [flag.split("=", 1)[1] for flag in flags if flag.startswith("--config=")]
    return found + [value for flag, value in zip(flags, flags[1:], strict=False) if flag == "--config"]


def check_sweep_owned(
    stage: str, mapping: dict, given: list[str], preset: str, key: str | None = None
) -> None:
    """Refuse a setting the sweep owns (`SWEEP_OWNED`) wherever the stage could read it from: the stage's
    extra flags, the `--config` files they name, and the grid recipe's mapping for the stage (its `key`
    there, default the stage's name: `sampled_pairs` is one for the dataset stage). The stage's
    own recipe (named by the mapping's `preset`) sets what the stage needs when run alone (its model, its
    reward), which the sweep's flags outrank by design; a per-run setting there is refused too, since every
    run would silently override it."""
    from common.cli import read_yaml_mapping
    from common.secrets import setting_name

    owned = SWEEP_OWNED[stage]
    option = f"--{stage}_args"
    channels = [(option, [flag.split("=", 1)[0] for flag in given if flag.startswith("--")])]
    channels += [(f"{option} --config {path}", list(read_yaml_mapping(path))) for path in config_files(given)]
    channels.append((f"{recipe_path(preset, 'grid')}: {key or stage}", list(mapping)))
    stage_preset = mapping.get("preset")
    if isinstance(stage_preset, str) and recipe_path(stage_preset, stage).is_file():
        per_run = [key for key in read_recipe(stage_preset, stage) if setting_name(str(key)) in PER_RUN]
        channels.append((str(recipe_path(stage_preset, stage)), per_run))
    for where, names in channels:
        for name in names:
            if setting_name(str(name)) in owned:
                instead = owned[setting_name(str(name))]
                raise InputError(f"{where}: {name} is set by each run of the grid; change {instead}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    # No abbreviations: `--bet 5` in a stage's flags would pass for --beta (and the grid's own --beta win).
    parser = ArgParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=presets("grid"), required=True)
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated run families or run names, e.g. jsd,alpha,gpt_imdb_sigmoid_beta1",
    )
    parser.add_argument(
        "--grid",
        choices=list(GRIDS),
        default="study",
        help="study: the study's 18 runs and learning rates; frontier: every divergence at one learning rate "
        "over one beta sweep, for reward at matched KL",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds per configuration (default: study {study}; frontier {frontier}, DPO and RLOO "
        "alike)".format(**DEFAULT_SEEDS),
    )
    parser.add_argument(
        "--family_seeds",
        default="",
        help="seeds per configuration of named families, overriding --seeds for them, e.g. sigmoid=5,hinge=5 "
        "(the frontier grid's rule for a family within its interval of reverse KL)",
    )
    parser.add_argument("--extended", action="store_true", help="add alpha 0.1/0.9, Jeffreys, Neyman chi^2")
    parser.add_argument(
        "--no_rloo",
        action="store_true",
        help="frontier grid: leave out the online-RL baseline (train_dpo/rloo.py, the recipe's `rloo` flags)",
    )
    parser.add_argument(
        "--pairs",
        choices=PAIR_SOURCES,
        default="beam",
        help="frontier grid: where the DPO pairs come from. beam: the study's diverse beam search (recipe's "
        "`dataset`); sampled: the SFT policy sampled as the RLOO runs and evaluation sample it, from as many "
        "scored training completions as an RLOO run scores (the recipe's `sampled_pairs` over `dataset`), "
        "into results/<preset>-frontier-sampled",
    )
    parser.add_argument(
        "--divergences",
        default="",
        help="comma-separated divergences of your own to add to the grid, each as module:function "
        "(f' of log u; the module importable by every run, e.g. on PYTHONPATH)",
    )
    parser.add_argument(
        "--parallel_runs",
        type=int,
        default=None,
        help="runs trained side by side, each in its own process (default: one per GPU, 1 on CPU)",
    )
    parser.add_argument(
        "--stack_size",
        type=int,
        default=DEFAULT_STACK_SIZE,
        help="runs trained (and sampled) at once as LoRA adapters stacked over one base model; 1 = one at a "
        f"time (default {DEFAULT_STACK_SIZE}: the study grid in one stack)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    parser.add_argument("--results_dir", default=None, help="default: results/<preset>[-frontier]")
    parser.add_argument(
        "--sft_epochs", type=float, default=2.0, help="tiny preset: SFT epochs of the base policy"
    )
    for stage in ("dataset", "train", "generate", "evaluate"):
        parser.add_argument(
            f"--{stage}_args", default="", help=f"extra flags for the {stage} stage (override the preset)"
        )
    parser.add_argument(
        "--rloo_args",
        default="",
        help="extra flags for the frontier grid's online-RL runs (train_dpo/rloo.py); --train_args are the "
        "DPO runs'",
    )
    args = parser.parse_args(join_stage_flags(sys.argv[1:] if argv is None else argv))
    if args.only is not None and not [item for item in args.only.split(",") if item.strip()]:
        raise InputError(
            f"--only {args.only!r}: names no run family or run; leave it out to run the whole grid"
        )
    if (
        args.results_dir is not None
        and Path(args.results_dir).exists()
        and not Path(args.results_dir).is_dir()
    ):
        raise InputError(f"--results_dir {args.results_dir}: not a directory")
    if args.seeds is None:
        args.seeds = DEFAULT_SEEDS[args.grid]
    if args.extended and args.grid != "study":
        raise InputError("--extended adds runs to the study grid; it does not apply to --grid frontier")
    if args.no_rloo and args.grid != "frontier":
        raise InputError(
            "--no_rloo leaves the online-RL baseline out of the frontier grid; the study grid has none"
        )
    if args.pairs != "beam" and args.grid != "frontier":
        raise InputError(
            f"--pairs {args.pairs} is the frontier grid's second pair source; add --grid frontier (the study "
            "grid builds its pairs as the study did)"
        )
    if args.seeds < 1:
        raise InputError(f"--seeds must be >= 1, got {args.seeds}")
    args.family_seeds = parse_family_seeds(args.family_seeds)
    for flag in ("parallel_runs", "stack_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise InputError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    for stage in (*STAGES, "rloo"):
        flag = f"{stage}_args"
        setattr(args, flag, split_flags(getattr(args, flag), f"--{flag}"))
    return args


def parse_family_seeds(text: str) -> dict[str, int]:
    """`--family_seeds sigmoid=5,hinge=5` as {family: seeds}; a family named twice is refused."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = item.partition("=")
        if not count.isdigit() or int(count) < 1:
            raise InputError(f"--family_seeds: expected family=N with N >= 1, got {item!r}")
        if name.strip() in out:
            raise InputError(f"--family_seeds: {name.strip()} is given twice; give each family once")
        out[name.strip()] = int(count)
    return out


STAGE_FLAG_OPTIONS = tuple(f"--{stage}_args" for stage in (*STAGES, "rloo"))


def join_stage_flags(argv: list[str]) -> list[str]:
    """`--train_args --save_steps=10` as `--train_args=--save_steps=10`: argparse takes a value that starts
    with `-` for a flag of its own and says only "expected one argument"."""
    joined, at = [], 0
    while at < len(argv):
        if argv[at] in STAGE_FLAG_OPTIONS and at + 1 < len(argv) and argv[at + 1].startswith("-"):
            joined.append(f"{argv[at]}={argv[at + 1]}")
            at += 2
        else:
            joined.append(argv[at])
            at += 1
    return joined


def split_flags(text: str, flag: str) -> list[str]:
    """A stage's extra flags as the shell would split them (quotes kept together); a secret is refused.

    A token given as a flag, or in a `--config` file the flags name, would be recorded wherever the sweep
    records its command and each run's flags (reproduce.json, manifests, a stack's runs.json): secrets come
    from the environment or `.env` (common/secrets.py).
    """
    try:
        flags = shlex.split(text)
    except ValueError as error:
        raise InputError(f"{flag}: {error}") from None
    refuse_secrets_in_configs(flags, flag)
    return flags


def plan_grid(args: argparse.Namespace, preset: dict) -> list:
    """The runs the command asks for: the grid (the frontier grid with RLOO where the preset has it),
    `--seeds` per configuration or `--family_seeds` for the families it names, then `--only`.

    Raises:
        InputError: a divergence that does not import, an unknown family or run, or two runs of one name.
    """
    try:
        extra = [spec for spec in args.divergences.split(",") if spec]
        for spec in extra:
            get_divergence(spec)  # importable and admitted by the theorem, before anything runs
        most = max([args.seeds, *args.family_seeds.values()])
        if args.grid == "study":
            runs = study_grid(args.extended, most, extra)
        else:
            online = RLOO_BETAS if "rloo" in preset and not args.no_rloo else ()
            runs = frontier_grid(most, extra=extra, online_betas=online)
        unknown = set(args.family_seeds) - {spec.family for spec in runs}
        if unknown:
            raise InputError(f"--family_seeds: no run family {', '.join(sorted(unknown))} in the grid")
        runs = [spec for spec in runs if spec.seed < args.family_seeds.get(spec.family, args.seeds)]
        grid = select(runs, args.only)
        check_unique_names(grid, args.grid)
    except ValueError as error:
        raise InputError(str(error)) from None
    return grid


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    started = time.time()
    args = parse_args(argv)
    preset = read_grid_recipe(args.preset, args)
    root = Path(args.results_dir or config.RESULTS_DIR / results_name(args.preset, args.grid, args.pairs))
    grid = plan_grid(args, preset)

    from train_dpo.sft import sft_model_dir

    # The tiny preset's own base policy: one folder per SFT setting, never replaced once built.
    sft_dir = sft_model_dir(args.sft_epochs) if preset["sft"] == "train" else None
    base = str(sft_dir) if preset["sft"] == "train" else preset["sft"]
    data_dir = root / "data"
    # Reference log-probs depend only on the base policy and the pairs: computed once, shared by all runs.
    common = ["--model", base, "--dataset", str(data_dir / "dataset" / "hf"), "--ref_logps_cache",
              str(root / "ref_logps"), *preset["train"], *args.train_args]  # fmt: skip
    # The online-RL runs (train_dpo/rloo.py) sample the same base policy on the pairs' training prompts,
    # scored by the reward the pairs were ranked by.
    online_common = ["--model", base, "--dataset", str(data_dir / "dataset" / "hf"), "--reward_model",
                     preset["reward"], *preset.get("rloo", []), *args.rloo_args]  # fmt: skip
    inputs = check_inputs(base, preset)  # before anything else: a missing input is one line, not a plan
    runs = []
    for spec in grid:
        run_dir = root / "runs" / spec.folder_name(args.grid)
        shared = online_common if spec.loss_type == ONLINE_LOSS else common
        runs.append((run_dir, run_flags(spec, shared, learning_rate(preset, args.grid, spec), run_dir)))
    dataset_flags = [*preset["dataset"], "--sft_model", base, "--reward_model", preset["reward"],
                     "--out_dir", str(data_dir), *args.dataset_args]  # fmt: skip
    # As things stand; the real build may change them.
    upstream = upstream_inputs(args, base, data_dir, dataset_flags)
    jobs = [(run_dir, flags, run_inputs(flags, upstream)) for run_dir, flags in runs]
    statuses = {run_dir: run_status(run_dir, inputs) for run_dir, _, inputs in jobs}
    refused = [
        status.removeprefix("refused: ") for status in statuses.values() if status.startswith("refused")
    ]
    if refused:  # before anything is written: retraining such a folder in place would destroy its run
        raise InputError(f"{refused[0]}" + (f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""))
    unfinished = [job for job in jobs if statuses[job[0]] != "cached"]
    statuses = planned_statuses(unfinished, statuses, args.stack_size, root / "stacks")
    refusal = dataset_refusal(dataset_flags, base, data_dir) if args.dry_run else None

    print(f"plan for preset '{args.preset}' -> {root}")
    print(f"  pairs: {args.pairs} (dataset flags: {shlex.join([*preset['dataset'], *args.dataset_args])})")
    for what, name, status in inputs:
        print(f"  {what}: {status} {name}")
    if preset["sft"] == "train":
        print(
            f"  base policy: {'cached' if (sft_dir / 'sft_manifest.json').is_file() else 'train'} {sft_dir}"
        )
    print(f"  dataset: {data_dir / 'dataset'} (each stage resumes or is skipped when complete)")
    for run_dir, status in statuses.items():
        print(f"  run {run_dir.name}: {status}")
    if args.stack_size > 1:
        print(f"  training: runs sharing a base model and settings stacked, up to {args.stack_size} at once")
    print(f"  then: eval generation for {len(grid) + 1} models, evaluation, figures, notebook")
    if refusal:
        raise refusal  # what the real run would stop with, at its dataset stage
    if args.dry_run:
        return
    with output_lock(root):  # one sweep per results folder; its runs and dataset lock their own folders
        run_stages(args, preset, root, grid, runs, dataset_flags, started, argv)


def dataset_refusal(dataset_flags: list[str], base: str, data_dir: Path) -> InputError | None:
    """The error the dataset stage would stop the sweep with (prompts changed under its generations, a base
    policy edited in place), checked as the stage checks before writing; None where it would go on, where
    nothing was built yet (no earlier output to be stale, and checking would download the prompts' source
    and the base policy's tokenizer), or where the base policy is not built yet."""
    if not data_dir.is_dir() or (not Path(base).is_dir() and imdb.looks_local(base)):
        return None
    from dataset.main import check_build
    from dataset.main import parse_args as parse_dataset_args

    try:
        check_build(parse_dataset_args(dataset_flags))
    except InputError as error:
        return error
    return None


def run_stages(
    args, preset: dict, root: Path, grid, runs, dataset_flags: list[str], started: float, argv
) -> None:
    """Base policy, dataset, training runs, eval generation, evaluation, notebook, in that order; each
    stage's wall seconds go to reproduce.json's `stage_s` (the base policy's only where one is trained)."""
    # Every stage's module now, not when its stage comes: a checkout edited during a long sweep would else
    # be half old code, half new (a later stage importing a name the running modules lack).
    import train_dpo.rloo  # noqa: F401  (the sweep's trainers, imported by name as each run starts)
    import train_dpo.stack  # noqa: F401
    from dataset.main import main as build_dataset
    from train_dpo.evaluate import main as evaluate
    from train_dpo.generate import main as generate
    from train_dpo.sft import sft_model_dir, train_sft

    sft_dir = sft_model_dir(args.sft_epochs) if preset["sft"] == "train" else None
    base = str(sft_dir) if preset["sft"] == "train" else preset["sft"]
    data_dir = root / "data"
    # The pair source and the dataset stage's flags it resolved to; each stage's wall seconds, as it ends.
    record = {"command": recorded_command(argv),
              "pairs": {"source": args.pairs, "dataset_flags": dataset_flags}, "stage_s": {}}  # fmt: skip
    mark = time.perf_counter()

    def finished(stage: str) -> None:
        """Record a stage's wall time in reproduce.json as it ends: a sweep stopped part-way still says
        where its time went (wall_time_s is added once every stage is done)."""
        nonlocal mark
        record["stage_s"][stage] = round(time.perf_counter() - mark, 2)
        mark = time.perf_counter()
        write_atomic(root / "reproduce.json", json.dumps(record, indent=2))

    if preset["sft"] == "train":
        train_sft(sft_dir, epochs=args.sft_epochs)
        finished("base_policy")
    build_dataset(dataset_flags)
    finished("dataset")
    upstream = upstream_inputs(args, base, data_dir, dataset_flags)  # of what was just built
    jobs = [(run_dir, flags, inputs) for run_dir, flags in runs
            if not is_finished(run_dir, inputs := run_inputs(flags, upstream))]  # fmt: skip
    train_runs(jobs, logger.info, args.parallel_runs, args.stack_size, root / "stacks")
    finished("train")

    models = [base, *(str(root / "runs" / spec.folder_name(args.grid)) for spec in grid)]
    prompts = str(data_dir / "dataset" / "eval_prompts.json")
    generations, tables = str(root / "generations"), str(root / "eval")
    # Sampled stacked on a GPU; on the CPU one at a time, which measured faster there (docs/performance.md).
    sampling_stack = args.stack_size if torch.cuda.is_available() else 1
    generate(["--models", *models, "--prompts", prompts, "--out_dir", generations, "--stack_size",
              str(sampling_stack), *preset["generate"], *args.generate_args])  # fmt: skip
    finished("generate")
    evaluate(["--generations", generations, "--tokenizer", base, "--out_dir", tables, "--reward_model",
              preset["reward"], "--gold_reward_model", preset["gold_reward"], *preset["evaluate"],
              *args.evaluate_args])  # fmt: skip
    finished("evaluate")
    execute_notebook(root, args.preset, args.grid)
    finished("notebook")
    elapsed = time.time() - started
    record["wall_time_s"] = round(elapsed)
    write_atomic(root / "reproduce.json", json.dumps(record, indent=2))
    print(f"done in {elapsed / 60:.1f} min: {root / 'eval' / 'summary.md'}, {root / 'results.ipynb'}")


def recorded_command(argv: list[str] | None) -> str:
    """The sweep's command as a shell reads it back: quoted, so a stage's flags stay one argument."""
    return shlex.join(["poetry", "run", "python", "reproduce.py", *(sys.argv[1:] if argv is None else argv)])


def upstream_inputs(args, base: str, data_dir: Path, dataset_flags: list[str]) -> dict:
    """What every run depends on beyond its own flags: the base policy, the pairs and how they are built.

    The pairs are named by the SHA-256s their dataset's manifest records (None before it is built); the
    dataset stage by its parsed settings, so that a flag written another way, or one that changes no pair
    (--overwrite), retrains nothing; the base policy by its weights (`model_version`: a local folder's
    hash, so an edited one is seen, or a Hub id's commit).
    """
    from common.models import model_version
    from dataset.main import parse_args as parse_dataset_args

    dataset = read_json(data_dir / "dataset" / "manifest.json").get("files")
    settings = asdict(parse_dataset_args(dataset_flags))
    build = {key: value for key, value in settings.items() if key not in DATASET_LOCATIONS}
    return {"preset": args.preset, "dataset_settings": build, "dataset": dataset and settings_hash(dataset),
            "base_model": model_version(base) or {"name": base}}  # fmt: skip


# Dataset settings that say where or whether the stage writes, not what the pairs are, or where its inputs
# are: the prompts and the base policy are hashed by content (the dataset's file hashes, `base_model`).
DATASET_LOCATIONS = frozenset(
    {"out_dir", "overwrite", "stages", "push_to_hub", "preset", "prompts", "sft_model"}
)


def run_inputs(flags: list[str], upstream: dict) -> dict:
    """A run's resolved settings (as train.py fingerprints them) beside its upstream inputs, as JSON reads
    them back, so that a manifest's record compares equal to a fresh one."""
    from train_dpo.fingerprint import run_settings
    from train_dpo.sweep import parse_run_flags

    inputs = {"settings": run_settings(*parse_run_flags(flags)), **upstream}
    return json.loads(json.dumps(inputs, default=str))


def read_json(path: Path) -> dict:
    """A JSON object from `path`, or {} when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def results_name(preset: str, grid: str, pairs: str = "beam") -> str:
    """results/<preset> for the study's grid, results/<preset>-frontier for the controlled one, and
    results/<preset>-frontier-sampled for it on the second pair source (`--pairs sampled`)."""
    name = preset if grid == "study" else f"{preset}-{grid}"
    return name if pairs == "beam" else f"{name}-{pairs}"


def learning_rate(preset: dict, grid: str, spec) -> float | None:
    """The study's split (10x larger for reverse KL) on its grid; one rate for all on the frontier grid;
    None for an online-RL run, whose rate is its own recipe's (recipes/<preset>/rloo.yaml)."""
    if spec.loss_type == ONLINE_LOSS:
        return None
    if grid == "frontier":
        return preset["frontier_lr"]
    return preset["lr"]["reverse_kl" if spec.divergence == "reverse_kl" else "f"]


def check_inputs(base: str, preset: dict) -> list[tuple[str, str, str]]:
    """(what, where, status) of every input the sweep reads: found, missing or will download.

    Local files count as found only once read as their stages read them: a damaged IMDb file, or a damaged
    file in a local model folder, stops the sweep (and its dry run) in the one line the stage would give.

    Raises:
        InputError: one line naming each input that cannot be had (offline and not cached) and the
            way out, before anything runs; or the first damaged local file.
    """
    folder = imdb.local_data_dir()
    if folder:
        imdb.read_local_files(folder)
    for name in (base, preset["reward"], preset["gold_reward"]):
        if name not in LEXICONS and Path(name).expanduser().is_dir():
            check_model_folder(Path(name).expanduser())
    data = ("IMDb data", str(folder), "found") if folder else (
        "IMDb data", config.IMDB_DATASET, imdb.hub_status(config.IMDB_DATASET, "dataset"))  # fmt: skip
    inputs = [data]
    for what, name in (("reward model", preset["reward"]), ("gold reward model", preset["gold_reward"])):
        inputs.append((what, name, "found" if name in LEXICONS else imdb.hub_status(name)))
    if preset["sft"] != "train":  # the tiny preset trains its own base policy
        inputs.insert(1, ("base policy", base, imdb.hub_status(base)))
    ways_out = {"IMDb data": None, "base policy": "FDPO_SFT_MODEL", "reward model": "FDPO_REWARD_MODEL",
                "gold reward model": "FDPO_GOLD_REWARD_MODEL"}  # fmt: skip
    missing = []
    for what, name, status in inputs:
        if status != "missing":
            continue
        if what == "IMDb data":
            missing.append(imdb.offline_hint(name))
        elif imdb.offline() and not Path(name).expanduser().exists():
            missing.append(f"{what} {name}: not in the local Hugging Face cache and HF_HUB_OFFLINE=1; go "
                           f"online, or set {ways_out[what]} to a local model directory")  # fmt: skip
        else:
            missing.append(f"{what} {name}: no such directory")
    if missing:
        raise InputError("; ".join(missing))
    return inputs


def execute_notebook(root: Path, preset: str, grid: str) -> None:
    """Run results.ipynb on this sweep's tables (the other grid's from the folder beside it, if there) and
    keep the executed copy beside them.

    Both folders are set: left to its default, the other grid's would be read, and its figures written,
    wherever the checkout's results/ happens to hold one, not beside this sweep."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(config.REPO_ROOT / "results.ipynb", as_version=4)
    other = "frontier" if grid == "study" else "study"
    folders = {grid: root.resolve(), other: root.resolve().parent / results_name(preset, other)}
    settings = {("FDPO_RESULTS_DIR" if name == "study" else "FDPO_FRONTIER_DIR"): str(folder)
                for name, folder in folders.items()}  # fmt: skip
    previous = {variable: os.environ.get(variable) for variable in settings}
    os.environ.update(settings)
    try:
        client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(config.REPO_ROOT)}})  # fmt: skip
        # Cell by cell under `setup_kernel`, not `client.execute()`: execute() traps SIGINT itself and shuts
        # the kernel down under the running cell, which then fails three ways (the last an AssertionError
        # from its second shutdown). Here Ctrl-C is a KeyboardInterrupt, and the kernel goes on the way out.
        # What execute() records besides the cells is recorded here too: the kernel's language_info and the
        # widgets' state.
        with client.setup_kernel():
            try:
                info = client.wait_for_reply(client.kc.kernel_info())
                if info is not None and "language_info" in info["content"]:
                    notebook.metadata["language_info"] = info["content"]["language_info"]
                for index, cell in enumerate(notebook.cells):
                    client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
                client.set_widgets_metadata()
            except KeyboardInterrupt:
                client.shutdown_kernel = "immediate"  # its cell was cut short: nothing to wait for
                # The cut-short cell's tasks (its reply, output and kernel-alive polls) stay pending on
                # nbclient's loop, and would resume while the kernel is shut down on that loop: the alive poll
                # then finds it dead, and a DeadKernelError nobody awaits is printed as the process ends.
                # Cancelled and awaited here, they end quietly.
                import asyncio

                from jupyter_core.utils import ensure_event_loop

                loop = ensure_event_loop()
                pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                raise
    finally:
        for variable, value in previous.items():
            if value is None:
                del os.environ[variable]
            else:
                os.environ[variable] = value
    write_atomic(root / "results.ipynb", nbformat.writes(notebook))


cli = exits_cleanly(main)

if __name__ == "__main__":
    cli()
