"""Eval generation, evaluation and the results notebook, end to end on a tiny run."""

import contextlib
import json
import math
import os
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from nbclient import NotebookClient

from common.models import load_policy
from train_dpo.evaluate import EvaluateArguments, preference_metrics, run_info
from train_dpo.evaluate import cli as evaluate_cli
from train_dpo.generate import cli as generate_cli
from train_dpo.generate import parse_ids
from train_dpo.pair_eval import heldout_pairs, pair_logratios
from train_dpo.sequences import completion_stats

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["This film was", "I watched it twice and", "The acting", "What a story", "Honestly, the ending"]


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_run_dir, tiny_model_dir):
    root = tmp_path_factory.mktemp("results")
    prompts = root / "eval_prompts.json"
    prompts.write_text(json.dumps(PROMPTS))
    generate_cli(["--models", str(tiny_run_dir), str(tiny_model_dir), "--prompts", str(prompts), "--samples", "4",
                  "--max_new_tokens", "16", "--top_k", "50", "--out_dir", str(root / "generations")])  # fmt: skip
    evaluate_cli(["--generations", str(root / "generations"), "--reward_model", "vader", "--tokenizer",
                  str(tiny_model_dir), "--max_test_pairs", "32", "--out_dir", str(root / "eval")])  # fmt: skip
    return root


def test_generation_files_in_the_study_format(results, tiny_run_dir):
    frame = pd.read_csv(results / "generations" / f"{tiny_run_dir.name}.csv", keep_default_na=False)
    assert len(frame) == len(PROMPTS) * 4
    assert all(
        answer.startswith(prompt) for prompt, answer in zip(frame["prompt"], frame["answers"], strict=True)
    )
    meta = json.loads((results / "generations" / f"{tiny_run_dir.name}.json").read_text())
    assert meta["is_adapter"] and meta["decoding"]["top_k"] == 50 and meta["rows"] == 20


def test_results_table(results, tiny_run_dir, tiny_model_dir):
    table = pd.read_csv(results / "eval" / "results.csv").set_index("model")
    run, sft = table.loc[tiny_run_dir.name], table.loc[tiny_model_dir.name]
    assert (run["divergence"], run["beta"]) == ("jsd", 0.1)
    assert sft["kl"] == 0.0 and run["kl"] > 0.0  # the base is its own reference
    assert 0.0 <= run["pref_accuracy"] <= 1.0 and 0.0 <= run["ece"] <= 1.0 and run["test_pairs"] == 32
    assert 1 < run["test_prompts"] <= 32 and run["prompts"] == len(PROMPTS)
    for metric in ("reward", "predictive_entropy", "length", "kl", "kl_forward", "f_divergence_ref_samples"):
        assert run[f"{metric}_lo"] <= run[metric] <= run[f"{metric}_hi"] and run[f"{metric}_nonfinite"] == 0
    assert run["kl_forward"] > 0.0 and run["f_divergence_ref_samples"] > 0.0
    assert run["token_source"] == "sampled_ids" and run["reference_generations"] == tiny_model_dir.name
    assert 0 < run["predictive_entropy"] <= math.log(2048) + 1e-6
    # Column order: mean length beside distinct-n.
    columns = list(table.columns)
    assert columns.index("length") == columns.index("distinct_2") + 1
    samples = pd.read_csv(results / "eval" / "samples.csv")
    assert len(samples) == 2 * len(PROMPTS) * 4
    reliability = pd.read_csv(results / "eval" / "reliability.csv")
    assert set(reliability["model"]) == {tiny_run_dir.name} and reliability["count"].sum() == 32
    pairs = pd.read_csv(results / "eval" / "pairs.csv")
    assert len(pairs) == 32 and pairs["prompt"].nunique() == run["test_prompts"]
    by_config = pd.read_csv(results / "eval" / "results_by_config.csv")
    assert list(by_config["n_seeds"]) == [1] and by_config.loc[0, "reward_seed_mean"] == run["reward"]
    assert samples.groupby("model")["reward"].mean()[tiny_run_dir.name] == pytest.approx(run["reward"])
    assert "| model |" in (results / "eval" / "summary.md").read_text()


def test_kl_estimate_matches_the_exact_kl_for_one_token(tmp_path, tiny_run_dir):
    """With one-token completions the sequence KL is a sum over the vocabulary: compare the estimate."""
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(PROMPTS[:2]))
    generate_cli(["--models", str(tiny_run_dir), "--prompts", str(prompts), "--samples", "600", "--max_new_tokens", "1",
                  "--out_dir", str(tmp_path / "gen")])  # fmt: skip
    evaluate_cli(["--generations", str(tmp_path / "gen"), "--metrics", "kl", "--tokenizer", str(tiny_run_dir),
                  "--out_dir", str(tmp_path / "eval")])  # fmt: skip
    estimate = pd.read_csv(tmp_path / "eval" / "results.csv").iloc[0]

    policy = load_policy(str(tiny_run_dir), "cpu")
    exact = []
    for prompt in PROMPTS[:2]:
        ids = policy.tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            logp = policy.model(input_ids=ids).logits[0, -1].log_softmax(-1)
            with policy.reference():
                ref = policy.model(input_ids=ids).logits[0, -1].log_softmax(-1)
        exact.append((logp.exp() * (logp - ref)).sum().item())
    assert estimate["kl_lo"] <= sum(exact) / 2 <= estimate["kl_hi"]


def test_study_format_csv_without_a_model(tmp_path, tiny_model_dir):
    # Published generations: no model beside them, so only the text metrics; one answer lacks its prompt.
    csv = tmp_path / "study.csv"
    pd.DataFrame(
        {"prompt": ["Good", "Bad"], "answers": ["Good and great fun.", "Something else entirely."]}
    ).to_csv(csv, index=False)
    evaluate_cli(["--generations", str(csv), "--reward_model", "vader", "--tokenizer", str(tiny_model_dir),
                  "--out_dir", str(tmp_path / "eval")])  # fmt: skip
    row = pd.read_csv(tmp_path / "eval" / "results.csv").iloc[0]
    assert row["not_prefixed"] == 1 and row["n"] == 2 and row["reward"] > 0
    assert "kl" not in row and "predictive_entropy" not in row  # no policy to compute them with


def test_classifier_reward_defaults_to_bf16_where_native(
    tmp_path, tiny_model_dir, tiny_classifier_dir, monkeypatch
):
    """`--reward_dtype auto`: bf16 where the hardware has it, named in the table; means move by rounding only."""
    from common import rewards

    monkeypatch.setattr(rewards, "native_bf16", lambda device: True)
    csv = tmp_path / "study.csv"
    answers = ["Good and great fun.", "Bad, dull and far too long.", "A film.", "Wonderful!"]
    pd.DataFrame({"prompt": [a.split()[0] for a in answers], "answers": answers}).to_csv(csv, index=False)
    rows = {}
    for dtype in ("auto", "float32"):
        evaluate_cli(["--generations", str(csv), "--reward_model", str(tiny_classifier_dir), "--reward_dtype",
                      dtype, "--tokenizer", str(tiny_model_dir), "--out_dir", str(tmp_path / dtype)])  # fmt: skip
        rows[dtype] = pd.read_csv(tmp_path / dtype / "results.csv").iloc[0]
    assert rows["auto"]["reward_model"] == f"{tiny_classifier_dir}:logit:bfloat16"
    assert rows["float32"]["reward_model"] == f"{tiny_classifier_dir}:logit"
    assert rows["auto"]["reward"] != rows["float32"]["reward"]
    assert rows["auto"]["reward"] == pytest.approx(rows["float32"]["reward"], abs=0.02)


def frontier_folder(root: Path) -> Path:
    """Evaluation tables shaped like a frontier sweep's: SFT, two families x two betas x three seeds."""
    rng = np.random.default_rng(0)
    rows = [{"model": "sft", "loss": None, "divergence": None, "alpha": None, "beta": None, "seed": None,
             "reward": 0.1, "kl": 0.0, "predictive_entropy": 4.0, "gold_reward": 0.05}]  # fmt: skip
    samples, pairs = [], []
    for divergence, lift in (("reverse_kl", 0.0), ("jsd", 0.2)):
        for beta in (1.0, 0.1):
            for seed in range(3):
                model = f"gpt_imdb_{divergence}_beta{beta:g}_seed{seed}"
                kl = 2 / beta + rng.normal(0, 0.1)
                rows.append({"model": model, "loss": "sigmoid", "divergence": divergence, "alpha": None,
                             "beta": beta, "seed": seed, "reward": 0.02 * kl + lift, "kl": kl,
                             "predictive_entropy": 4 - 0.1 * kl, "gold_reward": 0.01 * kl})  # fmt: skip
                samples += [{"model": model, "prompt": f"prompt {p}", "answer": f"prompt {p} and more",
                             "reward": 0.02 * kl + lift + rng.normal(0, 0.05), "logratio": kl + rng.normal(0, 1),
                             "predictive_entropy": 4 - 0.1 * kl, "gold_reward": 0.01 * kl}
                            for p in range(8) for _ in range(2)]  # fmt: skip
                # reverse KL: right 80% of the time at confidence 0.8 (calibrated); jsd: the other side, right 20%
                right = 0.8 if divergence == "reverse_kl" else 0.2
                pairs += [{"model": model, "prompt": f"test {p % 7}", "prob_chosen": right if p % 5 else 1 - right}
                          for p in range(20)]  # fmt: skip
    samples += [{"model": "sft", "prompt": f"prompt {p}", "answer": f"prompt {p} as ever", "reward": 0.1,
                 "logratio": 0.0, "predictive_entropy": 4.0, "gold_reward": 0.05} for p in range(8)]  # fmt: skip
    (root / "eval").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "eval" / "results.csv", index=False)
    pd.DataFrame(samples).to_csv(root / "eval" / "samples.csv", index=False)
    pd.DataFrame(pairs).to_csv(root / "eval" / "pairs.csv", index=False)
    return root


def run_notebook(study: Path, frontier: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(REPO / "results.ipynb", as_version=4)
    env = {"FDPO_RESULTS_DIR": str(study), "FDPO_FRONTIER_DIR": str(frontier)}
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        NotebookClient(
            notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
        ).execute()
    finally:
        for name, value in previous.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
    return notebook


def outputs(notebook) -> str:
    return json.dumps([cell.get("outputs", []) for cell in notebook.cells])


def test_notebook_runs_headless_on_the_results(results, tmp_path):
    notebook = run_notebook(results, tmp_path / "no-frontier")
    assert "Spearman rank correlation" in outputs(notebook)
    assert "no frontier-grid results" in outputs(notebook)
    assert (results / "figures" / "reliability.png").stat().st_size > 10_000

    frontier = frontier_folder(tmp_path / "frontier")
    notebook = run_notebook(tmp_path / "no-study", frontier)
    for name in ("frontier_reward_vs_kl.png", "frontier_reward_vs_entropy.png", "frontier_gold_vs_proxy.png"):
        assert (frontier / "figures" / name).stat().st_size > 10_000
    text = outputs(notebook)
    assert "no study-grid results" in text
    assert "jsd: reward higher than reverse KL beyond the interval" in text  # the planted +0.2
    assert "jsd: ece higher than reverse KL beyond the interval" in text  # the planted miscalibration
    assert "not measured (no online_reward table)" in text  # no RLOO runs: claim 2 undecided, and why
    assert (frontier / "figures" / "reliability.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("cli", "flags", "message"),
    [
        (generate_cli, ["--topk", "5"], "unknown flag(s): --topk 5"),
        (generate_cli, ["--models", "EMPTY"], "no config.json"),
        (generate_cli, ["--top_p", "0"], "0 < --top_p <= 1"),
        (evaluate_cli, ["--metrics", "reward", "bleu"], "unknown metric(s) bleu"),
        (evaluate_cli, ["--generations", "NOCOLS"], "missing column(s) answers"),
        (evaluate_cli, ["--generations", "missing.csv"], "missing.csv: no such file or folder"),
    ],
)
def test_bad_input(cli, flags, message, tmp_path, error_line):
    (tmp_path / "empty").mkdir()
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("prompt,text\na,b\n")
    flags = [str(tmp_path / "empty") if f == "EMPTY" else str(bad_csv) if f == "NOCOLS" else f for f in flags]
    assert message in error_line(cli, [*flags, "--out_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


# --- evaluator friction: several models in one CSV, metrics that cannot be computed, the tokenizer's load


def vader(text: str) -> float:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer().polarity_scores(text)["compound"]


def test_a_csv_of_several_models_is_evaluated_per_model(tmp_path, tiny_model_dir):
    """The study's all_score.csv holds every model's samples, told apart by a `model` column."""
    rows = [("sft", "The plot", "The plot was dull and awful."), ("sft", "The cast", "The cast was bad."),
            ("dpo", "The plot", "The plot was wonderful."), ("dpo", "The cast", "The cast was great and moving."),
            ("dpo", "The end ", "The end was fine.")]  # fmt: skip
    csv = tmp_path / "all_score.csv"
    pd.DataFrame(rows, columns=["model", "prompt", "answers"]).to_csv(csv, index=False)
    evaluate_cli(["--generations", str(csv), "--metrics", "reward", "length", "--reward_model", "vader",
                  "--tokenizer", str(tiny_model_dir), "--out_dir", str(tmp_path / "eval")])  # fmt: skip
    table = pd.read_csv(tmp_path / "eval" / "results.csv").set_index("model")
    assert list(table.index) == ["sft", "dpo"] and list(table["n"]) == [2, 3]
    assert table["not_prefixed"].sum() == 0  # "The end " is found in "The end was fine." all the same
    for model in ("sft", "dpo"):
        continuations = [a[len(p.rstrip()) :] for m, p, a in rows if m == model]
        assert table.loc[model, "reward"] == pytest.approx(
            sum(map(vader, continuations)) / len(continuations)
        )

    evaluate_cli(["--generations", str(csv), "--metrics", "reward", "--reward_model", "vader", "--group_by", "none",
                  "--out_dir", str(tmp_path / "pooled")])  # fmt: skip
    assert list(pd.read_csv(tmp_path / "pooled" / "results.csv")["n"]) == [5]


def test_a_metric_that_cannot_be_computed_says_so(tmp_path, caplog):
    csv = tmp_path / "orphan.csv"
    pd.DataFrame({"prompt": ["The plot"], "answers": ["The plot was fine."]}).to_csv(csv, index=False)
    with caplog.at_level("WARNING", logger="evaluate"):
        evaluate_cli(["--generations", str(csv), "--metrics", "reward", "kl", "preference", "--reward_model", "vader",
                      "--out_dir", str(tmp_path / "eval")])  # fmt: skip
    assert "orphan: kl, preference not computed: no model named beside its CSV" in caplog.text
    assert "kl" not in pd.read_csv(tmp_path / "eval" / "results.csv").columns


def test_the_tokenizer_loads_only_when_needed_and_before_the_reward_model(tmp_path, error_line):
    csv = tmp_path / "m.csv"
    pd.DataFrame({"prompt": ["The plot"], "answers": ["The plot was fine."]}).to_csv(csv, index=False)
    base = [
        "--generations",
        str(csv),
        "--out_dir",
        str(tmp_path / "eval"),
        "--tokenizer",
        str(tmp_path / "no-tokenizer"),
    ]
    evaluate_cli([*base, "--metrics", "reward", "--reward_model", "vader"])  # no token metric: never loaded
    assert (tmp_path / "eval" / "results.csv").is_file()
    line = error_line(
        evaluate_cli, [*base, "--metrics", "reward", "length", "--reward_model", str(tmp_path / "no-rm")]
    )
    assert line.startswith(f"error: --tokenizer {tmp_path / 'no-tokenizer'}: cannot load")


STUDY_ROWS = [("sft", "The plot", "The plot was dull and awful."), ("sft", "The cast", "The cast was bad."),
              ("dpo", "The plot", "The plot was wonderful.")]  # fmt: skip


def evaluate_reward(csv, out, *flags):
    evaluate_cli(["--generations", *map(str, csv if isinstance(csv, list) else [csv]), "--metrics", "reward",
                  "--reward_model", "vader", "--out_dir", str(out), *flags])  # fmt: skip


def test_a_group_by_column_the_csv_lacks_is_one_line_not_a_pooled_row(tmp_path, error_line):
    csv = tmp_path / "all_score.csv"
    pd.DataFrame(STUDY_ROWS, columns=["model", "prompt", "answers"]).to_csv(csv, index=False)
    flags = ["--generations", str(csv), "--metrics", "reward", "--reward_model", "vader"]
    line = error_line(evaluate_cli, [*flags, "--group_by", "modle", "--out_dir", str(tmp_path / "eval")])
    assert line == f"error: --group_by modle: {csv} has no such column (its columns: model, prompt, answers)"
    assert not (tmp_path / "eval").exists()
    # Named or not, `model` splits the study's CSV; a CSV of one model (generate.py's) needs no column.
    for group in ([], ["--group_by", "model"]):
        evaluate_reward(csv, tmp_path / "by_model", *group)
        assert list(pd.read_csv(tmp_path / "by_model" / "results.csv")["model"]) == ["sft", "dpo"]
    single = tmp_path / "single.csv"
    pd.DataFrame([row[1:] for row in STUDY_ROWS], columns=["prompt", "answers"]).to_csv(single, index=False)
    evaluate_reward(single, tmp_path / "single")
    assert list(pd.read_csv(tmp_path / "single" / "results.csv")["n"]) == [3]


def test_duplicated_records_are_counted_in_a_warning(tmp_path, caplog):
    numbered = tmp_path / "run.csv"  # generate.py's format: a record is (prompt, sample)
    rows = [{"prompt": "The plot", "answers": f"The plot was {word}.", "sample": i}
            for i, word in enumerate(["fine", "great", "dull"])]  # fmt: skip
    pd.DataFrame([*rows, rows[1], rows[2], rows[2]]).to_csv(numbered, index=False)
    study = tmp_path / "all_score.csv"  # the study's: a record is the whole row, within its model
    pd.DataFrame([*STUDY_ROWS, STUDY_ROWS[0]], columns=["model", "prompt", "answers"]).to_csv(
        study, index=False
    )
    with caplog.at_level("WARNING", logger="evaluate"):
        evaluate_reward([numbered, study], tmp_path / "eval")
    assert f"{numbered}: 3 duplicated record(s) (same prompt, sample)" in caplog.text
    assert f"{study}: 1 duplicated record(s) (rows equal in every column)" in caplog.text
    caplog.clear()
    clean = tmp_path / "clean.csv"  # a repeated answer under another sample number is no duplicate
    pd.DataFrame([*rows, {**rows[0], "sample": 3}]).to_csv(clean, index=False)
    with caplog.at_level("WARNING", logger="evaluate"):
        evaluate_reward(clean, tmp_path / "clean")
    assert "duplicated" not in caplog.text


def test_one_row_per_model_gives_no_interval(tmp_path):
    """One completion (one prompt) per model: a mean, and no zero-width "95% interval" beside it."""
    csv = tmp_path / "all_score.csv"
    pd.DataFrame(STUDY_ROWS, columns=["model", "prompt", "answers"]).to_csv(csv, index=False)
    evaluate_reward(csv, tmp_path / "eval")
    table = pd.read_csv(tmp_path / "eval" / "results.csv").set_index("model")
    assert table.loc["dpo", "n"] == 1 and pd.notna(table.loc["dpo", "reward"])
    assert table.loc["dpo", ["reward_lo", "reward_hi"]].isna().all()
    assert table.loc["sft", "reward_lo"] < table.loc["sft", "reward_hi"]
    summary = (tmp_path / "eval" / "summary.md").read_text()
    assert f"| dpo | {table.loc['dpo', 'reward']:.3f} [–] |" in summary


def test_two_models_of_one_name_are_refused(tmp_path, error_line):
    """`x.csv` in two folders would be one model in every table that keys rows by name."""
    csvs = [tmp_path / folder / "gpt_imdb_jsd_beta1.csv" for folder in ("a", "b")]
    for csv in csvs:
        csv.parent.mkdir()
        pd.DataFrame({"prompt": ["The plot"], "answers": ["The plot was fine."]}).to_csv(csv, index=False)
    flags = ["--metrics", "reward", "--reward_model", "vader", "--out_dir", str(tmp_path / "eval")]
    line = error_line(evaluate_cli, ["--generations", *map(str, csvs), *flags])
    assert line == f"error: --generations: {csvs[0]} and {csvs[1]} both hold a model named gpt_imdb_jsd_beta1"


# --- metrics computed the way training and sampling saw the tokens


def completion_logratios(policy, prompt_ids, completion_ids) -> list[float]:
    """log pi(y|x) - log pi_ref(y|x) of each completion, one full-vocabulary forward pass per sequence."""
    out = []
    for prompt, completion in zip(prompt_ids, completion_ids, strict=True):
        ids = torch.tensor([prompt + completion])
        sums = []
        for context in (contextlib.nullcontext(), policy.reference()):
            with torch.no_grad(), context:
                logp = policy.model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            steps = torch.arange(len(prompt) - 1, ids.shape[1] - 1)
            sums.append(logp[steps, ids[0, steps + 1]].double().sum().item())
        out.append(sums[0] - sums[1])
    return out


def test_pair_logratios_are_the_trainers_eos_included(tiny_run_dir):
    """The held-out log-ratios are what the trainer computed on its eval pairs, and they score the EOS.

    Oracles: the run's own eval metrics (the trainer's mean log-ratios over its 16 eval pairs, logged when
    training ended), and a direct forward pass over prompt + answer + EOS.
    """
    saved = json.loads((tiny_run_dir / "run_config.json").read_text())
    policy = load_policy(str(tiny_run_dir), "cpu")
    pairs = heldout_pairs(saved, policy.tokenizer, max_pairs=saved["script"]["max_eval_pairs"])
    ratios = pair_logratios(policy, pairs, saved, batch_size=8)
    logged = json.loads((tiny_run_dir / "eval_results.json").read_text())
    assert ratios["chosen"].mean() == pytest.approx(logged["eval_logratios/chosen"], abs=1e-5)
    assert ratios["rejected"].mean() == pytest.approx(logged["eval_logratios/rejected"], abs=1e-5)

    encode = policy.tokenizer
    prompts = [encode(p, add_special_tokens=False).input_ids for p in pairs["prompt"]]
    eos = policy.tokenizer.eos_token_id
    for side in ("chosen", "rejected"):  # float32 sums of ~100 nats differ in their last bits: 5e-5
        answers = [encode(a, add_special_tokens=False).input_ids + [eos] for a in pairs[side]]
        np.testing.assert_allclose(ratios[side], completion_logratios(policy, prompts, answers), atol=5e-5)
    # Leaving the EOS out, as the evaluator once did, moves the log-ratios.
    without_eos = completion_stats(
        policy.model, policy.tokenizer, list(pairs["prompt"]), list(pairs["chosen"])
    )
    with policy.reference():
        ref = completion_stats(policy.model, policy.tokenizer, list(pairs["prompt"]), list(pairs["chosen"]))
    assert np.abs(ratios["chosen"] - (without_eos["logps"] - ref["logps"]).numpy()).max() > 1e-3


def test_kl_is_computed_on_the_saved_sampled_ids(results, tiny_run_dir):
    generations = pd.read_csv(results / "generations" / f"{tiny_run_dir.name}.csv", keep_default_na=False)
    prompt_ids = [parse_ids(cell) for cell in generations["prompt_ids"]]
    completion_ids = [parse_ids(cell) for cell in generations["completion_ids"]]
    policy = load_policy(str(tiny_run_dir), "cpu")
    eos = policy.tokenizer.eos_token_id
    for answer, prompt, ids in zip(
        generations["answers"], generations["prompt"], completion_ids, strict=True
    ):
        assert len(ids) == 16 or ids[-1] == eos  # cut after the first EOS, which is kept
        assert eos not in ids[:-1]
        assert policy.tokenizer.decode(ids, skip_special_tokens=True) == answer[len(prompt) :]
    samples = pd.read_csv(results / "eval" / "samples.csv", keep_default_na=False)
    samples = samples[samples["model"] == tiny_run_dir.name]
    direct = completion_logratios(policy, prompt_ids, completion_ids)
    np.testing.assert_allclose(samples["logratio"].to_numpy(dtype=float), direct, atol=1e-5)
    table = pd.read_csv(results / "eval" / "results.csv").set_index("model")
    assert table.loc[tiny_run_dir.name, "kl"] == pytest.approx(np.mean(direct), abs=1e-6)
    assert list(samples["sampled_tokens"]) == [len(ids) for ids in completion_ids]


def test_an_empty_completion_that_emitted_eos_has_that_steps_entropy(tmp_path, tiny_run_dir):
    policy = load_policy(str(tiny_run_dir), "cpu")
    prompt = "This film was"
    ids = policy.tokenizer(prompt).input_ids
    folder = tmp_path / "gen"
    folder.mkdir()
    pd.DataFrame({"prompt": [prompt] * 2, "answers": [prompt] * 2, "sample": [0, 1],
                  "prompt_ids": [" ".join(map(str, ids))] * 2,
                  "completion_ids": [str(policy.tokenizer.eos_token_id)] * 2}).to_csv(folder / "run.csv", index=False)  # fmt: skip
    (folder / "run.json").write_text(json.dumps({"model": str(tiny_run_dir), "is_adapter": True}))
    evaluate_cli(
        ["--generations", str(folder), "--metrics", "predictive_entropy", "--out_dir", str(tmp_path / "eval")]
    )
    samples = pd.read_csv(tmp_path / "eval" / "samples.csv")
    with torch.no_grad():
        logp = policy.model(input_ids=torch.tensor([ids])).logits[0, -1].log_softmax(-1)
    step_entropy = -(logp.exp() * logp).sum().item()
    assert step_entropy > 0.1
    np.testing.assert_allclose(samples["predictive_entropy"], step_entropy, rtol=1e-5)


def test_hinge_runs_get_accuracy_but_no_calibration(tmp_path, tiny_run_dir):
    """A hinge loss implies no Bradley-Terry probability, so there is no ECE or reliability to report."""
    run = tmp_path / "hinge_run"
    shutil.copytree(tiny_run_dir, run)
    saved = json.loads((run / "run_config.json").read_text())
    saved["training"]["loss_type"] = "hinge"
    (run / "run_config.json").write_text(json.dumps(saved))
    policy = load_policy(str(run), "cpu")
    args = EvaluateArguments(max_test_pairs=8, out_dir=str(tmp_path / "eval"))
    row, pairs, reliability = preference_metrics("hinge_run", policy, saved, run_info(saved), args)
    assert 0.0 <= row["pref_accuracy"] <= 1.0 and row["test_pairs"] == 8
    assert "ece" not in row and reliability is None and "prob_chosen" not in pairs
