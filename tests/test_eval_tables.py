"""evaluate.py's out_dir is written whole under a lock, and a configuration counts each seed once."""

import json
import os
import signal

import numpy as np
import pandas as pd
import pytest
from conftest import hold_lock
from scipy import stats

from analysis import frontier, report
from analysis.intervals import between_seeds
from common.lock import lock_beside
from train_dpo import evaluate
from train_dpo.evaluate import EVAL_MANIFEST, Evaluated, write_tables
from train_dpo.evaluate import cli as evaluate_cli
from train_dpo.generate import cli as generate_cli

ANSWERS = ["Good and great fun.", "Bad, dull and far too long.", "A film.", "Wonderful!"]


def study_csv(folder):
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"prompt": [a.split()[0] for a in ANSWERS], "answers": ANSWERS}).to_csv(
        folder / "study.csv", index=False
    )
    return folder


def evaluated(name: str, seed: int | None, reward: float, pairs: bool) -> Evaluated:
    """One model's results as evaluate_table returns them; `pairs`: with held-out pairs and their bins."""
    row = {"model": name, "n": 2, "loss": "sigmoid" if seed is not None else None, "divergence": "jsd",
           "alpha": None, "beta": 0.1, "learning_rate": 1e-4, "seed": seed, "reward": reward,
           "reward_lo": reward, "reward_hi": reward, "not_prefixed": 0}  # fmt: skip
    samples = pd.DataFrame({"model": name, "prompt": ["a", "b"], "answer": ["a x", "b y"], "reward": reward})
    if not pairs:
        return Evaluated(row, samples)
    table = pd.DataFrame({"model": name, "prompt": ["t"], "prob_chosen": [0.7]})
    reliability = pd.DataFrame({"model": name, "bin": [0], "count": [1]})
    return Evaluated(row, samples, reference_samples=table, pairs=table, reliability=reliability)


def listing(folder):
    return sorted(path.name for path in folder.iterdir())


def test_a_narrower_evaluation_leaves_no_table_of_the_earlier_one(tmp_path):
    out = tmp_path / "eval"
    write_tables([evaluated("run", 0, 0.5, pairs=True)], out)
    assert {"pairs.csv", "reliability.csv", "reference_samples.csv"} <= set(listing(out))
    written = write_tables([evaluated("run", 0, 0.7, pairs=False)], out)
    assert listing(out) == sorted([*written, EVAL_MANIFEST])
    assert listing(out) == [
        EVAL_MANIFEST,
        "results.csv",
        "results_by_config.csv",
        "samples.csv",
        "summary.md",
    ]
    assert json.loads((out / EVAL_MANIFEST).read_text())["tables"] == written
    assert listing(tmp_path) == ["eval"]  # no scratch folder, no lock folder left beside it


def test_rerun_with_a_metric_subset_over_an_earlier_eval_folder(tmp_path):
    """The red-team case: a folder an earlier version wrote (no manifest) with the preference tables, then
    `--metrics reward`: only this evaluation's tables remain."""
    out = tmp_path / "eval"
    out.mkdir()
    for name in ("results.csv", "samples.csv", "pairs.csv", "reliability.csv", "reference_samples.csv",
                 "summary.md"):  # fmt: skip
        (out / name).write_text("model\nold\n")
    evaluate_cli(["--generations", str(study_csv(tmp_path / "gen")), "--metrics", "reward", "--reward_model", "vader",
                  "--out_dir", str(out)])  # fmt: skip
    assert listing(out) == [EVAL_MANIFEST, "results.csv", "samples.csv", "summary.md"]
    manifest = json.loads((out / EVAL_MANIFEST).read_text())
    assert manifest["metrics"] == ["reward"] and manifest["tables"] == [
        "results.csv",
        "samples.csv",
        "summary.md",
    ]
    assert list(pd.read_csv(out / "results.csv")["model"]) == ["study"]


def test_an_out_dir_the_project_did_not_write_is_refused_before_any_work(tmp_path, error_line):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.csv").write_text("kept\n")
    (out / "notes.txt").write_text("kept\n")
    line = error_line(evaluate_cli, ["--generations", str(study_csv(tmp_path / "gen")), "--metrics", "reward",
                                     "--reward_model", "vader", "--out_dir", str(out)])  # fmt: skip
    assert line.startswith(
        f"error: {out}: exists and was not written by this project (it has no {EVAL_MANIFEST})"
    )
    assert listing(out) == ["notes.txt", "results.csv"] and (out / "results.csv").read_text() == "kept\n"
    assert listing(tmp_path) == ["gen", "mine"]


def test_a_second_evaluation_of_one_out_dir_is_refused_naming_the_first(tmp_path, error_line):
    out = tmp_path / "eval"
    holder = hold_lock(lock_beside(out))
    try:
        line = error_line(evaluate_cli, ["--generations", str(study_csv(tmp_path / "gen")), "--metrics", "reward",
                                         "--reward_model", "vader", "--out_dir", str(out)])  # fmt: skip
        assert f"another process (pid {holder.pid}) is writing here" in line
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()


def test_generation_into_a_folder_being_written_is_refused(tmp_path, tiny_model_dir, error_line):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["This film was"]))
    out = tmp_path / "generations"
    holder = hold_lock(out)
    try:
        line = error_line(generate_cli, ["--models", str(tiny_model_dir), "--prompts", str(prompts),
                                         "--out_dir", str(out)])  # fmt: skip
        assert f"another process (pid {holder.pid}) is writing here" in line
        assert listing(out) == [".lock"]
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("at", ["staging", "swap"])
def test_a_kill_mid_write_leaves_the_previous_eval_folder_intact(at, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    write_tables([evaluated("run", 0, 0.5, pairs=True)], out)
    before = {name: (out / name).read_bytes() for name in listing(out)}

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if at == "staging":  # while the tables are written
        monkeypatch.setattr(pd.DataFrame, "to_csv", lambda *args, **kwargs: killed() or "x\n")
    else:  # every table staged, the rename to come
        monkeypatch.setattr(evaluate, "replace_dir", killed)
    child = os.fork()
    if child == 0:  # pragma: no cover (the child dies)
        try:
            write_tables([evaluated("run", 0, 0.9, pairs=False)], out)
        finally:
            os._exit(0)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    monkeypatch.undo()
    assert {name: (out / name).read_bytes() for name in listing(out)} == before
    write_tables(
        [evaluated("run", 0, 0.9, pairs=False)], out
    )  # the next writer clears the dead one's scratch
    assert listing(tmp_path) == ["eval"] and "pairs.csv" not in listing(out)


# --- seeds: a configuration is counted by its distinct seeds


def twice_seed0() -> pd.DataFrame:
    """A 1-seed sweep rerun with --seeds 2: the unseeded run beside its _seed0 name, and seed 1."""
    return pd.DataFrame(
        [{"model": "gpt_imdb_sigmoid_beta1", "loss": "sigmoid", "divergence": "reverse_kl", "alpha": np.nan,
          "beta": 1.0, "learning_rate": 1e-4, "seed": 0, "reward": 0.30, "kl": 2.0},
         {"model": "gpt_imdb_sigmoid_beta1_seed0", "loss": "sigmoid", "divergence": "reverse_kl", "alpha": np.nan,
          "beta": 1.0, "learning_rate": 1e-4, "seed": 0, "reward": 0.30, "kl": 2.0},
         {"model": "gpt_imdb_sigmoid_beta1_seed1", "loss": "sigmoid", "divergence": "reverse_kl", "alpha": np.nan,
          "beta": 1.0, "learning_rate": 1e-4, "seed": 1, "reward": 0.50, "kl": 3.0}]
    )  # fmt: skip


def test_results_by_config_counts_one_seed_once_and_names_both_models(caplog):
    with caplog.at_level("WARNING", logger="metrics"):
        (row,) = between_seeds(twice_seed0(), ["reward"]).to_dict("records")
    assert (
        row["n_seeds"] == 2 and row["models"] == "gpt_imdb_sigmoid_beta1_seed0 gpt_imdb_sigmoid_beta1_seed1"
    )
    lo, hi = stats.t.interval(0.95, 1, loc=0.4, scale=np.std([0.3, 0.5], ddof=1) / np.sqrt(2))  # two seeds
    assert (row["reward_seed_lo"], row["reward_seed_hi"]) == pytest.approx((lo, hi))
    assert "gpt_imdb_sigmoid_beta1 and gpt_imdb_sigmoid_beta1_seed0: one configuration" in caplog.text
    assert "counted once, as gpt_imdb_sigmoid_beta1_seed0" in caplog.text


def test_evaluate_writes_results_by_config_by_distinct_seeds(tmp_path):
    runs = [evaluated(name, seed, reward, pairs=False) for name, seed, reward in
            (("b_seed0", 0, 0.3), ("b", 0, 0.3), ("b_seed1", 1, 0.5))]  # fmt: skip
    write_tables(runs, tmp_path / "eval")
    by_config = pd.read_csv(tmp_path / "eval" / "results_by_config.csv")
    assert list(by_config["n_seeds"]) == [2] and list(by_config["models"]) == ["b_seed0 b_seed1"]


def test_the_report_and_the_frontier_count_one_seed_once():
    table = twice_seed0().assign(family="reverse_kl")
    (point,) = report.curve_points(table, "kl", "reward").to_dict("records")
    assert point["seeds"] == 2 and point["reward"] == pytest.approx(0.4)
    assert list(report.runs_of(table)["model"]) == [
        "gpt_imdb_sigmoid_beta1_seed0",
        "gpt_imdb_sigmoid_beta1_seed1",
    ]
    pairs = pd.DataFrame({"model": list(table["model"]), "prompt": "t", "prob_chosen": 0.8})
    (bin_row,) = report.pooled_reliability(table, pairs, n_bins=1).to_dict("records")
    assert (bin_row["seeds"], bin_row["pairs"]) == (2, 2)
    assert report.closest_configurations(table, 2.5)["kl"].tolist() == [2.5]

    wide = pd.concat([table, table.assign(model=table["model"] + "_b01", beta=0.1, kl=table["kl"] + 4,
                                          reward=table["reward"] + 0.2)], ignore_index=True)  # fmt: skip
    runs = wide[["model", "family", "beta", "seed"]]
    samples = pd.DataFrame({"model": list(wide["model"]) * 2, "prompt": ["p"] * 6 + ["q"] * 6,
                            "kl": list(wide["kl"]) * 2, "reward": list(wide["reward"]) * 2})  # fmt: skip
    once = frontier.matched(samples, runs.drop(index=[0, 3]), targets=[4.0], n_boot=20)
    assert once["reward"].tolist() == pytest.approx([0.475])  # seed 0 at 0.4, seed 1 at 0.55: their mean
    assert frontier.matched(samples, runs, targets=[4.0], n_boot=20).equals(once)
