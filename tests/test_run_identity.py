"""A run's folder is named in one place (`RunSpec.folder_name`), and a folder holding another run is never
retrained in place, whatever door the name came in by; the sweep's flags that used to be silently lost or
overridden are refused in one line."""

import json
import subprocess
import sys
import time

import pytest
import yaml

import reproduce
from common.lock import output_lock
from train_dpo.sweep import RunSpec, identity_clash, study_grid

PLAN = ["--preset", "tiny", "--dry-run"]


def statuses(capsys, *argv: str) -> dict[str, str]:
    capsys.readouterr()
    reproduce.main([*PLAN, *argv])
    lines = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("run ")]
    return dict(line.removeprefix("run ").split(": ", 1) for line in lines)


def finished_run(folder, **identity) -> None:
    """A run folder as a sweep leaves it, as far as its identity goes."""
    folder.mkdir(parents=True)
    settings = {"loss_type": "sigmoid", "divergence": "reverse_kl", "beta": 1.0, "alpha": None, "seed": 0,
                **identity}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps({"config_hash": "x", "inputs": {"settings": settings}}))


def test_a_divergence_of_one_s_own_named_like_a_built_in_one_never_retrains_the_study_s_runs(
    tmp_path, monkeypatch, error_line
):
    (tmp_path / "fdpo_named_divs.py").write_text(
        "from train_dpo.divergences import Divergence\n\n"
        "D = Divergence(name='reverse_kl', f_prime=lambda logu: logu + 1.0)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    root = tmp_path / "results"
    finished_run(root / "runs" / "gpt_imdb_sigmoid_beta1")
    before = sorted(path.name for path in root.rglob("*"))
    for dry in ([], ["--dry-run"]):
        line = error_line(reproduce.cli, ["--preset", "tiny", "--results_dir", str(root), "--divergences",
                                          "fdpo_named_divs:D", "--only", "D", *dry])  # fmt: skip
        assert (
            "gpt_imdb_sigmoid_beta1 holds another run (divergence reverse_kl (this plan: fdpo_named_divs:D))"
            in line
        )
    assert sorted(path.name for path in root.rglob("*")) == before


@pytest.mark.parametrize(
    ("held", "clash"),
    [({}, None), ({"beta": 1}, None), ({"beta": 0.1}, "beta 0.1"), ({"seed": 1}, "seed 1"),
     ({"loss_type": "hinge"}, "loss_type hinge"), ({"divergence": "jsd"}, "divergence jsd")],
)  # fmt: skip
def test_a_folder_is_refused_when_its_recorded_identity_differs(tmp_path, held, clash):
    folder = tmp_path / "run"
    finished_run(folder, **held)
    wanted = {
        "settings": {
            "loss_type": "sigmoid",
            "divergence": "reverse_kl",
            "beta": 1.0,
            "alpha": None,
            "seed": 0,
        }
    }
    found = identity_clash(folder, wanted)
    assert (found is None) if clash is None else (clash in found)


def test_adding_seeds_renames_no_finished_run():
    one, two = study_grid(seeds=1), study_grid(seeds=2)
    names = {spec.folder_name("study") for spec in one}
    assert names <= {spec.folder_name("study") for spec in two}  # seed 0 keeps its folder
    assert {spec.folder_name("study") for spec in two} - names == {f"{name}_seed1" for name in names}
    assert RunSpec("sigmoid", "jsd", 1.0).folder_name("frontier") == "gpt_imdb_jsd_beta1_seed0"


def test_more_seeds_for_another_family_rename_nothing(capsys, tmp_path):
    root = str(tmp_path / "r")
    alone = statuses(capsys, "--results_dir", root, "--only", "sigmoid")
    beside = statuses(capsys, "--results_dir", root, "--only", "sigmoid,jsd", "--family_seeds", "jsd=3")
    assert set(alone) <= set(beside)
    assert {name for name in beside if "jsd" in name} >= {"gpt_imdb_jsd_beta1", "gpt_imdb_jsd_beta1_seed2"}


def test_the_dry_run_names_no_stack_the_run_would_not_use(capsys, tmp_path):
    found = statuses(capsys, "--results_dir", str(tmp_path / "r"), "--only", "jsd")
    assert set(found.values()) == {"train in a new stack (named once the dataset is built)"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--family_seeds", "jsd=5,jsd=1"], "--family_seeds: jsd is given twice"),
        (["--only", ","], "--only ',': names no run family or run"),
        (["--only", ""], "--only '': names no run family or run"),
        (
            ["--train_args", "--max_steps 2", "--train_args", "--save_steps 1"],
            "argument --train_args: given twice",
        ),
        (["--seeds", "2", "--seeds", "3"], "argument --seeds: given twice"),
        (["--train_args", "--beta=2"], "--train_args: --beta is set by each run of the grid"),
        (
            ["--train_args", "--learning-rate 2"],
            "--train_args: --learning-rate is set by each run of the grid",
        ),
        (["--dataset_args", "--out_dir x"], "--dataset_args: --out_dir is set by each run of the grid"),
        (["--evaluate_args", "--reward_model x"], "--evaluate_args: --reward_model is set by each run"),
    ],
)
def test_flags_that_would_be_lost_or_overridden_are_refused(argv, message, error_line, tmp_path):
    line = error_line(reproduce.cli, [*PLAN, "--results_dir", str(tmp_path / "r"), *argv])
    assert message in line, line


@pytest.mark.parametrize("stage", ["train", "rloo"])
@pytest.mark.parametrize("key", ["beta", "learning_rate", "seed", "divergence"])
def test_a_grid_owned_setting_in_a_stage_s_config_file_is_refused(stage, key, error_line, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({key: 1}))
    argv = [
        *PLAN,
        "--grid",
        "frontier",
        "--results_dir",
        str(tmp_path / "r"),
        f"--{stage}_args",
        f"--config {path}",
    ]
    if stage == "rloo" and key == "learning_rate":  # an online-RL run's rate is its own recipe's
        reproduce.main(argv)
        return
    assert f"--{stage}_args --config {path}: {key} is set by each run of the grid" in error_line(
        reproduce.cli, argv
    )


def test_a_stage_s_config_file_outranks_the_grid_recipe(tmp_path):
    """flag > --config > recipe: the recipe's value is not passed as a flag where the config sets it."""
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump({"num_prompts": 7}))
    args = reproduce.parse_args(["--preset", "tiny", "--dataset_args", f"--config {path}"])
    flags = reproduce.read_grid_recipe("tiny", args)["dataset"]
    assert "--num_prompts" not in flags and "--num_eval_prompts" in flags
    from dataset.main import parse_args

    assert parse_args([*flags, *args.dataset_args]).num_prompts == 7
    args = reproduce.parse_args(["--preset", "tiny", "--dataset_args", f"--config {path} --num_prompts 9"])
    assert (
        parse_args([*reproduce.read_grid_recipe("tiny", args)["dataset"], *args.dataset_args]).num_prompts
        == 9
    )


def test_a_stage_s_flag_written_with_an_equals_sign_is_taken(tmp_path):
    args = reproduce.parse_args(["--preset", "tiny", "--train_args", "--save_steps=10"])
    assert args.train_args == ["--save_steps=10"]


def test_a_results_dir_that_is_a_file_is_refused_in_the_dry_run_too(tmp_path, error_line):
    (tmp_path / "file").write_text("")
    for dry in ([], ["--dry-run"]):
        line = error_line(reproduce.cli, ["--preset", "tiny", "--results_dir", str(tmp_path / "file"), *dry])
        assert line == f"error: --results_dir {tmp_path / 'file'}: not a directory"


def test_a_second_builder_of_the_base_policy_waits_for_the_first(tmp_path):
    folder = tmp_path / ".tiny.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, '.');"
                               "from common.lock import output_lock\n"
                               f"with output_lock({str(folder)!r}):\n    print('held', flush=True); time.sleep(2)"],
                              stdout=subprocess.PIPE, text=True, cwd=reproduce.config.REPO_ROOT)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    started = time.monotonic()
    with output_lock(folder, wait=True):  # refused before: "another process (pid ...) is writing here"
        waited = time.monotonic() - started
    assert waited > 1.0  # it was let in only once the first had held the lock its 2 s
    holder.wait()


def test_a_waiter_let_in_before_its_holder_removed_the_lock_folder_leaves_none(tmp_path):
    """The race a second sweep meets: the holder lets go of the lock, and the waiter gets in before the
    holder removes the folder it made (here the holder pauses 1 s there). The waiter removes it instead."""
    folder = tmp_path / ".base.lock"
    code = ("import os, sys, time\nfrom pathlib import Path\nfrom common.lock import output_lock\n"
            "remove = Path.rmdir\nPath.rmdir = lambda self: (time.sleep(1), remove(self))\n"
            "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(1)")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True,
                              cwd=reproduce.config.REPO_ROOT)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with output_lock(folder, wait=True):
        assert (folder / ".lock").is_file()
        time.sleep(2)  # still holding when the holder tries to remove the folder: it cannot, not empty
    holder.wait()
    assert not folder.exists()
