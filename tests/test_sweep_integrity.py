"""A sweep's records say what its runs hold: splits, plans, names, secrets and recorded commands."""

import errno
import json
import shlex
import shutil
from pathlib import Path

import pytest
from synthetic import scored_file

from common.errors import InputError, exits_cleanly
from train_dpo.fingerprint import recorded_fingerprint
from train_dpo.stack import FINAL, split_final
from train_dpo.sweep import (
    RunSpec,
    check_unique_names,
    frontier_grid,
    input_changes,
    is_finished,
    plan_units,
    planned_statuses,
    run_status,
    select,
    train_runs,
)

REPO = Path(__file__).resolve().parents[1]


def job(model_dir, root, name, spec, weight_decay):
    """(run_dir, flags, inputs) of a short run, its inputs naming its weight decay as a sweep's would."""
    run_dir = root / "runs" / name
    flags = ["--model", str(model_dir), "--dataset", scored_file(), "--output_dir", str(run_dir),
             "--max_train_pairs", "16", "--max_eval_pairs", "8", "--max_length", "64", "--max_steps", "2",
             "--save_strategy", "no", "--ref_logps_cache", str(root / "ref_logps"),
             "--weight_decay", str(weight_decay), *spec]  # fmt: skip
    return run_dir, flags, {"weight_decay": weight_decay}


JSD = ["--divergence", "jsd", "--beta", "1"]
FORWARD_KL = ["--divergence", "forward_kl", "--beta", "1"]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()}


@pytest.mark.slow
def test_splitting_one_run_out_of_an_old_stack_leaves_its_stack_mates_alone(tiny_model_dir, tmp_path):
    """Stack X trains a and b; stack Y retrains both with other settings; a sweep back at X's settings for a
    alone splits a out of X, and b keeps Y's weights and records."""
    stacks = tmp_path / "stacks"
    first = [
        job(tiny_model_dir, tmp_path, "a", JSD, 0.0),
        job(tiny_model_dir, tmp_path, "b", FORWARD_KL, 0.0),
    ]
    train_runs(first, print, stack_size=18, stacks_dir=stacks)
    a_from_x = snapshot(tmp_path / "runs" / "a")
    second = [
        job(tiny_model_dir, tmp_path, "a", JSD, 0.1),
        job(tiny_model_dir, tmp_path, "b", FORWARD_KL, 0.1),
    ]
    train_runs(second, print, stack_size=18, stacks_dir=stacks)
    b_from_y = snapshot(tmp_path / "runs" / "b")
    assert len(list(stacks.glob("*/final/stack.json"))) == 2

    train_runs(first[:1], print, stack_size=18, stacks_dir=stacks)  # only split out of stack X

    assert snapshot(tmp_path / "runs" / "b") == b_from_y
    assert is_finished(*second[1][::2])
    a_now = snapshot(tmp_path / "runs" / "a")
    assert a_now["adapter_model.safetensors"] == a_from_x["adapter_model.safetensors"]
    # Its record names the weights it holds now: X's settings, not Y's it held a moment ago.
    assert recorded_fingerprint(tmp_path / "runs" / "a")["settings"]["weight_decay"] == 0.0
    assert a_now["run_config.json"] == a_from_x["run_config.json"]
    assert is_finished(*first[0][::2]) and not is_finished(*second[0][::2])


def test_the_dry_run_says_which_runs_a_stack_resumes_or_only_splits(tiny_model_dir, tmp_path):
    stacks = tmp_path / "stacks"
    jobs = [job(tiny_model_dir, tmp_path, name, JSD, wd) for name, wd in (("a", 0.0), ("b", 0.0))]
    statuses = {run_dir: run_status(run_dir, inputs) for run_dir, _, inputs in jobs}
    assert set(statuses.values()) == {"train"}
    (unit,) = plan_units(jobs, 18, stacks)  # writes the stack's members, as a sweep does before training
    planned = planned_statuses(jobs, statuses, 18, stacks)
    assert set(planned.values()) == {f"train in stack {unit.stack_dir.name}"}

    checkpoint = unit.stack_dir / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    planned = planned_statuses(jobs, statuses, 18, stacks)
    assert set(planned.values()) == {f"resume with stack {unit.stack_dir.name} from checkpoint-4"}

    (unit.stack_dir / FINAL).mkdir()
    (unit.stack_dir / FINAL / "stack.json").write_text("{}")
    planned = planned_statuses(jobs, statuses, 18, stacks)
    assert set(planned.values()) == {f"split out of finished stack {unit.stack_dir.name}"}
    assert planned_statuses(jobs, statuses, 1, stacks) == statuses  # one at a time: as each run says


def test_an_unreadable_stack_record_of_another_stack_stops_no_sweep(tiny_model_dir, tmp_path):
    stacks = tmp_path / "stacks"
    (stacks / "cut-off").mkdir(parents=True)
    (stacks / "cut-off" / "members.json").write_text('{"runs/a": "12')  # cut off mid-write
    jobs = [job(tiny_model_dir, tmp_path, name, JSD, 0.0) for name in ("a", "b")]
    (unit,) = plan_units(jobs, 18, stacks)
    assert len(unit.jobs) == 2 and unit.stack_dir.name != "cut-off"


def test_a_full_disk_while_splitting_names_the_run_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    final, run_dir = tmp_path / "stack" / FINAL, tmp_path / "runs" / "a"
    (final / "tokenizer").mkdir(parents=True)
    (final / "tokenizer" / "tokenizer.json").write_text("{}")
    run_dir.mkdir(parents=True)
    import torch

    save_file({"run0/base_model.model.h.0.attn.c_attn.lora_A.weight": torch.zeros(2, 4)},
              str(final / "stack_adapters.safetensors"))  # fmt: skip
    (final / "lora_config.json").write_text(json.dumps({"r": 2, "target_modules": ["c_attn"]}))
    run = {"output_dir": str(run_dir), "train": {}, "eval": None, "state": {}}
    (final / "stack.json").write_text(json.dumps({"runs": [run], "base_model": "gpt2"}))

    def full(source, destination, **_):
        raise OSError(errno.ENOSPC, "No space left on device", str(source))

    monkeypatch.setattr(shutil, "copy2", full)
    with pytest.raises(OSError) as raised:
        split_final(final)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(run_dir)
    assert not (run_dir / ".final").exists() and list(run_dir.iterdir()) == []


def test_every_run_of_a_plan_has_a_name_of_its_own(tmp_path, monkeypatch):
    (tmp_path / "fdpo_twin_divs.py").write_text("def jsd(logu):\n    return 2 * logu\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    grid = frontier_grid(1, betas=(1.0,))
    check_unique_names(grid, "frontier")
    jsd = [spec for spec in grid if spec.divergence == "jsd"]
    twin = RunSpec("sigmoid", "fdpo_twin_divs:jsd", 1.0, seed=0)  # a function of one's own called jsd
    with pytest.raises(ValueError, match=r"two runs would be named gpt_imdb_jsd_beta1_seed0: divergence jsd"):
        check_unique_names([*jsd, twin], "frontier")
    assert select(grid, "jsd") == jsd


def test_a_stack_refuses_two_runs_that_write_one_folder(tiny_model_dir, tmp_path):
    from train_dpo.stack import build_stack

    jobs = [job(tiny_model_dir, tmp_path, "a", spec, 0.0) for spec in (JSD, FORWARD_KL)]
    with pytest.raises(InputError, match="two runs of a stack write one folder"):
        build_stack([flags for _, flags, _ in jobs], tmp_path / "stack")


def test_a_copied_sweep_says_what_changed():
    old = {"settings": {"dataset": "/a/data/dataset/hf", "beta": 1.0}, "dataset": "f00d"}
    new = {"settings": {"dataset": "/b/data/dataset/hf", "beta": 1.0}, "dataset": "f00d"}
    assert input_changes(old, new) == "dataset /a/data/dataset/hf → /b/data/dataset/hf"
    assert input_changes({**old, "dataset": "beef"}, old) == "dataset beef → f00d"


def reproduce_args(*extra) -> list[str]:
    return ["--preset", "tiny", "--only", "jsd", "--dry-run", *extra]


def test_dataset_flags_are_compared_as_the_stage_reads_them(monkeypatch, tmp_path):
    import reproduce

    def upstream(dataset_args: str) -> dict:
        args = reproduce.parse_args(reproduce_args("--dataset_args", dataset_args))
        flags = ["--preset", "tiny", "--out_dir", str(tmp_path), *args.dataset_args]
        return reproduce.upstream_inputs(args, str(tmp_path / "sft"), tmp_path, flags)

    same = upstream("--num_prompts 24 --max_new_tokens 12")
    assert upstream("--num_prompts  24   --max_new_tokens=12 --overwrite true") == same
    assert upstream("--num_prompts 25 --max_new_tokens 12") != same


def test_an_sft_model_edited_in_place_is_another_base_policy(tiny_model_dir, tmp_path):
    import reproduce

    model = tmp_path / "sft"
    shutil.copytree(tiny_model_dir, model)
    args = reproduce.parse_args(reproduce_args())
    flags = ["--preset", "tiny", "--out_dir", str(tmp_path)]
    before = reproduce.upstream_inputs(args, str(model), tmp_path, flags)
    weights = next(path for path in model.iterdir() if path.suffix in (".safetensors", ".bin"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert reproduce.upstream_inputs(args, str(model), tmp_path, flags)["base_model"] != before["base_model"]


def test_an_abbreviated_grid_flag_is_refused(capsys):
    import reproduce

    with pytest.raises(SystemExit) as ended:
        exits_cleanly(reproduce.main)(reproduce_args("--train_args", "--bet 5"))
    assert ended.value.code == 2
    assert capsys.readouterr().err.strip().endswith("error: unknown flag(s): --bet 5 (see --help)")


def test_the_recorded_command_pastes_back():
    import reproduce

    argv = reproduce_args("--dataset_args", "--num_prompts 64 --num_eval_prompts 16")
    assert shlex.split(reproduce.recorded_command(argv))[4:] == argv


@pytest.mark.slow
def test_the_dry_run_predicts_the_dataset_stage_refusing_a_changed_prompt(tiny_model_dir, tmp_path):
    """A prompt edited in the source file (same length) after its generations were made: the build refuses
    them, so the dry run must say so rather than call the runs cached."""
    import reproduce
    from dataset.main import main as build_dataset

    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([f"Film number {i} was a pleasure." for i in range(24)]))
    flags = ["--preset", "tiny", "--sft_model", str(tiny_model_dir), "--prompts", str(prompts),
             "--out_dir", str(tmp_path / "data"), "--num_prompts", "8", "--num_eval_prompts", "4",
             "--max_new_tokens", "6", "--stages", "prompts,generate"]  # fmt: skip
    data = tmp_path / "data"
    build_dataset(flags)
    assert reproduce.dataset_refusal(flags, str(tiny_model_dir), data) is None
    prompts.write_text(prompts.read_text().replace("pleasure", "pleasant"))
    refusal = reproduce.dataset_refusal(flags, str(tiny_model_dir), data)
    assert isinstance(refusal, InputError) and "generations.jsonl" in str(refusal), refusal
    assert reproduce.dataset_refusal(flags, str(tmp_path / "not-built-yet"), data) is None
    # Nothing built in the folder yet: nothing can be stale, and nothing is read (no download on a bare clone).
    assert reproduce.dataset_refusal(flags, str(tiny_model_dir), tmp_path / "no-data-yet") is None


@pytest.mark.slow
def test_a_run_that_fails_its_stack_does_not_stop_its_healthy_mates(tiny_model_dir, tmp_path, monkeypatch):
    """Run b's loss is infinite at every stacked step: the stack stops naming b; the sweep trains a without
    it (alone, finished with its manifest), then fails naming b, which has none."""
    import train_dpo.stack as stack_module
    from common.errors import TrainingDiverged

    original, calls = stack_module.weighted_fdpo_loss, {"n": 0}

    def poisoned(*args, **kwargs):  # called once per run per step, run a first
        loss, *rewards = original(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("inf") if calls["n"] % 2 == 0 else loss, *rewards)

    monkeypatch.setattr(stack_module, "weighted_fdpo_loss", poisoned)
    jobs = [job(tiny_model_dir, tmp_path, name, spec, 0.0) for name, spec in (("a", JSD), ("b", FORWARD_KL))]
    logged = []
    with pytest.raises(TrainingDiverged, match=r"in run b;") as failed:
        train_runs(jobs, logged.append, 1, 18, tmp_path / "stacks")
    assert failed.value.runs == ["b"]
    assert is_finished(jobs[0][0], jobs[0][2]) and not is_finished(jobs[1][0], jobs[1][2])
    assert any("its 1 healthy stack mates are trained without it" in line for line in logged), logged


def test_ctrl_c_stops_the_runs_training_side_by_side(tmp_path, monkeypatch):
    """Ctrl-C while one run trains in its own process and the next is starting: neither goes on behind the
    sweep's back (each is terminated and waited for) and the interrupt reaches the caller."""
    import subprocess
    import sys

    import train_dpo.sweep as sweep

    started, popen = [], subprocess.Popen

    def start(command, env):
        started.append(popen([sys.executable, "-c", "import time; time.sleep(120)"], env=env))
        return started[-1]

    def log(line):
        if len(started) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(sweep.subprocess, "Popen", start)
    monkeypatch.setattr(sweep, "fill_reference_cache", lambda flags: None)
    jobs = [(tmp_path / name, ["--loss_type", "sigmoid"], {}) for name in ("a", "b", "c")]
    with pytest.raises(KeyboardInterrupt):
        train_runs(jobs, log, parallel=3)  # the third start is where Ctrl-C lands
    assert len(started) == 2 and all(process.poll() is not None for process in started)
