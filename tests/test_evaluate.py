"""Eval generation, evaluation and the results notebook, end to end on a tiny run."""

import json
import math
import os

import nbformat
import pandas as pd
import pytest
import torch
from nbclient import NotebookClient

from train_dpo.evaluate import cli as evaluate_cli
from train_dpo.generate import cli as generate_cli
from train_dpo.models import load_policy

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
    for metric in ("reward", "predictive_entropy", "length", "kl", "f_divergence"):
        assert run[f"{metric}_lo"] <= run[metric] <= run[f"{metric}_hi"]
    assert 0 < run["predictive_entropy"] <= math.log(2048) + 1e-6
    samples = pd.read_csv(results / "eval" / "samples.csv")
    assert len(samples) == 2 * len(PROMPTS) * 4
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
    from dataset import rewards

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


def test_notebook_runs_headless_on_the_results(results):
    notebook = nbformat.read("results.ipynb", as_version=4)
    os.environ["FDPO_RESULTS_DIR"] = str(results)
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    finally:
        del os.environ["FDPO_RESULTS_DIR"]
    for name in ("reward_boxplot.png", "reward_vs_entropy.png", "reward_vs_kl.png"):
        assert (results / "figures" / name).stat().st_size > 10_000


@pytest.mark.parametrize(
    ("cli", "flags", "message"),
    [
        (generate_cli, ["--topk", "5"], "not used by the HfArgumentParser"),
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
        continuations = [a[len(p.rstrip()):] for m, p, a in rows if m == model]
        assert table.loc[model, "reward"] == pytest.approx(sum(map(vader, continuations)) / len(continuations))

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
    base = ["--generations", str(csv), "--out_dir", str(tmp_path / "eval"), "--tokenizer", str(tmp_path / "no-tokenizer")]
    evaluate_cli([*base, "--metrics", "reward", "--reward_model", "vader"])  # no token metric: never loaded
    assert (tmp_path / "eval" / "results.csv").is_file()
    line = error_line(evaluate_cli, [*base, "--metrics", "reward", "length", "--reward_model", str(tmp_path / "no-rm")])
    assert line.startswith(f"error: --tokenizer {tmp_path / 'no-tokenizer'}: cannot load")
