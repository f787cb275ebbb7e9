"""The study's grid of f-DPO runs, and a resumable sweep over it.

The study's table (19 models): sigmoid and hinge at beta in {10, 1, 0.5, 0.1}; JSD and forward KL at
beta in {1, 0.1}; alpha-divergence with alpha in {0.3, 0.5, 0.7} at beta in {1, 0.1}; and the SFT
model. `extended` adds the paper's alphas 0.1 and 0.9, Jeffreys and Neyman chi^2 (beta in {1, 0.1}).
Its learning rates differ between reverse KL and the f-divergences (10x), so it cannot tell a
divergence's effect from a step size's.

The frontier grid is the controlled comparison: every divergence at one learning rate, over one beta
sweep wide enough that the families' KL ranges overlap, several seeds each, so reward can be compared
at matched KL (analysis/frontier.py).

Each run directory gets a `manifest.json` once it has finished, holding the hash of its config: a run
with a matching manifest is skipped, one without is (re)started with `--resume`, so a sweep killed at
any point finishes the rest on the next call. train.py resumes only checkpoints written under the
run's own fingerprint (train_dpo/fingerprint.py): a run whose config or inputs changed starts over.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from common.appendlog import describe_changes, settings_hash
from common.atomic import write_atomic
from common.errors import RunFailed, TrainingDiverged
from train_dpo.divergences import get_divergence
from train_dpo.fingerprint import recorded_fingerprint
from train_dpo.losses import ONLINE_LOSS
from train_dpo.stack import FINAL, STACK_RUNS_FILE, split_final, stack_key
from train_dpo.trainer import run_name

MANIFEST = "manifest.json"
STACK_MEMBERS = "members.json"  # in a stack's folder: which runs, with which inputs, it trains


@dataclass(frozen=True)
class RunSpec:
    loss_type: str
    divergence: str
    beta: float
    alpha: float | None = None
    seed: int = 0

    @property
    def family(self) -> str:
        """The --only key: sigmoid, hinge, rloo, jsd, forward_kl, alpha, jeffreys, neyman_chi2, or the
        function name of an imported `module:function`."""
        return self.loss_type if self.divergence == "reverse_kl" else self.divergence.rpartition(":")[2]

    def name(self, with_seed: bool) -> str:
        base = run_name(get_divergence(self.divergence, self.alpha), self.loss_type, self.beta)
        return f"{base}_seed{self.seed}" if with_seed else base

    def folder_name(self, grid: str) -> str:
        """The run's folder under runs/, the one place a sweep names it: on the study grid seed 0 keeps the
        study's own name and only later seeds add `_seed<i>`, so adding seeds (to any family) renames no
        finished run; on the frontier grid every run names its seed."""
        return self.name(with_seed=grid != "study" or self.seed > 0)

    def flags(self) -> list[str]:
        flags = ["--loss_type", self.loss_type, "--divergence", self.divergence, "--beta", str(self.beta)]
        flags += ["--seed", str(self.seed)]
        return flags + (["--alpha", str(self.alpha)] if self.alpha is not None else [])


def study_grid(extended: bool = False, seeds: int = 1, extra: Iterable[str] = ()) -> list[RunSpec]:
    """The study's 18 training runs (plus the extension), once per seed.

    `extra`: more divergences (`module:function`, see `divergences.imported_divergence`), each run as
    the study ran its f-divergences: sigmoid loss, beta 1 and 0.1.
    """
    specs: list[tuple] = []
    for loss in ("sigmoid", "hinge"):
        specs += [(loss, "reverse_kl", beta, None) for beta in (10.0, 1.0, 0.5, 0.1)]
    for divergence in ("jsd", "forward_kl"):
        specs += [("sigmoid", divergence, beta, None) for beta in (1.0, 0.1)]
    alphas = (0.1, 0.3, 0.5, 0.7, 0.9) if extended else (0.3, 0.5, 0.7)
    specs += [("sigmoid", "alpha", beta, alpha) for alpha in alphas for beta in (1.0, 0.1)]
    more = (("jeffreys", "neyman_chi2") if extended else ()) + tuple(extra)
    specs += [("sigmoid", divergence, beta, None) for divergence in more for beta in (1.0, 0.1)]
    return [RunSpec(*spec, seed=seed) for seed in range(seeds) for spec in specs]


FRONTIER_FAMILIES = (  # (loss_type, divergence, alpha)
    ("sigmoid", "reverse_kl", None),
    ("hinge", "reverse_kl", None),
    ("sigmoid", "jsd", None),
    ("sigmoid", "forward_kl", None),
    ("sigmoid", "alpha", 0.3),
    ("sigmoid", "alpha", 0.5),
    ("sigmoid", "alpha", 0.7),
)
# A weaker constraint moves every family further from the reference; 10 and 3 reach down to the low KL at
# which forward KL and JSD sit (the rule: analysis/frontier.py).
FRONTIER_BETAS = (10.0, 3.0, 1.0, 0.3, 0.1, 0.03)
# The online-RL baseline's KL coefficients (train_dpo/rloo.py): its reward pays beta per nat of the sampled
# sequence's KL, so these span roughly the DPO families' 1-8 nats within its fixed number of steps.
RLOO_BETAS = (0.3, 0.1, 0.03, 0.01)


def frontier_grid(
    seeds: int = 3,
    betas: Iterable[float] = FRONTIER_BETAS,
    extra: Iterable[str] = (),
    online_betas: Iterable[float] = (),
) -> list[RunSpec]:
    """Every divergence of the paper's Figure 2 (and each of `extra`, sigmoid loss) at the same betas,
    and the online-RL baseline at `online_betas`, once per seed."""
    families = [*FRONTIER_FAMILIES, *(("sigmoid", divergence, None) for divergence in extra)]
    families = [(loss, divergence, alpha, beta) for loss, divergence, alpha in families for beta in betas]
    families += [(ONLINE_LOSS, "reverse_kl", None, beta) for beta in online_betas]
    return [
        RunSpec(loss, divergence, beta, alpha, seed)
        for seed in range(seeds)
        for loss, divergence, alpha, beta in families
    ]


GRIDS = {"study": study_grid, "frontier": frontier_grid}


def select(grid: Iterable[RunSpec], only: str | None) -> list[RunSpec]:
    """Runs whose family or name (e.g. `jsd`, `gpt_imdb_jsd_beta1`) is in the comma-separated `only`."""
    grid = list(grid)
    if not only:
        return grid
    wanted = {item.strip() for item in only.split(",") if item.strip()}

    def keys(spec: RunSpec) -> set[str]:
        return {spec.family, spec.name(with_seed=False), spec.name(with_seed=True)}

    unknown = wanted - set().union(*map(keys, grid))
    if unknown:
        families = sorted({spec.family for spec in grid})
        raise ValueError(
            f"--only: unknown run family or name {', '.join(sorted(unknown))}; "
            f"families: {', '.join(families)}"
        )
    return [spec for spec in grid if keys(spec) & wanted]


def check_unique_names(grid: Iterable[RunSpec], grid_name: str) -> None:
    """Refuse two runs of a plan that would share a folder (a divergence of one's own named like a built-in
    one, or two modules' functions of one name): the later would overwrite the earlier, or a stack would
    lock one folder twice."""
    made_by: dict[str, RunSpec] = {}
    for spec in grid:
        name = spec.folder_name(grid_name)
        first = made_by.setdefault(name, spec)
        if first is not spec:
            raise ValueError(
                f"two runs would be named {name}: divergence {first.divergence} and divergence "
                f"{spec.divergence}; give a divergence of your own a name no other has (rename its function "
                "or its Divergence's name)"
            )


IDENTITY = ("loss_type", "divergence", "beta", "alpha", "seed")  # what a run's folder name stands for


def identity_of(settings: dict) -> dict:
    """The settings that name a run's folder, as a run records them (`alpha` only for the alpha family)."""
    found = {key: settings.get(key) for key in IDENTITY}
    if found["divergence"] != "alpha":
        found["alpha"] = None
    if isinstance(found["loss_type"], list) and len(found["loss_type"]) == 1:  # TRL keeps a list of losses
        found["loss_type"] = found["loss_type"][0]
    if isinstance(found["beta"], int | float):
        found["beta"] = float(found["beta"])
    return found


def recorded_identity(run_dir: Path) -> dict | None:
    """The identity of the run a folder holds, from its sweep manifest or its own run record; None if none."""
    settings = (read_manifest(run_dir).get("inputs") or {}).get("settings")
    if not isinstance(settings, dict):
        settings = (recorded_fingerprint(run_dir) or {}).get("settings")
    return identity_of(settings) if isinstance(settings, dict) else None


def identity_clash(run_dir: Path, inputs: dict) -> str | None:
    """Why the folder cannot take this run (it holds another run: another divergence, beta or seed that
    maps to the same name), or None. Retraining it in place would destroy that run."""
    held, wanted = recorded_identity(run_dir), identity_of(inputs.get("settings") or {})
    if held is None or held == wanted:
        return None
    differ = ", ".join(
        f"{key} {held[key]} (this plan: {wanted[key]})" for key in IDENTITY if held[key] != wanted[key]
    )
    return f"{run_dir} holds another run ({differ}); name your divergence apart, or use another --results_dir"


def read_manifest(run_dir: Path) -> dict:
    """The run's sweep manifest, or {} when it has none (or one that does not read back)."""
    try:
        manifest = json.loads((run_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def is_finished(run_dir: Path, inputs: dict) -> bool:
    """Finished with these inputs, and its weights are still the ones that run left (none trained since)."""
    manifest = read_manifest(run_dir)
    return manifest.get("config_hash") == settings_hash(inputs) and manifest.get("run_hash") == (
        recorded_fingerprint(run_dir) or {}
    ).get("hash")


def mark_finished(run_dir: Path, inputs: dict, flags: list[str]) -> None:
    """Record that the run finished with `inputs`, and which training run left its weights."""
    manifest = {"config_hash": settings_hash(inputs), "inputs": inputs, "flags": flags,
                "run_hash": (recorded_fingerprint(run_dir) or {}).get("hash")}  # fmt: skip
    write_atomic(run_dir / MANIFEST, json.dumps(manifest, indent=2, default=str))


def run_status(run_dir: Path, inputs: dict) -> str:
    """What a sweep does with the run: `cached`, `train`, `resume`, or `retrain (config changed: ...)`.

    `inputs` holds the run's resolved settings under `settings` (as in its fingerprint) beside what it
    depends on upstream. A run whose settings changed is retrained from scratch: train.py removes
    checkpoints written under another fingerprint, so none of them is resumed.
    """
    if is_finished(run_dir, inputs):
        return "cached"
    clash = identity_clash(run_dir, inputs)
    if clash:
        return f"refused: {clash}"
    manifest, recorded = read_manifest(run_dir), recorded_fingerprint(run_dir)
    if manifest.get("inputs") and manifest["inputs"] != inputs:
        return f"retrain (config changed: {input_changes(manifest['inputs'], inputs)})"
    if manifest:
        return "retrain (its weights are not the ones its manifest records)"
    if recorded and recorded.get("settings") != inputs.get("settings"):
        return (
            f"retrain (config changed: {describe_changes(recorded.get('settings', {}), inputs['settings'])})"
        )
    return "resume" if any(run_dir.glob("checkpoint-*")) else "train"


def input_changes(old: dict, new: dict) -> str:
    """What differs between two runs' inputs: their settings, then what they depend on upstream (kept
    apart: an upstream `dataset` hash and the `dataset` path flag share a name)."""
    settings = describe_changes(old.get("settings") or {}, new.get("settings") or {})
    upstream = describe_changes({**old, "settings": None}, {**new, "settings": None})
    return ", ".join(part for part in (settings, upstream) if part) or "the record does not read back"


def run_flags(spec: RunSpec, common: list[str], lr: float | None, out_dir: Path) -> list[str]:
    """A run's command-line flags; `lr` None leaves the learning rate to `common` (its recipe)."""
    rate = [] if lr is None else ["--learning_rate", str(lr)]
    return [*common, *spec.flags(), *rate, "--output_dir", str(out_dir)]


def is_online(flags: list[str]) -> bool:
    """Whether a run's flags are an online-RL run's (train_dpo/rloo.py), told by its loss type."""
    return any(flag == "--loss_type" and value == ONLINE_LOSS for flag, value in itertools.pairwise(flags))


def trainer_module(flags: list[str]) -> str:
    """The module that trains a run: train_dpo.rloo for an online-RL run, train_dpo.train for a DPO run."""
    return "train_dpo.rloo" if is_online(flags) else "train_dpo.train"


def parse_run_flags(flags: list[str]) -> tuple:
    """A run's flags parsed by the script that trains it: (script arguments, training config)."""
    from importlib import import_module

    return import_module(trainer_module(flags)).parse_args(flags)


def fill_reference_cache(flags: list[str]) -> None:
    """Compute the shared reference log-probs once, before runs that read them start side by side."""
    if "--ref_logps_cache" not in flags or is_online(flags):
        return
    from train_dpo.train import build_trainer, parse_args

    with tempfile.TemporaryDirectory() as scratch:
        trainer = build_trainer(*parse_args([*flags, "--output_dir", scratch]))  # TRL precomputes: fills it
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class Unit:
    """What one training call does: one run alone, or several runs as one LoRA stack (`stack_dir`)."""

    jobs: list[tuple[Path, list[str], dict]]
    stack_dir: Path | None = None

    @property
    def label(self) -> str:
        names = ", ".join(run_dir.name for run_dir, _, _ in self.jobs)
        return (
            names
            if self.stack_dir is None
            else f"{len(self.jobs)} runs stacked ({self.stack_dir.name}): {names}"
        )

    def command(self) -> list[str]:
        """The unit as its own process."""
        if self.stack_dir is None:
            flags = self.jobs[0][1]
            return [sys.executable, "-m", trainer_module(flags), *flags, "--resume", "true"]
        return [sys.executable, "-m", "train_dpo.stack", "--stack_dir", str(self.stack_dir),
                "--runs", str(self.stack_dir / STACK_RUNS_FILE)]  # fmt: skip

    def train_here(self) -> None:
        """The unit in this process."""
        if self.stack_dir is None:
            from importlib import import_module

            flags = [*self.jobs[0][1], "--resume", "true"]
            module = import_module(trainer_module(flags))
            module.train(*module.parse_args(flags))
        else:
            from train_dpo.stack import train_stack

            train_stack([flags for _, flags, _ in self.jobs], self.stack_dir)

    def finish(self) -> None:
        for run_dir, flags, inputs in self.jobs:
            mark_finished(run_dir, inputs, flags)


def read_members(stack_dir: Path) -> dict:
    """A stack's {run folder: inputs hash}; {} when its members.json does not read back (a stack cut off
    while writing it, or damaged), so one bad stack folder cannot stop a sweep that does not need it."""
    try:
        members = json.loads((stack_dir / STACK_MEMBERS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return members if isinstance(members, dict) else {}


def finished_stacks(jobs: list[tuple[Path, list[str], dict]], stacks_dir: Path | None):
    """(stack folder, jobs) for each finished stack that trained some of `jobs` with their inputs: those
    runs only need splitting out of it."""
    if stacks_dir is None:
        return []
    found, left = [], list(jobs)
    for members_file in sorted(stacks_dir.glob(f"*/{STACK_MEMBERS}")):
        members = read_members(members_file.parent)
        ready = [job for job in left if members.get(str(job[0])) == settings_hash(job[2])]
        if ready and (members_file.parent / FINAL / "stack.json").is_file():
            found.append((members_file.parent, ready))
            left = [job for job in left if job not in ready]
    return found


def plan_units(
    jobs: list[tuple[Path, list[str], dict]], stack_size: int, stacks_dir: Path | None
) -> list[Unit]:
    """The jobs as training units: runs that can share a stack (`stack.stack_key`) in chunks of `stack_size`,
    in grid order; the rest alone.

    A stack's folder is named by its members and their inputs, so a killed sweep, which finds the same
    runs unfinished, resumes the same stack. A stack that finished training but was stopped while its
    runs were being written out is only split again.
    """
    if stack_size <= 1 or stacks_dir is None:
        return [Unit([job]) for job in jobs]
    pending = list(jobs)
    for stack_dir, ready in finished_stacks(pending, stacks_dir):
        split_final(stack_dir / FINAL, [run_dir for run_dir, _, _ in ready])
        Unit(ready).finish()
        pending = [job for job in pending if job not in ready]
    units = []
    for unit in group_units(pending, stack_size, stacks_dir):
        if unit.stack_dir is not None:
            unit.stack_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(unit.stack_dir / STACK_MEMBERS, json.dumps(stack_members(unit.jobs), indent=2))
            runs = json.dumps([flags for _, flags, _ in unit.jobs], indent=2)
            write_atomic(unit.stack_dir / STACK_RUNS_FILE, runs)
        units.append(unit)
    return units


def stack_members(jobs: list[tuple[Path, list[str], dict]]) -> dict:
    return {str(run_dir): settings_hash(inputs) for run_dir, _, inputs in jobs}


def group_units(jobs: list[tuple[Path, list[str], dict]], stack_size: int, stacks_dir: Path) -> list[Unit]:
    """Runs that can share a stack (`stack.stack_key`) in chunks of `stack_size`, in grid order, each chunk
    named by its members and their inputs; a chunk of one alone, and an online-RL run always alone (it
    samples as it trains: a stack of LoRA adapters over pairs does not apply). Writes nothing."""
    from train_dpo.train import parse_args

    groups: dict[str, list] = {}
    for job in jobs:
        if not is_online(job[1]):
            groups.setdefault(stack_key(*parse_args(job[1])), []).append(job)
    units = []
    for group in groups.values():
        for start in range(0, len(group), stack_size):
            chunk = group[start : start + stack_size]
            stack_dir = stacks_dir / settings_hash(stack_members(chunk))[:12] if len(chunk) > 1 else None
            units.append(Unit(chunk, stack_dir))
    return units + [Unit([job]) for job in jobs if is_online(job[1])]


def planned_statuses(
    jobs: list[tuple[Path, list[str], dict]], statuses: dict[Path, str], stack_size: int, stacks_dir: Path
) -> dict[Path, str]:
    """`statuses` (each run as `run_status` sees it alone) as a stacked sweep will treat the runs: split out
    of a finished stack, resumed with their stack, or trained in a new one, which never resumes a run's
    own checkpoints. What `plan_units` will do, without doing it, for the dry run."""
    from train_dpo.train import last_complete_checkpoint

    if stack_size <= 1:
        return statuses
    planned, pending = dict(statuses), list(jobs)
    for stack_dir, ready in finished_stacks(pending, stacks_dir):
        for run_dir, _, _ in ready:
            planned[run_dir] = f"split out of finished stack {stack_dir.name}"
        pending = [job for job in pending if job not in ready]
    for unit in group_units(pending, stack_size, stacks_dir):
        if unit.stack_dir is None:
            continue
        if any("dataset" in inputs and inputs["dataset"] is None for _, _, inputs in unit.jobs):
            # A stack is named by its members' inputs, the pairs' hashes among them: not known before the
            # dataset is built, so no name is given that the real run would not use.
            for run_dir, _, _ in unit.jobs:
                planned[run_dir] = f"{statuses[run_dir]} in a new stack (named once the dataset is built)"
            continue
        checkpoint = last_complete_checkpoint(unit.stack_dir, prune=False)
        for run_dir, _, _ in unit.jobs:
            if checkpoint:
                planned[run_dir] = f"resume with stack {unit.stack_dir.name} from {Path(checkpoint).name}"
            elif statuses[run_dir] == "resume":  # its own checkpoints: a stack starts afresh
                planned[run_dir] = f"train in stack {unit.stack_dir.name}"
            else:
                planned[run_dir] = f"{statuses[run_dir]} in stack {unit.stack_dir.name}"
    return planned


def healthy_mates(unit: Unit, error: TrainingDiverged) -> list[tuple[Path, list[str], dict]]:
    """The runs of a failed stack that did not fail themselves (a stack stops whole when one run's loss turns
    non-finite); none for a lone run, or when the failure names no run."""
    if unit.stack_dir is None or not error.runs:
        return []
    return [job for job in unit.jobs if job[0].name not in error.runs]


def train_runs(
    jobs: list[tuple[Path, list[str], dict]],
    log,
    parallel: int | None = None,
    stack_size: int = 1,
    stacks_dir: Path | None = None,
) -> None:
    """Train each (run_dir, flags, inputs) job, alone or stacked (`plan_units`): in-process one unit after
    another, or `parallel` units at a time.

    Side by side, each unit is its own process, placed on the GPU with the fewest units (default: one per
    GPU). Each unit resumes from its last checkpoint, and its runs get their manifests only once it has
    finished.
    """
    units = plan_units(jobs, stack_size, stacks_dir)
    parallel = parallel or max(torch.cuda.device_count(), 1)
    if parallel == 1 or len(units) <= 1:
        failures = []
        while units:
            unit = units.pop(0)
            log(f"training {unit.label}")
            try:
                unit.train_here()
            except TrainingDiverged as error:
                healthy = healthy_mates(unit, error)
                if not healthy:
                    raise
                failures.append(error)
                log(f"{error}; its {len(healthy)} healthy stack mates are trained without it")
                units[:0] = plan_units(healthy, stack_size, stacks_dir)
                continue
            unit.finish()
        if failures:  # the healthy runs are finished; the failed ones stop the sweep as before
            raise TrainingDiverged(
                "; ".join(map(str, failures)), runs=[run for e in failures for run in e.runs]
            )
        return
    fill_reference_cache(next((flags for _, flags, _ in jobs if not is_online(flags)), []))
    gpus = torch.cuda.device_count()
    pending, running = list(units), {}
    try:
        while pending or running:
            while pending and len(running) < parallel:
                unit = pending.pop(0)
                env, device = dict(os.environ), None
                # Each process would otherwise start one thread per core: N units would oversubscribe N-fold.
                env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
                if gpus:
                    load = [sum(used == d for used, _ in running.values()) for d in range(gpus)]
                    device = load.index(min(load))
                    env["CUDA_VISIBLE_DEVICES"] = str(device)
                log(f"training {unit.label} on {'CPU' if device is None else f'GPU {device}'}")
                running[subprocess.Popen(unit.command(), env=env)] = (device, unit)
            for process in [p for p in running if p.poll() is not None]:
                _, unit = running.pop(process)
                if process.returncode != 0:  # the runs beside it are stopped below, before the error
                    what = "run" if unit.stack_dir is None else "stack of"
                    raise RunFailed(
                        f"{what} {unit.label} failed with exit status {process.returncode} (its error is "
                        "above); the runs beside it were stopped and resume on the next call",
                        process.returncode,
                    )
                unit.finish()
            if running:
                time.sleep(1.0)
    except BaseException:  # a failed run, Ctrl-C: no run goes on training behind the sweep's back, and each
        for process in running:  # is waited for, so that no line of theirs lands after the error
            process.terminate()
        for process in running:
            process.wait()
        raise
