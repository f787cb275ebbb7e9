"""The frontier grid's two pair sources: the study's diverse beam search (`--pairs beam`, the default) and the
SFT policy sampled as the online-RL runs and evaluation sample it (`--pairs sampled`), from as many scored
training-split completions as one RLOO run scores; and 5 seeds for every frontier configuration."""

import json
from collections import Counter
from dataclasses import replace

import pytest
import yaml

import config
import reproduce
from common.pairing import is_test_prompt
from train_dpo.sweep import RLOO_BETAS

FRONTIER = ["--preset", "tiny", "--grid", "frontier"]
SAMPLED = [*FRONTIER, "--pairs", "sampled"]


def dataset_args(argv: list[str], *inputs: str):
    """The dataset stage's settings as a sweep of `argv` passes them (the recipe's flags, then the stage's),
    with `inputs` (the flags that the sweep sets itself, such as --sft_model) last."""
    from dataset.main import parse_args

    args = reproduce.parse_args(argv)
    return parse_args([*reproduce.read_grid_recipe("tiny", args)["dataset"], *args.dataset_args, *inputs])


def rloo_scored_per_run() -> int:
    """Completions one tiny RLOO run samples and scores: steps x completions per step."""
    from train_dpo.rloo import parse_args

    _, training = parse_args([*reproduce.read_grid_recipe("tiny")["rloo"], "--output_dir", "unused"])
    return training.max_steps * training.per_device_train_batch_size


def test_the_sampled_source_samples_as_evaluation_does_with_rloo_s_length():
    from train_dpo.generate import parse_args as parse_generate_args
    from train_dpo.rloo import parse_args as parse_rloo_args

    sampled = dataset_args(SAMPLED)
    assert (sampled.decoding, sampled.top_k, sampled.top_p, sampled.temperature) == ("sample", 0, 1.0, 1.0)
    assert (sampled.word_bias, sampled.no_repeat_ngram_size, sampled.ban_markup) == (0.0, 0, False)
    assert sampled.max_new_tokens == 32
    # Evaluation's own decoding (train_dpo/generate.py), bar how many samples a prompt gets.
    recipe = reproduce.read_grid_recipe("tiny")
    evaluation = parse_generate_args(["--models", "sft", *recipe["generate"]]).decoding()
    assert sampled.decoding_config() == replace(evaluation, k=sampled.k)
    # RLOO's completions: as long, drawn at temperature 1 with no top-k or top-p cut.
    _, rloo = parse_rloo_args([*recipe["rloo"], "--output_dir", "unused"])
    assert rloo.max_completion_length == sampled.max_new_tokens
    assert rloo.temperature == 1.0 and rloo.top_p == 1.0 and not rloo.top_k


def test_the_sampled_source_keeps_the_beam_source_s_prompts_and_scores_as_many_completions_as_rloo():
    beam, sampled = dataset_args(FRONTIER), dataset_args(SAMPLED)
    # The same prompts drawn (and so the same held-out eval prompts); only the train/test cut moves.
    same = ("prompts", "num_prompts", "num_eval_prompts", "max_prompt_tokens", "seed", "k", "pairs")
    assert {key: getattr(beam, key) for key in same} == {key: getattr(sampled, key) for key in same}
    assert (beam.test_size, sampled.test_size) == (0.4, 0.38)
    assert rloo_scored_per_run() == 120 * 4 * 4 == 1920 == 320 * sampled.k


def test_on_the_study_s_prompts_the_sampled_source_has_320_training_prompts(study_data_dir, tmp_path):
    """The count the recipe's comment states, on the study's prompt file and the tokenizer the tiny preset
    trains on the study's text (its 128-token filter decides which prompts can be drawn)."""
    from common import imdb
    from common.tiny import train_tokenizer
    from dataset.main import select_prompts

    train_tokenizer(imdb.texts(study_data_dir)).save_pretrained(tmp_path / "tokenizer")
    where = [
        "--prompts",
        str(study_data_dir / config.PROMPTS_FILE),
        "--sft_model",
        str(tmp_path / "tokenizer"),
    ]
    counts, held_out = {}, {}
    for name, argv in (("beam", FRONTIER), ("sampled", SAMPLED)):
        settings = dataset_args(argv, *where)
        drawn = select_prompts(settings)
        counts[name] = sum(
            not is_test_prompt(prompt, settings.test_size, settings.seed) for prompt in drawn["train"]
        )
        held_out[name] = drawn["eval"]
    assert counts == {"beam": 310, "sampled": 320}
    assert counts["sampled"] * 6 == rloo_scored_per_run()
    assert held_out["beam"] == held_out["sampled"] and len(held_out["sampled"]) == 100


def test_the_beam_source_is_unchanged_and_the_default():
    args = reproduce.parse_args(FRONTIER)
    assert args.pairs == "beam"
    recipe = yaml.safe_load(reproduce.recipe_path("tiny", "grid").read_text())
    assert reproduce.read_grid_recipe("tiny", args)["dataset"] == reproduce.as_flags(recipe["dataset"])
    beam = dataset_args(FRONTIER)
    assert (beam.decoding, beam.word_bias, beam.no_repeat_ngram_size, beam.ban_markup) == (
        "diverse_beam", 1.5, 2, True)  # fmt: skip
    assert (beam.max_new_tokens, beam.num_prompts, beam.test_size) == (48, 512, 0.4)
    assert reproduce.results_name("tiny", "frontier", args.pairs) == "tiny-frontier"


def test_each_source_has_its_own_results_folder(capsys):
    assert reproduce.results_name("tiny", "frontier", "sampled") == "tiny-frontier-sampled"
    assert reproduce.results_name("paper", "frontier", "sampled") == "paper-frontier-sampled"
    assert reproduce.results_name("tiny", "study") == "tiny"
    reproduce.main([*SAMPLED, "--only", "rloo", "--dry-run"])
    out = capsys.readouterr().out
    assert f"-> {config.RESULTS_DIR / 'tiny-frontier-sampled'}\n" in out
    assert "pairs: sampled (dataset flags: " in out and "--decoding sample" in out and "--word_bias 0" in out


def test_every_frontier_configuration_gets_5_seeds_dpo_and_rloo_alike():
    for argv in (FRONTIER, SAMPLED):
        args = reproduce.parse_args(argv)
        grid = reproduce.plan_grid(args, reproduce.read_grid_recipe("tiny", args))
        seeds = Counter((spec.loss_type, spec.divergence, spec.alpha, spec.beta) for spec in grid)
        assert set(seeds.values()) == {5}
        assert len(seeds) == 7 * 6 + len(RLOO_BETAS)
        assert sum(1 for spec in grid if spec.family == "rloo") == 5 * len(RLOO_BETAS)
    assert reproduce.parse_args(["--preset", "tiny"]).seeds == 1  # the study grid keeps its one
    assert reproduce.parse_args([*FRONTIER, "--seeds", "3"]).seeds == 3


def test_a_stage_s_flag_still_outranks_the_sampled_mapping():
    settings = dataset_args([*SAMPLED, "--dataset_args", "--max_new_tokens 16 --test_size 0.5"])
    assert (settings.max_new_tokens, settings.test_size, settings.decoding) == (16, 0.5, "sample")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--preset", "tiny", "--pairs", "sampled"],
            "--pairs sampled is the frontier grid's second pair source",
        ),
        ([*FRONTIER, "--pairs", "greedy"], "--pairs: invalid choice: 'greedy'"),
    ],
)
def test_a_pair_source_off_the_frontier_grid_is_one_line(argv, message, error_line):
    assert message in error_line(reproduce.cli, [*argv, "--dry-run"])


def grid_recipe_with(tmp_path, monkeypatch, sampled) -> None:
    """recipes/tiny/ copied under tmp_path with `sampled` as its grid's sampled_pairs (None: without one)."""
    import shutil

    from common import cli

    shutil.copytree(cli.RECIPES_DIR / "tiny", tmp_path / "tiny")
    path = tmp_path / "tiny" / "grid.yaml"
    recipe = yaml.safe_load(path.read_text())
    recipe.pop("sampled_pairs")
    if sampled is not None:
        recipe["sampled_pairs"] = sampled
    path.write_text(yaml.safe_dump(recipe))
    monkeypatch.setattr(cli, "RECIPES_DIR", tmp_path)


@pytest.mark.parametrize(
    ("sampled", "pairs", "message"),
    [
        (None, "sampled", "grid.yaml: no sampled_pairs mapping, which --pairs sampled layers over"),
        ({"out_dir": "x"}, "beam", "grid.yaml: sampled_pairs: out_dir is set by each run of the grid"),
        ({"sft_model": "x"}, "sampled", "grid.yaml: sampled_pairs: sft_model is set by each run of the grid"),
        (["decoding"], "beam", "grid.yaml: sampled_pairs: expected a mapping of option: value"),
    ],
)
def test_a_bad_sampled_pairs_mapping_is_one_line_before_anything_is_written(
    tmp_path, monkeypatch, error_line, sampled, pairs, message
):
    grid_recipe_with(tmp_path / "recipes", monkeypatch, sampled)
    root = tmp_path / "results"
    for dry in ([], ["--dry-run"]):
        argv = [*FRONTIER, "--pairs", pairs, "--results_dir", str(root), "--only", "rloo", *dry]
        assert message in error_line(reproduce.cli, argv)
    assert not root.exists()


def test_reproduce_json_records_the_pair_source(tmp_path, monkeypatch):
    """The record is written as each stage ends: stopped at training, it names the source and the dataset
    stage's flags it resolved to."""
    import dataset.main
    import train_dpo.sft

    class Stop(Exception):
        pass

    monkeypatch.setattr(train_dpo.sft, "train_sft", lambda *args, **kwargs: None)
    monkeypatch.setattr(dataset.main, "main", lambda flags: None)
    monkeypatch.setattr(reproduce, "train_runs", lambda *args, **kwargs: (_ for _ in ()).throw(Stop()))
    root = tmp_path / "results"
    with pytest.raises(Stop):
        reproduce.main([*SAMPLED, "--only", "rloo", "--seeds", "1", "--results_dir", str(root)])
    record = json.loads((root / "reproduce.json").read_text())
    assert record["pairs"]["source"] == "sampled"
    flags = record["pairs"]["dataset_flags"]
    assert (
        flags[flags.index("--decoding") + 1] == "sample" and flags[flags.index("--test_size") + 1] == "0.38"
    )
    assert "--pairs sampled" in record["command"]


def test_a_small_sampled_build_draws_exactly_what_plain_sampling_draws(tmp_path, tiny_model_dir):
    """A real dataset build on the sampled source's settings (few prompts), against transformers' own
    `generate` with no logits processor at all: no word bias, no n-gram or markup ban, no top-k or top-p."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dataset.main import main as build

    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([f"This film number {i} was" for i in range(12)]))
    out = tmp_path / "data"
    settings = dataset_args([*SAMPLED, "--dataset_args", "--num_prompts 4 --num_eval_prompts 2"])
    flags = [*reproduce.read_grid_recipe("tiny", reproduce.parse_args(SAMPLED))["dataset"],
             "--num_prompts", "4", "--num_eval_prompts", "2", "--prompts", str(prompts), "--sft_model",
             str(tiny_model_dir), "--out_dir", str(out), "--stages", "prompts,generate"]  # fmt: skip
    build(flags)
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines() if line.strip()]
    drawn = [row["prompt"] for row in rows]
    assert len(drawn) == 4 and all(len(row["answers"]) == settings.k == 6 for row in rows)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    encoded = tokenizer(drawn, return_tensors="pt", padding=True)
    torch.manual_seed(settings.seed)  # one batch (batch_size >= 4 prompts): the build's seed + 0
    with torch.no_grad():
        output = model.generate(**encoded, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                                max_new_tokens=32, num_return_sequences=6, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    texts = tokenizer.batch_decode(output[:, encoded.input_ids.shape[1] :], skip_special_tokens=True)
    expected = [[prompt + text for text in texts[6 * i : 6 * i + 6]] for i, prompt in enumerate(drawn)]
    assert [row["answers"] for row in rows] == expected
