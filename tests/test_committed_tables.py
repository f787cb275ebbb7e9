"""The tables behind RESULTS.md, committed (`analysis.export`) and rebuilt into every verdict and figure
without training, models or torch (`analysis.rebuild`): the same numbers as from the results folder."""

import csv
import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import special
from synthetic import first_sentences
from test_notebook_subsets import exec_notebook, sweep_folder

from analysis import export, rebuild, report
from train_dpo.evaluate import METRICS

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ["reverse_kl", "jsd", "reverse_kl (hinge)", "RLOO"]
# Prompts a CSV writer must quote: a comma, quotes, and a bare "\r" that plain pandas would split a line on.
ODD_PROMPT, ODD_TEST = 'prompt "0", with a\rbare CR', 'test, "zero"\r'
N_BOOT = 40  # bootstrap replicates: enough to compare two inputs, few enough to be quick


def results_folder(root: Path) -> Path:
    """A frontier grid's eval/ tables as evaluate.py writes them (`sweep_folder`, 3 seeds), with a gold
    reward, the pairs' margins, prompts that need quoting, and this machine's absolute paths in results.csv.
    JSD earns 0.5 more reward than the others at every KL and entropy, so some verdicts are decided."""
    sweep_folder(root, FAMILIES, list(METRICS), seeds=3)
    rng = np.random.default_rng(1)
    samples = pd.read_csv(root / "eval" / "samples.csv")
    samples.loc[samples["model"].str.startswith("jsd"), "reward"] += 0.5
    samples["gold_reward"] = 0.5 * samples["reward"] + rng.normal(0, 0.01, len(samples))
    samples["prompt"] = samples["prompt"].replace("prompt 0", ODD_PROMPT)
    samples.to_csv(root / "eval" / "samples.csv", index=False, quoting=csv.QUOTE_NONNUMERIC)  # as evaluate.py
    pairs = pd.read_csv(root / "eval" / "pairs.csv")
    pairs["prob_chosen"] += rng.uniform(-0.15, 0.15, len(pairs))
    pairs["margin"] = special.logit(pairs["prob_chosen"])
    pairs["chosen_logratio"], pairs["rejected_logratio"] = pairs["margin"], 0.0
    pairs["prompt"] = pairs["prompt"].replace("test 0", ODD_TEST)
    pairs.to_csv(root / "eval" / "pairs.csv", index=False)
    results = pd.read_csv(root / "eval" / "results.csv")
    for column in ("reward", "gold_reward"):
        results[column] = samples.groupby("model")[column].mean().reindex(results["model"]).to_numpy()
    results["source"] = [str(root.resolve() / "runs" / m) if m != "sft" else "/elsewhere/models/sft"
                         for m in results["model"]]  # fmt: skip
    results["reward_model"] = "/home/someone/models/distilbert-imdb:logit"
    results.to_csv(root / "eval" / "results.csv", index=False)
    return root


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """(results folder, its committed tables in docs/data/<grid>)."""
    base = tmp_path_factory.mktemp("grid")
    source = results_folder(base / "results" / "tiny-frontier")
    target = base / "docs" / "data" / "tiny-frontier"
    export.main([str(source), str(target)])
    return source, target


def test_the_committed_tables_hold_what_the_analysis_reads_and_no_completion_text(grid):
    source, target = grid
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "pairs.csv.gz", "results.csv",
                                                        "samples.csv.gz"]  # fmt: skip
    samples, pairs = (
        pd.read_csv(target / "samples.csv.gz"),
        pd.read_csv(target / "pairs.csv.gz"),
    )  # plain pandas
    assert list(samples.columns) == [
        "model",
        "prompt",
        "reward",
        "gold_reward",
        "logratio",
        "predictive_entropy",
    ]
    assert list(pairs.columns) == ["model", "prompt", "prob_chosen", "margin"]
    original = pd.read_csv(source / "eval" / "samples.csv")
    assert len(samples) == len(original) and len(pairs) == len(pd.read_csv(source / "eval" / "pairs.csv"))
    assert (samples["prompt"] == ODD_PROMPT).sum() == (original["prompt"] == ODD_PROMPT).sum() > 0
    assert (pairs["prompt"] == ODD_TEST).any()
    text = gzip.decompress((target / "samples.csv.gz").read_bytes()).decode()
    assert "and more" not in text and "as ever" not in text  # every completion's own words left behind
    results = pd.read_csv(target / "results.csv")
    assert list(results.columns) == list(pd.read_csv(source / "eval" / "results.csv").columns)
    assert set(results["source"]) == {f"runs/{m}" for m in results["model"] if m != "sft"} | {"sft"}
    assert set(results["reward_model"]) == {"distilbert-imdb:logit"}
    assert not any(str(source.parent.parent) in p.read_bytes().decode("latin-1") for p in target.iterdir()
                   if p.suffix != ".gz")  # fmt: skip
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["source"] == "tiny-frontier" and manifest["made_by"] == "analysis.export"
    for name, recorded in manifest["tables"].items():
        assert recorded["sha256"] == hashlib.sha256((target / name).read_bytes()).hexdigest()
        assert recorded["rows"] == len(pd.read_csv(target / name))


def test_exporting_again_gives_the_same_bytes(grid, tmp_path):
    source, target = grid
    again = tmp_path / "again"
    export.main([str(source), str(again)])
    export.main([str(source), str(again)])  # over a folder it wrote itself
    for name in ("results.csv", "samples.csv.gz", "pairs.csv.gz"):
        assert (again / name).read_bytes() == (target / name).read_bytes()


def test_the_committed_tables_load_into_the_results_folders_very_values(grid):
    """report.load reads either layout; the committed tables give bit-identical columns, so every statistic
    drawn from them is the results folder's own."""
    source, target = grid
    (table, samples), (ours, our_samples) = report.load(source), report.load(target)
    portable = ["source", "reward_model"]
    pd.testing.assert_frame_equal(ours.drop(columns=portable), table.drop(columns=portable))
    pd.testing.assert_frame_equal(our_samples, samples[our_samples.columns])
    pairs, our_pairs = report.load_pairs(source), report.load_pairs(target)
    pd.testing.assert_frame_equal(our_pairs, pairs[our_pairs.columns])


def test_the_rebuild_gives_the_results_folders_verdicts_tables_and_figures(grid, tmp_path, capsys):
    source, target = grid
    original = rebuild.rebuild(rebuild.load(source), n_boot=N_BOOT)
    rebuilt = rebuild.rebuild(rebuild.load(target), n_boot=N_BOOT)
    pd.testing.assert_frame_equal(rebuilt.verdict, original.verdict)
    assert set(rebuilt.tables) == set(original.tables) >= {"entropy_reward", "online_reward", "kl_ece_debiased",
                                                            "kl_ece_temperature", "kl_pref_accuracy", "kl_gold"}  # fmt: skip
    for name, table in original.tables.items():
        pd.testing.assert_frame_equal(rebuilt.tables[name], table)
    pd.testing.assert_frame_equal(rebuilt.absolute_ece, original.absolute_ece)
    assert list(rebuilt.verdict["claim"]) == [1, 2, 3]
    assert rebuilt.verdict.loc[0, "uncorrected_verdict"] == "supported"  # JSD's planted reward
    assert "higher: jsd" in rebuilt.verdict.loc[0, "standings"] + rebuilt.verdict.loc[1, "standings"]

    rebuild.main([str(target), "--figures", str(tmp_path / "figures"), "--n_boot", str(N_BOOT)])
    printed = capsys.readouterr().out
    assert "| claim | verdict | gold_verdict | uncorrected_verdict | changed | standings |" in printed
    for claim in original.verdict.itertuples():
        assert f"| {claim.claim} | {claim.verdict} | {claim.gold_verdict or '–'} |" in printed
    assert (
        "### ECE minus its finite-sample floor at matched KL, against reverse KL (`kl_ece_debiased`)"
        in printed
    )
    drawn = sorted(p.name for p in (tmp_path / "figures" / "tiny-frontier").iterdir())
    assert drawn == ["frontier_gold_vs_proxy.png", "frontier_reward_vs_entropy.png", "frontier_reward_vs_kl.png",
                     "reliability.png"]  # fmt: skip
    assert all((tmp_path / "figures" / "tiny-frontier" / name).stat().st_size > 10_000 for name in drawn)


def test_the_rebuild_imports_neither_torch_nor_transformers(grid, tmp_path):
    """As a reader runs it (`python -m analysis.rebuild`), in a fresh interpreter: which modules it loaded."""
    _, target = grid
    probe = ("import runpy, sys\n"
             f"sys.argv = ['rebuild', {str(target)!r}, '--figures', {str(tmp_path)!r}, '--n_boot', '5']\n"
             "runpy.run_module('analysis.rebuild', run_name='__main__', alter_sys=True)\n"
             "print('LOADED', sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules))")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LOADED []" in done.stdout and "| claim | verdict" in done.stdout


def test_the_notebook_draws_from_committed_tables(grid):
    """results.ipynb pointed at committed tables: the verdict and figures, beside docs/data/ (not in it)."""
    _, target = grid
    text = exec_notebook(target.parent / "no-study", target)
    assert "no generations to show" in text and "claim" in text
    assert (target.parent.parent / "figures" / "tiny-frontier" / "reliability.png").stat().st_size > 10_000
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "pairs.csv.gz", "results.csv",
                                                        "samples.csv.gz"]  # fmt: skip


def copy_of(target: Path, where: Path) -> Path:
    """A copy of the committed tables to damage."""
    where.mkdir(parents=True)
    for path in target.iterdir():
        (where / path.name).write_bytes(path.read_bytes())
    return where


def damage(folder: Path, name: str, how: str) -> None:
    """Cut `name` short, delete it, or fill it with garbage whose hash the manifest then records (so the
    reader, not the hash check, has to find it)."""
    path = folder / name
    if how == "cut":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif how == "missing":
        path.unlink()
    else:
        path.write_bytes(b"\x1f\x8b\x08\x00garbage" if name.endswith(".gz") else b'a,"b\n1,2,3,4\n')
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["tables"][name]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("name", "how", "said"),
    [("samples.csv.gz", "cut", "SHA-256 differs"), ("pairs.csv.gz", "missing", "no such file"),
     ("samples.csv.gz", "garbage", "unreadable table"), ("results.csv", "garbage", "unreadable table"),
     ("results.csv", "missing", "no such file"), ("manifest.json", "cut", "malformed JSON")],
)  # fmt: skip
def test_a_damaged_committed_table_is_one_error_line_naming_it(grid, tmp_path, capsys, name, how, said):
    _, target = grid
    good = copy_of(target, tmp_path / "data" / "good")
    bad = copy_of(target, tmp_path / "data" / "tiny-frontier")
    damage(bad, name, how)
    with pytest.raises(SystemExit) as stopped:
        rebuild.main([str(good), str(bad), "--figures", str(tmp_path / "figures"), "--n_boot", "5"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line]
    assert stopped.value.code == 2 and len(errors) == 1
    if name == "manifest.json" or how != "missing":
        assert errors[0].startswith(f"error: {bad / name}: ") and said in errors[0]
    else:
        assert errors[0] == f"error: {bad / name}: {said}"
    assert not (tmp_path / "figures").exists()  # the good folder's figures neither: every folder read first


def test_export_refuses_a_folder_it_did_not_write(grid, tmp_path, capsys):
    source, _ = grid
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    (theirs / "manifest.json").write_text('{"made_by": "someone else"}')
    with pytest.raises(SystemExit) as stopped:
        export.main([str(source), str(theirs)])
    errors = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(errors) == 1 and errors[0].startswith(f"error: {theirs}: exists")
    assert sorted(p.name for p in theirs.iterdir()) == ["manifest.json", "notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["theirs"]  # no staging folder left behind


def test_export_of_a_folder_without_an_evaluation_writes_nothing(tmp_path, capsys):
    (tmp_path / "results" / "eval").mkdir(parents=True)
    with pytest.raises(SystemExit) as stopped:
        export.main([str(tmp_path / "results"), str(tmp_path / "data" / "grid")])
    assert stopped.value.code == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: {tmp_path / 'results' / 'eval' / 'results.csv'}: no such file"
    )
    assert not (tmp_path / "data").exists()


def test_a_199_model_grid_fits_in_10_mb():
    """The size of the committed tables of the frontier grid's shape: 199 models x 100 prompts x 4 samples
    and 128 held-out pairs each, full-precision floats as evaluate.py writes them, first sentences of
    IMDb-like reviews as prompts (longer than the grid's prompts, so the estimate errs high)."""
    rng = np.random.default_rng(0)
    sentences = first_sentences(160)
    prompts, tests = sentences[:100], sentences[100:]
    models = [f"gpt_imdb_alpha_a{a}_beta{b:g}_lr5e-04_seed{s}" for a in (0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.5)
              for b in (10, 3, 1, 0.3, 0.1, 0.03) for s in range(5)][:199]  # fmt: skip
    samples = pd.DataFrame({"model": np.repeat(models, 400), "prompt": np.tile(np.repeat(prompts, 4), 199),
                            **{c: rng.normal(size=199 * 400).astype(str) for c in export.SAMPLE_COLUMNS[2:]}})  # fmt: skip
    pairs = pd.DataFrame({"model": np.repeat(models, 128), "prompt": np.tile(np.resize(tests, 128), 199),
                          "prob_chosen": rng.uniform(size=199 * 128).astype(str),
                          "margin": rng.normal(size=199 * 128).astype(str)})  # fmt: skip
    size = len(export.encode("samples.csv.gz", samples)) + len(export.encode("pairs.csv.gz", pairs))
    print(f"samples.csv.gz and pairs.csv.gz of 199 models: {size / 1e6:.2f} MB")
    assert size < 10 * 1024 * 1024, size
