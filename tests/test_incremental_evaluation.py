"""evaluate.py keeps each model's scores by what they were computed from: adding a model scores only it.

The counts come from wrapping `evaluate_table`, the one function that scores a model; the oracle for the
tables is a from-scratch evaluation of the same CSVs into a fresh folder, compared byte for byte.
"""

import json
import os
import shutil
import signal

import pandas as pd
import pytest
from safetensors.torch import load_file, save_file

from train_dpo import evaluate
from train_dpo.evaluate import EVAL_MANIFEST, Evaluated, ScoreCache, cache_beside
from train_dpo.evaluate import cli as evaluate_cli
from train_dpo.generate import cli as generate_cli

PROMPTS = ["This film was", "I watched it twice and", "The acting"]


@pytest.fixture(scope="module")
def sampled(tmp_path_factory, tiny_run_dir, tiny_model_dir):
    """Generations of the SFT model (the runs' reference) and of one run, sampled once."""
    root = tmp_path_factory.mktemp("sampled")
    prompts = root / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS))
    generate_cli(["--models", str(tiny_run_dir), str(tiny_model_dir), "--prompts", str(prompts), "--samples", "2",
                  "--max_new_tokens", "8", "--top_k", "50", "--out_dir", str(root / "generations")])  # fmt: skip
    return root / "generations"


def add_run(folder, sampled, tiny_run_dir, name: str):
    """A copy of the tiny run under `name` and its generations in `folder` (the run's, renamed)."""
    run = folder.parent / "runs" / name
    shutil.copytree(tiny_run_dir, run)
    csv = sampled / f"{tiny_run_dir.name}.csv"
    shutil.copy(csv, folder / f"{name}.csv")
    meta = json.loads(csv.with_suffix(".json").read_text())
    (folder / f"{name}.json").write_text(json.dumps({**meta, "model": str(run)}))
    return run


@pytest.fixture
def grid(tmp_path, sampled, tiny_run_dir, tiny_model_dir):
    """A generations folder of the SFT model and two runs."""
    folder = tmp_path / "generations"
    folder.mkdir()
    for suffix in (".csv", ".json"):
        shutil.copy(sampled / f"{tiny_model_dir.name}{suffix}", folder)
    for name in ("run_a", "run_b"):
        add_run(folder, sampled, tiny_run_dir, name)
    return folder


@pytest.fixture
def scored(monkeypatch):
    """The names of the models `evaluate_table` scored, call by call."""
    names = []
    real = evaluate.evaluate_table

    def counting(table, *args, **kwargs):
        names.append(table.name)
        return real(table, *args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_table", counting)
    return names


FULL = ["--metrics", "reward", "length", "kl", "preference", "--max_test_pairs", "4"]


def run_evaluation(folder, out, tokenizer, *flags) -> None:
    flags = list(flags or FULL)
    reward = [] if "--reward_model" in flags else ["--reward_model", "vader"]
    evaluate_cli(["--generations", str(folder), *reward, "--tokenizer", str(tokenizer), "--out_dir", str(out),
                  *flags])  # fmt: skip


def tables(out) -> dict[str, bytes]:
    """Every table of an out_dir (the manifest aside: it records which models came from the cache)."""
    return {path.name: path.read_bytes() for path in sorted(out.iterdir()) if path.name != EVAL_MANIFEST}


def test_an_added_model_is_the_only_one_scored_and_the_tables_equal_a_fresh_evaluation(
    grid, sampled, tiny_run_dir, tiny_model_dir, tmp_path, scored
):
    out = tmp_path / "eval"
    run_evaluation(grid, out, tiny_model_dir)
    assert sorted(scored) == sorted([tiny_model_dir.name, "run_a", "run_b"])
    scored.clear()
    run_evaluation(grid, out, tiny_model_dir)  # nothing changed: nothing scored
    assert scored == []

    add_run(grid, sampled, tiny_run_dir, "run_c")  # a seed added to the grid
    run_evaluation(grid, out, tiny_model_dir)
    assert scored == ["run_c"]
    manifest = json.loads((out / EVAL_MANIFEST).read_text())
    assert manifest["scored"] == ["run_c"] and len(manifest["cached"]) == 3

    scored.clear()
    run_evaluation(grid, tmp_path / "fresh", tiny_model_dir)
    assert len(scored) == 4
    incremental, fresh = tables(out), tables(tmp_path / "fresh")
    assert {"results.csv", "samples.csv", "reference_samples.csv", "pairs.csv", "reliability.csv",
            "results_by_config.csv", "summary.md"} <= set(fresh)  # fmt: skip
    assert incremental == fresh
    # The cache holds one entry per model of the folder, beside out_dir, not in it.
    assert len(list(cache_beside(out).glob("*.json"))) == 4 and not (out / ".cache").exists()


@pytest.mark.parametrize(
    "flags",
    [["--max_test_pairs", "2"], ["--reward_model", "textblob"], ["--metrics", "reward", "kl", "preference"]],
    ids=["max_test_pairs", "reward_model", "metrics"],
)
def test_a_changed_setting_scores_every_model_again(grid, tiny_model_dir, tmp_path, scored, flags):
    base = ["--metrics", "reward", "kl", "preference", "--max_test_pairs", "4"]
    if flags[0] == "--metrics":
        base = ["--metrics", "reward", "--max_test_pairs", "4"]
    out = tmp_path / "eval"
    run_evaluation(grid, out, tiny_model_dir, *base)
    scored.clear()
    changed = [*base, *flags]
    run_evaluation(grid, out, tiny_model_dir, *changed)
    assert sorted(scored) == sorted([tiny_model_dir.name, "run_a", "run_b"])
    assert len(list(cache_beside(out).glob("*.json"))) == 3  # the earlier setting's entries are gone


def test_a_changed_csv_or_retrained_model_scores_that_model_only(grid, tiny_model_dir, tmp_path, scored):
    out = tmp_path / "eval"
    flags = ["--metrics", "reward", "kl"]
    run_evaluation(grid, out, tiny_model_dir, *flags)

    csv = grid / "run_a.csv"  # one answer edited
    frame = pd.read_csv(csv, keep_default_na=False)
    frame.loc[0, "answers"] = frame.loc[0, "answers"] + " Wonderful!"
    frame.to_csv(csv, index=False)
    scored.clear()
    run_evaluation(grid, out, tiny_model_dir, *flags)
    assert scored == ["run_a"]

    run = grid.parent / "runs" / "run_b"  # retrained in its folder: other weights, same name
    weights = run / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({name: tensor * 1.5 for name, tensor in tensors.items()}, weights)
    scored.clear()
    run_evaluation(grid, out, tiny_model_dir, *flags)
    assert scored == ["run_b"]
    scored.clear()
    run_evaluation(grid, out, tiny_model_dir, *flags)
    assert scored == []

    # New reference generations: the SFT model, and the runs compared with them (kl_forward), scored again
    sft = grid / f"{tiny_model_dir.name}.csv"
    sft.write_bytes(sft.read_bytes())  # written again, the same bytes: nothing to score
    run_evaluation(grid, out, tiny_model_dir, *flags)
    assert scored == []
    frame = pd.read_csv(sft, keep_default_na=False)
    frame.loc[0, "answers"] = frame.loc[0, "answers"] + " Dull."
    frame.to_csv(sft, index=False)
    run_evaluation(grid, out, tiny_model_dir, *flags)
    assert sorted(scored) == sorted([tiny_model_dir.name, "run_a", "run_b"])


CORRUPTIONS = {
    "cut short": lambda data: data[: len(data) // 2],
    "emptied": lambda data: b"",
    "a digit changed": lambda data: data.replace(b"0.", b"1.", 1),
    "not text": lambda data: b"\xff\xfe" + data,
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_a_damaged_cache_entry_is_scored_again_not_trusted(
    corruption, grid, tiny_model_dir, tmp_path, scored, caplog
):
    out = tmp_path / "eval"
    flags = ["--metrics", "reward", "length"]
    run_evaluation(grid, out, tiny_model_dir, *flags)
    before = tables(out)
    (entry,) = cache_beside(out).glob("run_a-*.json")
    entry.write_bytes(CORRUPTIONS[corruption](entry.read_bytes()))
    scored.clear()
    with caplog.at_level("WARNING", logger="evaluate"):
        run_evaluation(grid, out, tiny_model_dir, *flags)
    assert scored == ["run_a"]
    assert f"{entry}: cached scores ignored" in caplog.text
    assert tables(out) == before
    scored.clear()
    run_evaluation(grid, out, tiny_model_dir, *flags)  # the entry was written again, whole
    assert scored == []


def test_a_kill_while_an_entry_is_written_leaves_none_to_trust(tmp_path, monkeypatch):
    cache = ScoreCache(tmp_path / ".eval.cache")
    result = Evaluated({"model": "run", "n": 2, "reward": 0.25},
                       pd.DataFrame({"model": "run", "prompt": ["a", "b"], "reward": [0.5, 0.0]}))  # fmt: skip

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(os, "fsync", killed)  # the entry's bytes written, not yet renamed into place
    child = os.fork()
    if child == 0:  # pragma: no cover (the child dies)
        try:
            cache.store("run", "k" * 64, result)
        finally:
            os._exit(0)
    _, status = os.waitpid(child, 0)
    monkeypatch.undo()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert cache.load("run", "k" * 64) is None  # only a temporary file: no entry
    cache.store("run", "k" * 64, result)
    cached = ScoreCache(cache.folder).load("run", "k" * 64)
    assert cached.row == result.row and cached.samples.equals(result.samples)
    cache.keep_only_used()
    assert [path.name for path in cache.folder.iterdir()] == [cache.path("run", "k" * 64).name]


def test_a_failed_evaluation_leaves_no_cache_behind(grid, tiny_model_dir, tmp_path, error_line):
    """A bad input met while scoring (a damaged adapter of the last run): nothing of it stays."""
    (grid.parent / "runs" / "run_b" / "adapter_model.safetensors").write_bytes(b"not weights")
    out = tmp_path / "eval"
    line = error_line(evaluate_cli, ["--generations", str(grid), "--metrics", "reward", "kl", "--reward_model",
                                     "vader", "--out_dir", str(out)])  # fmt: skip
    assert "adapter_model.safetensors" in line
    assert not out.exists() and not cache_beside(out).exists()
