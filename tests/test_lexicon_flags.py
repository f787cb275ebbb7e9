"""A lexicon reward (VADER, TextBlob) has no logits and no weights: the classifier-only flags are refused
with it, and so cannot change what an RLOO run records and hashes."""

import pytest

from dataset.main import cli as dataset_cli
from train_dpo.evaluate import cli as evaluate_cli
from train_dpo.fingerprint import run_settings
from train_dpo.rloo import cli as rloo_cli
from train_dpo.rloo import parse_args as rloo_args

LEXICON_FLAGS = [("vader", "--reward_output", "prob"), ("textblob", "--reward_dtype", "float32"),
                 ("vader", "--reward_dtype", "bfloat16")]  # fmt: skip


@pytest.mark.parametrize(("lexicon", "flag", "value"), LEXICON_FLAGS)
@pytest.mark.parametrize("cli", [rloo_cli, evaluate_cli], ids=["rloo", "evaluate"])
def test_a_classifier_flag_with_a_lexicon_is_one_error_line(cli, lexicon, flag, value, tmp_path, error_line):
    out = tmp_path / "out"
    argv = ["--reward_model", lexicon, flag, value]
    argv += ["--output_dir", str(out)] if cli is rloo_cli else ["--out_dir", str(out)]
    line = error_line(cli, argv, alone=True)
    assert f"{flag} {value}: applies to a classifier reward only" in line and lexicon in line
    assert not out.exists()


def test_the_dataset_stage_refuses_it_against_its_own_default(tmp_path, error_line):
    """The dataset's scores default to float32 (not auto): that default passes, auto is refused."""
    line = error_line(dataset_cli, ["--reward_model", "vader", "--reward_dtype", "auto",
                                    "--out_dir", str(tmp_path / "d")], alone=True)  # fmt: skip
    assert "--reward_dtype auto: applies to a classifier reward only" in line and "default, float32" in line


def test_a_lexicon_run_hashes_the_same_with_the_flags_at_their_defaults_given_or_not(tmp_path):
    base = ["--reward_model", "vader", "--output_dir", str(tmp_path / "run")]
    plain = run_settings(*rloo_args(base))
    given = run_settings(*rloo_args([*base, "--reward_output", "logit", "--reward_dtype", "auto"]))
    assert plain == given and (plain["reward_output"], plain["reward_dtype"]) == ("logit", "auto")


def test_a_classifier_keeps_both_flags(tmp_path):
    args, _ = rloo_args(["--reward_model", "lvwerra/distilbert-imdb", "--reward_output", "prob",
                         "--reward_dtype", "float32", "--output_dir", str(tmp_path / "run")])  # fmt: skip
    assert (args.reward_output, args.reward_dtype) == ("prob", "float32")
