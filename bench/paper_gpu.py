"""One prepared GPU check of the paper preset: `reproduce.py --preset paper` end to end on full-size
stand-ins of the study's models, one run of its online-RL baseline, then the frontier grid's training for a
fixed number of steps.

    poetry run python bench/paper_gpu.py --data_dir path/to/imdb --out results/gpu-check
    poetry run python bench/paper_gpu.py --data_dir path/to/imdb --out results/gpu-check-full \\
        --train_steps 0 --eval_prompts 500 --dataset_tokens 256 --rloo_steps 0 --frontier_runs 126 \\
        --minutes 30
    poetry run python bench/paper_gpu.py --data_dir path/to/imdb --out /tmp/check --quick   # CPU: 3 min

1. Stand-ins (`bench/standins.py`) in the Hub layout, random weights: GPT-2 124M, a DistilBERT sentiment
   classifier and a RoBERTa-large-sized gold reward (`--quick`: a few layers of a small hidden size).
2. `reproduce.py --preset paper` as a user runs it, on the stand-ins and the study's prompts (`--data_dir`
   or FDPO_DATA_DIR): dataset, the 18 study runs in one stack, eval generation for 19 models, evaluation
   with both rewards, the notebook. Each stage's wall time comes from the sweep's own reproduce.json.
3. One run of the frontier grid's online-RL baseline (`train_dpo/rloo.py --preset paper`, RLOO, beta 0.1)
   on the pairs' training prompts the sweep just built, for `--rloo_steps` steps, projected to its recipe's
   steps (recipes/paper/rloo.yaml) and to the grid's RLOO runs (4 betas x 5 seeds), one at a time.
4. `bench/grid.py --grid frontier --stacked_only` on the frontier grid's first `--frontier_runs` runs for
   `--frontier_steps` steps, projected linearly to all its runs (210 at 5 seeds) at the paper preset's 3
   epochs.

It writes `<out>/paper_gpu.json` after each part (a part cut short still leaves the ones before it), the
parts' logs beside it and the sweep's folder in `<out>/paper`, and prints a summary. Training tokens/s
count real (unpadded) tokens; utilisation is 4 x base parameters x tokens/s over the GPU's dense bf16
peak (`bench/harness.py`), over the stage and inside the training loops alone. Peak GPU memory is the
device's `nvidia-smi` memory.used, sampled every second: the parts run in processes of their own, whose
torch peaks this process cannot read, and it includes their CUDA contexts and allocator caches.

The defaults fit 8 minutes on an H100 by estimate, not yet by measurement: the whole preset does not.
docs/performance.md's H200 rates put its 18 runs' 3 epochs alone at 6.4-6.6 minutes, and its dataset stage
generates 602 x 6 continuations of 256 tokens. So training stops after `--train_steps` steps and the
loop's rate is projected to the 3 epochs; the preset's own values, given beside each size below, give
the whole preset back (the second command).
`--minutes` is a deadline: a part still running then is stopped, and recorded as cut.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import config
from bench.harness import (
    base_parameters,
    bf16_peak_flops,
    device_name,
    frozen_base_mfu,
    loop_seconds,
    scratch_folder,
    stop_process,
    stops_cleanly,
    trained_tokens,
)
from common.atomic import write_atomic
from common.cli import ArgParser, count_type, number_type
from common.errors import InputError, RunFailed

REPO = Path(__file__).resolve().parents[1]
MINUTES = 8.0  # deadline for the whole check, in minutes; 0: none
FRONTIER_RESERVE_MIN = 1.5  # minutes kept for the frontier part while the paper preset and RLOO run
RLOO_RESERVE_MIN = 1.5  # minutes kept for the RLOO run while the paper preset runs
RLOO_BETA = 0.1  # one of sweep.RLOO_BETAS: a run's speed does not depend on it
STUDY_RUNS = 18  # the study grid, trained as one stack (reproduce.py's default stack size)
# The frontier grid's DPO runs at reproduce.py's seeds, len(sweep.frontier_grid(seeds=5)): 7 families x
# 6 betas x 5 seeds (a number here, as --help imports no training library; tests/test_paper_gpu.py checks it).
FRONTIER_RUNS = 210
EPOCHS, BATCH = 3, 8  # the paper preset's training (recipes/paper/grid.yaml)
VERSIONS = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "huggingface_hub")

# Sizes of each part on a GPU (None: the paper preset's own), what each means, and the values it takes.
SIZES = {
    "prompts": (None, "dataset prompts (preset: 602)", count_type(1)),
    "dataset_tokens": (64, "new tokens per diverse-beam continuation of the dataset (preset: 256)",
                       count_type(1)),
    "eval_prompts": (100, "held-out prompts sampled for each of the 19 models (preset: 500)", count_type(1)),
    "only": (None, "study runs, comma-separated, or all (the preset's 18)", str),
    "train_steps": (100, "optimizer steps per run (0: the preset's 3 epochs, ~1,056 steps on its pairs)",
                    count_type(0)),
    "samples": (None, "samples per eval prompt (preset: 4)", count_type(1)),
    "sample_tokens": (None, "new tokens per sample (preset: 64)", count_type(1)),
    "test_pairs": (None, "held-out pairs evaluation scores (preset: all)", count_type(1)),
    "frontier_runs": (18, "the frontier grid's first N runs (of its 126 at 3 seeds): 18 is one stack",
                      count_type(1)),
    "frontier_steps": (20, "optimizer steps per frontier run; >= 10 for a rate past the first steps",
                       count_type(1)),
    "frontier_pairs": (None, "training pairs of the frontier runs (None: all)", count_type(1)),
    "rloo_steps": (20, "optimizer steps of the one RLOO run (0: its recipe's 180)", count_type(0)),
    "rloo_tokens": (None, "new tokens per RLOO completion (recipe: 64, as evaluation samples)",
                    count_type(1)),
}  # fmt: skip
# --quick: the CPU runs every part in a few minutes (tests/test_paper_preset.py's shrinking).
QUICK_SIZES = {
    "prompts": 6, "dataset_tokens": 6, "eval_prompts": 3, "only": "gpt_imdb_sigmoid_beta1,gpt_imdb_jsd_beta1",
    "train_steps": 2, "samples": 2, "sample_tokens": 6, "test_pairs": 4,
    "frontier_runs": 3, "frontier_steps": 2, "frontier_pairs": 16, "rloo_steps": 2, "rloo_tokens": 6,
}  # fmt: skip
QUICK_FLAGS = {
    "dataset": ["--batch_size", "6"],
    "train": ["--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
              "--max_eval_pairs", "2", "--logging_steps", "1"],
    "rloo": ["--per_device_train_batch_size", "4", "--num_generations", "2", "--logging_steps", "1"],
}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None, help="the study's IMDb files (default: FDPO_DATA_DIR)")
    parser.add_argument("--out", required=True, help="a new folder for paper_gpu.json, logs and the sweep")
    parser.add_argument("--quick", action="store_true", help="tiny stand-ins and sizes: the CPU, minutes")
    parser.add_argument(
        "--minutes", type=number_type(0), default=MINUTES, help="deadline for the whole check; 0: none"
    )
    parser.add_argument(
        "--standins_dir",
        default=None,
        help="build the stand-ins here and keep them (reused, whatever their size)",
    )
    for name, (value, meaning, kind) in SIZES.items():
        parser.add_argument(
            f"--{name}",
            type=kind,
            default=None,
            help=f"{meaning}; default {value}, --quick {QUICK_SIZES[name]}",
        )
    args = parser.parse_args(argv)
    for name, (value, _, _) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, QUICK_SIZES[name] if args.quick else value)
    from train_dpo.sweep import GRIDS  # here: --help needs none of what it imports

    size = len(GRIDS["frontier"]())
    if args.frontier_runs > size:  # grid.py would train all of them, and the projection count more
        parser.error(f"argument --frontier_runs: the frontier grid has {size} runs, got {args.frontier_runs}")
    return args


def check_paths(args: argparse.Namespace) -> None:
    """Resolve --data_dir (or FDPO_DATA_DIR) and --out, refusing missing data and a folder already used."""
    args.data_dir = args.data_dir or os.environ.get(config.DATA_DIR_ENV)
    if not args.data_dir:
        raise InputError(f"--data_dir: the study's IMDb files are needed (or set {config.DATA_DIR_ENV})")
    args.data_dir = Path(args.data_dir).expanduser().resolve()
    missing = [
        name for name in (config.PROMPTS_FILE, config.SCORED_FILE) if not (args.data_dir / name).is_file()
    ]
    if missing:
        raise InputError(f"--data_dir {args.data_dir}: no {', '.join(missing)}")
    args.out = Path(args.out).expanduser().resolve()
    if (args.out / "paper").exists() or (args.out / "paper_gpu.json").exists():
        raise InputError(
            f"--out {args.out} already holds a check (a sweep resumes, so it would time nothing)"
        )


def build_standins(folder: Path, tiny: bool, data_dir: Path) -> dict[str, Path]:
    """The three stand-ins in `folder`, each built unless it is there already."""
    from bench.standins import distilbert_imdb_standin, gpt2_imdb_standin, roberta_large_standin

    builders = {
        "policy": (folder / "gpt2-imdb", gpt2_imdb_standin),
        "reward": (folder / "distilbert-imdb", distilbert_imdb_standin),
        "gold_reward": (folder / "sentiment-roberta-large-english", roberta_large_standin),
    }
    for path, build in builders.values():
        if not (path / "pytorch_model.bin").is_file():
            shutil.rmtree(path, ignore_errors=True)  # a build stopped half-way
            build(path, tiny=tiny, data_dir=data_dir)
    return {role: path for role, (path, _) in builders.items()}


def classifier_parameters(model: Path) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(
            AutoConfig.from_pretrained(model)
        ).num_parameters()


class GpuMemory:
    """The device's peak `nvidia-smi` memory.used while a part runs, sampled every second (None off a GPU)."""

    def __init__(self):
        self.peak_mib: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            try:
                query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
                used = max(
                    int(line) for line in subprocess.check_output(query, text=True, timeout=10).split()
                )
                self.peak_mib = max(used, self.peak_mib or 0)
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            if self._stop.wait(1.0):
                return

    def __enter__(self) -> GpuMemory:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def peak_gib(self) -> float | None:
        return round(self.peak_mib / 1024, 2) if self.peak_mib is not None else None


def run_part(command: list[str], env: dict, log: Path, timeout: float | None) -> dict:
    """Run one part as its own process group, its output to `log`; stop it (and what it started) at
    `timeout` seconds, and when this script is stopped (Ctrl-C, SIGTERM) or fails while it runs: in a
    session of its own, no signal to this process's group reaches it."""
    start = time.perf_counter()
    with open(log, "w") as out, GpuMemory() as memory:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        try:
            process.wait(timeout=timeout)
            cut = False
        except subprocess.TimeoutExpired:
            cut = True
            stop_process(process, group=True)
        except BaseException:
            stop_process(process, group=True)
            raise
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "exit_status": process.returncode,
        "cut_at_deadline": cut,
        "gpu_memory_peak_gib": memory.peak_gib,
        "log": log.name,
    }


def paper_command(args, root: Path) -> list[str]:
    """`reproduce.py --preset paper` with the sizes of `args` as each stage's extra flags."""
    stage = {
        "dataset": {"--num_prompts": args.prompts, "--num_eval_prompts": args.eval_prompts,
                    "--max_new_tokens": args.dataset_tokens},
        "train": {"--max_steps": args.train_steps or None},
        "generate": {"--samples": args.samples, "--max_new_tokens": args.sample_tokens},
        "evaluate": {"--max_test_pairs": args.test_pairs},
    }  # fmt: skip
    command = [sys.executable, "reproduce.py", "--preset", "paper", "--results_dir", str(root)]
    if args.only and args.only != "all":
        command += ["--only", args.only]
    for name, sizes in stage.items():
        flags = [item for flag, value in sizes.items() if value is not None for item in (flag, str(value))]
        flags += QUICK_FLAGS.get(name, []) if args.quick else []
        if flags:
            command += [f"--{name}_args", shlex.join(flags)]
    return command


def frontier_command(args, policy: Path, stack_size: int) -> list[str]:
    """`bench/grid.py --grid frontier --stacked_only` on the frontier grid's first `--frontier_runs` runs."""
    grid = [sys.executable, "bench/grid.py", "--model", str(policy), "--preset", "paper",
            "--grid", "frontier", "--stacked_only", "--steps", str(args.frontier_steps),
            "--runs", str(args.frontier_runs), "--stack_size", str(stack_size)]  # fmt: skip
    if args.frontier_pairs:
        grid += ["--pairs", str(args.frontier_pairs)]
    return grid


def rloo_command(args, models: dict[str, Path], root: Path, run_dir: Path) -> list[str]:
    """One RLOO run of the paper preset as the frontier grid starts it (train_dpo/rloo.py on its recipe),
    on the prompts of the pairs the paper part built, with the sizes of `args`."""
    command = [sys.executable, "train_dpo/rloo.py", "--preset", "paper", "--model", str(models["policy"]),
               "--reward_model", str(models["reward"]), "--dataset", str(root / "data" / "dataset" / "hf"),
               "--beta", str(RLOO_BETA), "--seed", "0", "--output_dir", str(run_dir)]  # fmt: skip
    if args.rloo_steps:
        command += ["--max_steps", str(args.rloo_steps)]
    if args.rloo_tokens:
        command += ["--max_completion_length", str(args.rloo_tokens)]
    return command + (QUICK_FLAGS["rloo"] if args.quick else [])


def rloo_training(run_dir: Path, wall_s: float) -> dict:
    """The RLOO run's loop (`train_runtime`), its rate, and its time projected to the recipe's steps and to
    the frontier grid's RLOO runs (one at a time, as the sweep trains them: set-up counted per run)."""
    from common.cli import read_recipe

    results, state, settings = (run_dir / name for name in ("train_results.json", "trainer_state.json",
                                                              "run_config.json"))  # fmt: skip
    if not (results.is_file() and state.is_file()):
        return {}
    loop = json.loads(results.read_text())["train_runtime"]
    steps = json.loads(state.read_text())["global_step"]
    training = json.loads(settings.read_text())["training"] if settings.is_file() else {}
    batch = training.get("per_device_train_batch_size")
    result = {"steps": steps, "loop_s": round(loop, 1), "completions_per_step": batch,
              "s_per_step": round(loop / steps, 3) if steps else None,
              "completions_per_s": round(steps * batch / loop, 1) if batch and loop else None}  # fmt: skip
    full = read_recipe("paper", "rloo")["max_steps"]
    if steps and loop:
        from reproduce import DEFAULT_SEEDS
        from train_dpo.sweep import RLOO_BETAS

        one = wall_s - loop + loop * full / steps
        runs = len(RLOO_BETAS) * DEFAULT_SEEDS["frontier"]
        result |= {"full_length_steps": full, "projected_full_length_s": round(one),
                   "grid_runs": runs, "projected_grid_s": round(runs * one)}  # fmt: skip
    return result


def paper_training(root: Path, stage_s: dict) -> dict:
    """The paper preset's training: tokens/s and its time projected to the preset's 3 epochs."""
    run_dirs = sorted(path.parent for path in (root / "runs").glob("*/trainer_state.json"))
    if not run_dirs:
        return {}
    tokens, loop = trained_tokens(run_dirs), loop_seconds(run_dirs, root / "stacks")
    steps = max(json.loads((path / "trainer_state.json").read_text())["global_step"] for path in run_dirs)
    result = {"runs": len(run_dirs), "steps_per_run": steps, "tokens": tokens, "loop_s": round(loop, 1),
              "loop_tokens_per_s": round(tokens / loop) if loop else None}  # fmt: skip
    if "train" in stage_s:
        result["tokens_per_s"] = round(tokens / stage_s["train"])
    full = full_length_steps(root)
    if full and "train" in stage_s and loop:
        result["full_length_steps"] = full
        result["projected_full_length_s"] = round(stage_s["train"] - loop + loop * full / steps)
    return result


def full_length_steps(root: Path) -> int | None:
    """Steps per run of the paper preset's 3 epochs at batch 8 over the training pairs just built."""
    from datasets import load_from_disk

    try:
        pairs = len(load_from_disk(str(root / "data" / "dataset" / "hf"))["train"])
    except (OSError, KeyError):
        return None
    return EPOCHS * math.ceil(pairs / BATCH)


def frontier_projection(
    result: dict, runs: int, steps: int, stack_size: int, full_steps: int | None
) -> int | None:
    """The whole grid's training at `full_steps` per run, stacked, from a shorter measured run: each run's
    set-up and split scale with the runs, the loop with the stacks and steps (the reference fill, done once
    before, is left out)."""
    if not full_steps or not steps or "loop_s" not in result:
        return None
    per_run = (result["wall_s"] - result["loop_s"]) / runs
    per_stack_step = result["loop_s"] / (math.ceil(runs / stack_size) * steps)
    return round(
        FRONTIER_RUNS * per_run + math.ceil(FRONTIER_RUNS / stack_size) * full_steps * per_stack_step
    )


def json_lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith('{"')]


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    args = parse_args(argv)
    check_paths(args)
    deadline = started + args.minutes * 60 if args.minutes else None
    args.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "bench/paper_gpu.py", *(sys.argv[1:] if argv is None else argv)])
    report = {"command": command, "quick": args.quick, "sizes": {name: getattr(args, name) for name in SIZES},
              "versions": {name: importlib.metadata.version(name) for name in VERSIONS}}  # fmt: skip

    def save() -> None:
        write_atomic(args.out / "paper_gpu.json", json.dumps(report, indent=2))

    with scratch_folder(prefix="paper-gpu-") as scratch:
        clock = time.perf_counter()
        models = build_standins(Path(args.standins_dir or scratch / "standins"), args.quick, args.data_dir)
        report["standins"] = {
            "build_s": round(time.perf_counter() - clock, 1),
            "paths": {role: str(path) for role, path in models.items()},
            "parameters": {"policy": base_parameters(str(models["policy"])),
                           "reward": classifier_parameters(models["reward"]),
                           "gold_reward": classifier_parameters(models["gold_reward"])},
        }  # fmt: skip
        save()
        # Offline and without W&B: everything is local. The stand-ins are pickle-only, as the Hub's are.
        env = {**os.environ, "FDPO_SFT_MODEL": str(models["policy"]),
               "FDPO_REWARD_MODEL": str(models["reward"]),
               "FDPO_GOLD_REWARD_MODEL": str(models["gold_reward"]), "FDPO_DATA_DIR": str(args.data_dir),
               "FDPO_MODELS_DIR": str(scratch / "models"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
               "TQDM_DISABLE": "1", "FDPO_SAFETENSORS_ONLY": "0"}  # fmt: skip

        def seconds_left(reserve_min: float = 0.0) -> float | None:
            return None if deadline is None else max(deadline - time.perf_counter() - reserve_min * 60, 1.0)

        root = args.out / "paper"
        paper = run_part(
            paper_command(args, root),
            env,
            args.out / "paper.log",
            seconds_left(FRONTIER_RESERVE_MIN + RLOO_RESERVE_MIN),
        )
        record = (
            json.loads((root / "reproduce.json").read_text()) if (root / "reproduce.json").is_file() else {}
        )
        paper["stage_s"] = record.get("stage_s", {})
        paper["wall_time_s"] = record.get("wall_time_s")
        paper["train"] = paper_training(root, paper["stage_s"])
        report["paper"] = paper
        save()

        rloo_dir = args.out / "rloo"
        rloo = run_part(rloo_command(args, models, root, rloo_dir), env, args.out / "rloo.log",
                        seconds_left(FRONTIER_RESERVE_MIN))  # fmt: skip
        rloo["train"] = rloo_training(rloo_dir, rloo["wall_s"])
        report["rloo"] = rloo
        save()

        stack_size = min(STUDY_RUNS, args.frontier_runs)
        grid = frontier_command(args, models["policy"], stack_size)
        frontier = run_part(grid, env, args.out / "frontier.log", seconds_left())
        stacked = next((line for line in json_lines(args.out / "frontier.log") if "mode" in line), {})
        # grid.py's own figures: wall_s there is the training alone, without its imports, pairing and fill.
        train = {"runs": args.frontier_runs, "steps_per_run": args.frontier_steps, **stacked}
        train["projected_grid_full_length_s"] = frontier_projection(
            stacked,
            args.frontier_runs,
            args.frontier_steps,
            stack_size,
            paper["train"].get("full_length_steps"),
        )
        frontier["train"] = train
        report["frontier"] = frontier
    # Only now: a CUDA context in this process would have counted in nvidia-smi's memory.used.
    report["device"] = device_name()
    peak = bf16_peak_flops()
    report["bf16_peak_tflops"] = peak / 1e12 if peak else None
    train = report["paper"]["train"]
    if train:
        parameters = report["standins"]["parameters"]["policy"]
        train["mfu"] = frozen_base_mfu(parameters, train.get("tokens_per_s"))
        train["loop_mfu"] = frozen_base_mfu(parameters, train["loop_tokens_per_s"])
    report["wall_s"] = round(time.perf_counter() - started, 1)
    save()
    print(summary(report, args.out))
    failed = [name for name in ("paper", "rloo", "frontier") if report[name]["exit_status"] != 0]
    if failed:
        raise RunFailed(f"{', '.join(failed)} did not finish (exit status or deadline): see {args.out}", 1)


def summary(report: dict, out: Path) -> str:
    """One screen: where the time went, training rates, memory, versions."""
    paper, frontier, train = report["paper"], report["frontier"], report["paper"]["train"]
    rloo, online = report["rloo"], report["rloo"]["train"]
    grid = frontier["train"]
    versions = ", ".join(f"{name} {version}" for name, version in report["versions"].items())
    parameters = ", ".join(
        f"{role} {count / 1e6:.1f} M" for role, count in report["standins"]["parameters"].items()
    )
    lines = [
        f"paper preset check on {report['device']}{' (--quick)' if report['quick'] else ''}: "
        f"{report['wall_s']:.0f} s in all",
        f"  {versions}",
        f"stand-ins built in {report['standins']['build_s']:.0f} s: {parameters}",
        f"paper preset: {paper['wall_s']:.0f} s, exit status {paper['exit_status']}"
        f"{', cut at the deadline' if paper['cut_at_deadline'] else ''}, GPU memory peak "
        f"{paper['gpu_memory_peak_gib']} GiB",
        *(f"  {stage:<12}{seconds:8.1f} s" for stage, seconds in paper["stage_s"].items()),
    ]
    if train:
        lines.append(
            f"  training: {train['runs']} runs x {train['steps_per_run']} steps, "
            f"{train.get('tokens_per_s')} tokens/s over the stage ({train['loop_tokens_per_s']} in the "
            f"loop), MFU {train.get('mfu')} ({train['loop_mfu']} in the loop); 3 epochs "
            f"({train.get('full_length_steps')} steps) projected {train.get('projected_full_length_s')} s"
        )
    lines.append(
        f"RLOO run (beta {RLOO_BETA}): {rloo['wall_s']:.0f} s, exit status {rloo['exit_status']}"
        f"{', cut at the deadline' if rloo['cut_at_deadline'] else ''}, GPU memory peak "
        f"{rloo['gpu_memory_peak_gib']} GiB"
    )
    if online:
        lines.append(
            f"  {online['steps']} steps in {online['loop_s']} s ({online['s_per_step']} s/step, "
            f"{online['completions_per_s']} completions/s); {online.get('full_length_steps')} steps "
            f"projected {online.get('projected_full_length_s')} s, the grid's {online.get('grid_runs')} "
            f"RLOO runs {online.get('projected_grid_s')} s"
        )
    lines += [
        f"frontier grid: {grid['runs']} of {FRONTIER_RUNS} runs x {grid['steps_per_run']} steps, "
        f"{frontier['wall_s']:.0f} s ({grid.get('wall_s')} s training), exit status {frontier['exit_status']}"
        f"{', cut at the deadline' if frontier['cut_at_deadline'] else ''}, GPU memory peak "
        f"{frontier['gpu_memory_peak_gib']} GiB",
        f"  {grid.get('tokens_per_s')} tokens/s ({grid.get('loop_tokens_per_s')} in the loop), MFU "
        f"{grid.get('mfu')} ({grid.get('loop_mfu')} in the loop); all {FRONTIER_RUNS} runs at 3 epochs "
        f"projected {grid['projected_grid_full_length_s']} s",
        f"wrote {out / 'paper_gpu.json'}",
    ]
    return "\n".join(lines)


cli = stops_cleanly(main)

if __name__ == "__main__":
    cli()
