"""Every cache key hashes the content of what its stage read, never where it lay (docs/integrity.md).

One small sweep is trained (a built-in divergence and one of the user's, whose module imports a helper that
imports another, the second holding a custom backward). Then each input a run depends on is changed, or
touched without a change, one at a time: each data file, the grid recipe, each channel of a run's settings
(a flag, a `--config` file), the user's function, its module, the helper and the helper's helper, and the
folders' places. A change must retrain exactly the runs that read it and a no-op none, in the dry run; the
real run then does what the dry run said.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import config
import reproduce
from common import cli as common_cli

REPO = Path(__file__).resolve().parents[1]
USER_MODULES = ("fdpo_mine", "fdpo_helper_a", "fdpo_helper_b")
MODULES = {
    "fdpo_mine.py": "import fdpo_helper_a\n\n\ndef mine(logu):\n    return fdpo_helper_a.shifted(logu)\n",
    "fdpo_helper_a.py": "import fdpo_helper_b\n\n\ndef shifted(logu):\n"
    "    return fdpo_helper_b.Passthrough.apply(logu) + 1.0\n",
    # Values stay the same whatever SIGN is: only the gradient sees it.
    "fdpo_helper_b.py": "import torch\n\nSIGN = 1.0\n\n\nclass Passthrough(torch.autograd.Function):\n"
    "    @staticmethod\n    def forward(ctx, x):\n        return x.clone()\n\n"
    "    @staticmethod\n    def backward(ctx, grad):\n        return SIGN * grad\n",
}
USER_RUNS = {"gpt_imdb_mine_beta1", "gpt_imdb_mine_beta1e-1"}
ALL_RUNS = USER_RUNS | {"gpt_imdb_jsd_beta1"}
SWEEP = ["--preset", "tiny", "--divergences", "fdpo_mine:mine", "--only", "mine,gpt_imdb_jsd_beta1",
         "--sft_epochs", "0.02",
         "--dataset_args", "--num_prompts 24 --num_eval_prompts 6 --max_new_tokens 12",
         "--generate_args", "--samples 2 --max_new_tokens 8", "--evaluate_args", "--max_test_pairs 8"]  # fmt: skip
TRAIN = "--max_steps 4 --save_steps 2 --max_length 64 --max_eval_pairs 8"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_dir):
    """A finished sweep, its data folder, user modules and models folder, all of the test's own."""
    home = tmp_path_factory.mktemp("cache_keys")
    shutil.copytree(data_dir, home / "imdb")
    (home / "mine").mkdir()
    for name, source in MODULES.items():
        (home / "mine" / name).write_text(source)
    shutil.copytree(REPO / "recipes", home / "recipes")
    run_sweep(home, home / "results")
    return home


def environment(home: Path) -> dict:
    paths = [str(home / "mine"), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "FDPO_MODELS_DIR": str(home / "models"), "FDPO_DATA_DIR": str(home / "imdb"),
            "PYTHONPATH": os.pathsep.join(paths)}  # fmt: skip


def run_sweep(home: Path, root: Path, *extra: str) -> None:
    command = [
        sys.executable,
        "reproduce.py",
        *SWEEP,
        "--results_dir",
        str(root),
        "--train_args",
        TRAIN,
        *extra,
    ]
    result = subprocess.run(
        command, cwd=REPO, env=environment(home), capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]


def manifests(root: Path) -> dict[str, int]:
    return {path.parent.name: path.stat().st_mtime_ns for path in (root / "runs").glob("*/manifest.json")}


@pytest.fixture
def plan(sweep, monkeypatch, capsys):
    """`plan(root, data, *extra)`: the dry run in this process, as {run: status} and the base policy's line."""
    monkeypatch.syspath_prepend(str(sweep / "mine"))
    monkeypatch.setattr(config, "MODELS_DIR", sweep / "models")
    monkeypatch.setattr(common_cli, "RECIPES_DIR", sweep / "recipes")

    def run(root: Path, data: Path | None = None, *extra: str, train: str = TRAIN) -> dict[str, str]:
        monkeypatch.setattr(config, "DATA_DIR", data or sweep / "imdb")
        for name in USER_MODULES:  # each dry run imports the user's code afresh, as each sweep does
            sys.modules.pop(name, None)
        capsys.readouterr()
        reproduce.main([*SWEEP, "--results_dir", str(root), "--train_args", train, *extra, "--dry-run"])
        lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
        found = dict(line.removeprefix("run ").split(": ", 1) for line in lines if line.startswith("run "))
        found["base policy"] = next(
            line.split(": ", 1)[1].split(" ")[0] for line in lines if "base policy" in line
        )
        return found

    return run


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))


def retrained(statuses: dict[str, str]) -> set[str]:
    return {run for run, status in statuses.items() if run != "base policy" and status != "cached"}


def edited_data(home: Path, name: str) -> Path:
    """A copy of the data folder with one record of `name` changed."""
    copy = home / f"imdb-{name}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(home / "imdb", copy)
    records = json.loads((copy / name).read_text())
    if name == config.PROMPTS_FILE:
        records[0] += " changed"
    else:
        records[0]["answers"][0] += " changed"
    (copy / name).write_text(json.dumps(records))
    return copy


def moved_data(home: Path) -> Path:
    copy = home / "imdb-moved"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(home / "imdb", copy)
    return copy


@pytest.mark.slow
def test_every_input_retrains_what_reads_it_and_a_no_op_retrains_nothing(sweep, plan, tmp_path):
    root = sweep / "results"
    assert retrained(plan(root)) == set() and plan(root)["base policy"] == "cached"

    # Data files: the base policy is built from their text; another folder with the same bytes is the same.
    for name in (config.PROMPTS_FILE, config.SCORED_FILE):
        statuses = plan(root, edited_data(sweep, name))
        assert statuses["base policy"] == "train" and retrained(statuses) == ALL_RUNS, (name, statuses)
    statuses = plan(root, moved_data(sweep))
    assert statuses["base policy"] == "cached" and retrained(statuses) == set(), statuses

    # The results folder, moved whole: nothing it holds is keyed by its path.
    moved = sweep / "results-moved"
    shutil.copytree(root, moved, symlinks=True)
    assert retrained(plan(moved)) == set()
    shutil.rmtree(moved)

    # A run's settings, through each channel, changed and unchanged.
    yaml_file = tmp_path / "train.yaml"
    for value, expected in ((0.1, ALL_RUNS), (0.0, set())):
        assert retrained(plan(root, None, train=f"{TRAIN} --weight_decay {value}")) == expected, value
        yaml_file.write_text(yaml.safe_dump({"weight_decay": value}))
        assert retrained(plan(root, None, train=f"{TRAIN} --config {yaml_file}")) == expected, value
    grid_recipe = sweep / "recipes" / "tiny" / "grid.yaml"
    original = grid_recipe.read_text()
    edit(grid_recipe, "  logging_steps: 10\n", "  logging_steps: 10\n  weight_decay: 0.1\n")
    assert retrained(plan(root)) == ALL_RUNS
    grid_recipe.write_text("# a comment and keys in another order change nothing\n" + original.replace(
        "  num_train_epochs: 1\n  save_steps: 40\n", "  save_steps: 40\n  num_train_epochs: 1\n"))  # fmt: skip
    assert retrained(plan(root)) == set()
    grid_recipe.write_text(original)

    # The user's code: its function, another divergence beside it, a helper, the helper's helper.
    mine = sweep / "mine"
    cases = [("fdpo_mine.py", "\n", "\n\n\ndef other(logu):\n    return 2 * logu\n", set()),
             ("fdpo_mine.py", "fdpo_helper_a.shifted(logu)", "fdpo_helper_a.shifted(logu) + 0.0", USER_RUNS),
             ("fdpo_helper_a.py", "+ 1.0", "+ 2.0", USER_RUNS),
             ("fdpo_helper_b.py", "SIGN = 1.0", "SIGN = -1.0", USER_RUNS)]  # fmt: skip
    for name, old, new, expected in cases:
        source = (mine / name).read_text()
        (mine / name).write_text(source + new if old == "\n" else source.replace(old, new))
        assert retrained(plan(root)) == expected, (name, new)
        (mine / name).write_text(source)
    assert retrained(plan(root)) == set()


@pytest.mark.slow
def test_the_run_does_what_its_dry_run_said(sweep, plan):
    """The helper's helper flips its gradient's sign: the dry run says the user's runs retrain, and the
    sweep retrains those and nothing else; moved elsewhere, the finished sweep retrains nothing."""
    root = sweep / "results"
    helper = sweep / "mine" / "fdpo_helper_b.py"
    source = helper.read_text()
    helper.write_text(source.replace("SIGN = 1.0", "SIGN = -1.0"))
    moved = sweep / "results-moved-run"
    try:
        predicted = retrained(plan(root))
        before = manifests(root)
        run_sweep(sweep, root)
        after = manifests(root)
        assert {name for name in after if after[name] != before.get(name)} == predicted == USER_RUNS
        shutil.move(root, moved)
        before = manifests(moved)
        assert retrained(plan(moved)) == set()
        run_sweep(sweep, moved)
        assert manifests(moved) == before
    finally:
        helper.write_text(source)
