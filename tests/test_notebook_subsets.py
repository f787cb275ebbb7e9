"""results.ipynb draws whatever a sweep evaluated, and says what it leaves out and why: a frontier grid
of one family (`reproduce.py --grid frontier --only <family>`), RLOO alone, and every `--metrics` subset."""

import contextlib
import io
import json
import os
from pathlib import Path

import matplotlib
import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient

from analysis.frontier import family
from train_dpo.evaluate import METRICS
from train_dpo.losses import ONLINE_LOSS
from train_dpo.sweep import FRONTIER_FAMILIES

REPO = Path(__file__).resolve().parents[1]
FAMILIES = {family(*spec): spec for spec in (*FRONTIER_FAMILIES, (ONLINE_LOSS, "reverse_kl", None))}
# The columns each metric adds: results.csv's (each with _lo, _hi, _nonfinite where it is a mean), samples.csv's.
ROW_METRICS = {"reward": ["reward"], "predictive_entropy": ["predictive_entropy"],
               "unigram_entropy": ["unigram_entropy_policy_tokens"], "distinct": ["distinct_1", "distinct_2"],
               "length": ["length"], "kl": ["kl"], "preference": ["pref_accuracy", "ece"]}  # fmt: skip
SAMPLE_METRICS = {"reward": ["reward"], "predictive_entropy": ["predictive_entropy"], "length": ["length"],
                  "kl": ["logratio"]}  # fmt: skip


def sweep_folder(
    root: Path, families: list[str], metrics: list[str], seeds: int = 2, apart: float = 0.0
) -> Path:
    """evaluate.py's tables of a frontier sweep of `families` (2 betas, `seeds` seeds) and the SFT model,
    holding only the columns that `--metrics metrics` writes. `apart`: how far each seed's KL lies from the
    last one's (beyond 20, no KL is reached by every seed of a family)."""
    rng = np.random.default_rng(0)
    rows = [{"model": "sft", "loss": None, "divergence": None, "alpha": None, "beta": None, "seed": None, "kl": 0.0,
             "reward": 0.1, "predictive_entropy": 4.0, "length": 30.0, "logratio": 0.0}]  # fmt: skip
    samples, pairs = [], []
    for name in families:
        loss, divergence, alpha = FAMILIES[name]
        for beta in (1.0, 0.1):
            for seed in range(seeds):
                model = f"{name}_beta{beta:g}_seed{seed}"
                kl = 2 / beta + rng.normal(0, 0.1) + apart * seed
                rows.append({"model": model, "loss": loss, "divergence": divergence, "alpha": alpha, "beta": beta,
                             "seed": seed, "kl": kl, "reward": 0.02 * kl, "predictive_entropy": 4 - 0.1 * kl,
                             "length": 30.0, "logratio": kl})  # fmt: skip
                samples += [{"model": model, "prompt": f"prompt {p}", "answer": f"prompt {p} and more",
                             "reward": 0.02 * kl + rng.normal(0, 0.05), "logratio": kl + rng.normal(0, 1),
                             "predictive_entropy": 4 - 0.1 * kl, "length": 30.0} for p in range(6)]  # fmt: skip
                if loss != "hinge":
                    pairs += [{"model": model, "prompt": f"test {p % 5}", "prob_chosen": 0.8 if p % 5 else 0.2}
                              for p in range(10)]  # fmt: skip
    samples += [{"model": "sft", "prompt": f"prompt {p}", "answer": f"prompt {p} as ever", "reward": 0.1,
                 "logratio": 0.0, "predictive_entropy": 4.0, "length": 30.0} for p in range(6)]  # fmt: skip
    table = pd.DataFrame(rows)
    keep_rows = [c for m in metrics for c in ROW_METRICS[m] if c in table]
    table = table[["model", "loss", "divergence", "alpha", "beta", "seed", *keep_rows]]
    for column in keep_rows:
        table[f"{column}_lo"], table[f"{column}_hi"] = table[column] - 0.01, table[column] + 0.01
    if "preference" in metrics:
        probabilistic = table["loss"].isin(["sigmoid", ONLINE_LOSS])
        table["pref_accuracy"] = np.where(table["loss"].notna(), 0.7, np.nan)
        table["ece"] = np.where(probabilistic, 0.1, np.nan)
    samples = pd.DataFrame(samples)
    keep_samples = [c for m in metrics for c in SAMPLE_METRICS.get(m, [])]
    (root / "eval").mkdir(parents=True)
    table.to_csv(root / "eval" / "results.csv", index=False)
    samples[["model", "prompt", "answer", *keep_samples]].to_csv(root / "eval" / "samples.csv", index=False)
    if "preference" in metrics and pairs:
        pd.DataFrame(pairs).to_csv(root / "eval" / "pairs.csv", index=False)
    return root


def exec_notebook(study: Path, frontier: Path) -> str:
    """Every code cell of results.ipynb run in order in this process (no kernel: fast); what it printed
    and displayed."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = io.StringIO()
    namespace = {}
    env = {"FDPO_RESULTS_DIR": str(study), "FDPO_FRONTIER_DIR": str(frontier)}
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    cwd = os.getcwd()
    try:
        os.chdir(REPO)
        import IPython.display

        original = IPython.display.display
        IPython.display.display = lambda *objects, **_: print(*objects, file=shown)
        with contextlib.redirect_stdout(shown):
            for cell in nbformat.read(REPO / "results.ipynb", as_version=4).cells:
                if cell.cell_type == "code":
                    exec(compile(cell.source, "results.ipynb", "exec"), namespace)
                    plt.close("all")
    finally:
        IPython.display.display = original
        os.chdir(cwd)
        for name, value in previous.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
    return shown.getvalue()


def run_notebook(study: Path, frontier: Path) -> str:
    """results.ipynb executed in a kernel, as reproduce.py runs it; its outputs as text."""
    notebook = nbformat.read(REPO / "results.ipynb", as_version=4)
    env = {"FDPO_RESULTS_DIR": str(study), "FDPO_FRONTIER_DIR": str(frontier)}
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO)}}).execute()  # fmt: skip
    finally:
        for name, value in previous.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
    return json.dumps([cell.get("outputs", []) for cell in notebook.cells])


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_frontier_grid_of_one_family(name, tmp_path):
    frontier = sweep_folder(tmp_path / "frontier", [name], list(METRICS))
    text = exec_notebook(tmp_path / "no-study", frontier)
    assert "no study-grid results" in text
    if name != "reverse_kl":
        assert (
            "no table of reward at matched KL, against reverse KL: no reverse_kl run to compare with" in text
        )
    if name == "reverse_kl (hinge)":
        assert "no reliability panel: no run with a preference probability" in text
    else:
        assert (frontier / "figures" / "reliability.png").stat().st_size > 10_000


def test_rloo_alone_with_seeds_that_share_no_kl(tmp_path):
    """A family whose seeds reach no common KL has a matched table with no row: said, not a KeyError."""
    frontier = sweep_folder(tmp_path / "frontier", ["RLOO"], list(METRICS), seeds=3, apart=40.0)
    text = exec_notebook(tmp_path / "no-study", frontier)
    assert "not measured (no online_reward table)" not in text  # the table exists: it is empty


@pytest.mark.parametrize("metric", METRICS)
def test_a_metric_subset(metric, tmp_path):
    frontier = sweep_folder(
        tmp_path / "frontier", ["reverse_kl", "jsd", "reverse_kl (hinge)", "RLOO"], [metric]
    )
    text = exec_notebook(tmp_path / "no-study", frontier)
    assert "no study-grid results" in text
    if metric != "kl":
        assert "no table of reward at matched KL, against reverse KL: kl" in text and "not evaluated" in text
    if metric != "preference":
        assert "no reliability panel: no run with a preference probability" in text


@pytest.mark.parametrize(
    ("families", "metrics"), [(["RLOO"], list(METRICS)), (["reverse_kl", "jsd"], ["reward"])]
)
def test_the_notebook_runs_in_a_kernel_on_a_subset(families, metrics, tmp_path):
    """As reproduce.py runs it (`--grid frontier --only rloo`; `--evaluate_args "--metrics reward"`)."""
    frontier = sweep_folder(tmp_path / "frontier", families, metrics)
    text = run_notebook(tmp_path / "no-study", frontier)
    assert "no study-grid results" in text and "Traceback" not in text
    assert ("no reliability panel" in text) == (metrics == ["reward"])
