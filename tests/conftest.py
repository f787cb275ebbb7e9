"""Shared fixtures: offline Hub, synthetic IMDb files, the study's own files when given, tiny models.

Every test runs on IMDb-like text that the tests write themselves (tests/synthetic.py), so the suite
passes on a bare clone. The few tests that compare with the study's own files use `study_data_dir`:
they are skipped, with the reason, unless FDPO_DATA_DIR points at those files, and fail instead of
skipping under FDPO_REQUIRE_STUDY_DATA=1 (CI, which has them).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Before any Hugging Face import: tests never touch the network or W&B.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ.pop("WANDB_API_KEY", None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
STUDY_DATA_DIR = os.environ.get("FDPO_DATA_DIR")  # the study's files, when the caller has them
SCRATCH = Path(tempfile.mkdtemp(prefix="fdpo-tests-"))
# Everything the code writes by default goes to scratch, never into the checkout; the data is synthetic.
for variable, name in (("FDPO_MODELS_DIR", "models"), ("FDPO_RESULTS_DIR", "results"),
                       ("FDPO_DATASETS_DIR", "data"), ("HF_HOME", "hf-home")):  # fmt: skip
    os.environ[variable] = str(SCRATCH / name)

import synthetic  # noqa: E402
from synthetic import scored_file, write_imdb_files  # noqa: E402

os.environ["FDPO_DATA_DIR"] = str(write_imdb_files(SCRATCH / "imdb"))

import config  # noqa: E402  (reads the variables above)

assert (synthetic.PROMPTS_FILE, synthetic.SCORED_FILE) == (config.PROMPTS_FILE, config.SCORED_FILE)


def pytest_unconfigure(config):
    shutil.rmtree(SCRATCH, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Synthetic IMDb files in the study's formats (prompt file and scored file)."""
    return config.DATA_DIR


@pytest.fixture(scope="session")
def study_data_dir() -> Path:
    """The study's own files, for the tests that compare with them."""
    folder = Path(STUDY_DATA_DIR) if STUDY_DATA_DIR else None
    if folder is None or not all(
        (folder / name).is_file() for name in (config.PROMPTS_FILE, config.SCORED_FILE)
    ):
        reason = "needs the study's IMDb files: set FDPO_DATA_DIR to their folder"
        if os.environ.get("FDPO_REQUIRE_STUDY_DATA"):
            pytest.fail(f"{reason} (FDPO_REQUIRE_STUDY_DATA is set)")
        pytest.skip(reason)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, data_dir) -> Path:
    """A tiny GPT-2 and its locally trained BPE tokenizer (built once, ~5 s)."""
    from common.tiny import build_tiny_gpt2

    return build_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2", data_dir)


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A tiny DistilBERT sentiment classifier (random weights) with the tiny BPE tokenizer."""
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    model = DistilBertForSequenceClassification(
        DistilBertConfig(
            vocab_size=len(tokenizer), dim=32, n_layers=1, n_heads=2, hidden_dim=64,
            pad_token_id=tokenizer.pad_token_id, id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
        )
    )  # fmt: skip
    out = tmp_path_factory.mktemp("models") / "tiny-distilbert"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A short real f-DPO run (JSD, LoRA) on the study's pairs: a run directory like any other."""
    from train_dpo.train import parse_args, train

    out = tmp_path_factory.mktemp("results") / "gpt_imdb_jsd_beta1e-1"
    flags = ["--model", str(tiny_model_dir), "--dataset", scored_file(), "--output_dir", str(out), "--divergence", "jsd", "--beta", "0.1",
             "--max_train_pairs", "64", "--max_eval_pairs", "16", "--max_length", "96", "--learning_rate", "5e-3",
             "--num_train_epochs", "2", "--save_strategy", "no", "--seed", "0"]  # fmt: skip
    train(*parse_args(flags))
    return out


@pytest.fixture
def error_line(capsys):
    """`error_line(cli, argv, status=2, alone=False)`: run an entry point that must fail; check its exit
    status and that stderr ends with one `error: ...` line and holds no traceback; return that line.
    `alone`: the line is all of stderr (nothing logged before it, no argparse usage)."""

    def run(cli, argv: list[str], status: int = 2, alone: bool = False) -> str:
        with pytest.raises(SystemExit) as ended:
            cli(argv)
        assert ended.value.code == status
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
        if alone:
            assert len(lines) == 1 and "usage:" not in err, err
        return lines[-1]

    return run


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory, data_dir) -> Path:
    """The study's two files cut to 800 first sentences and 100 scored prompts: a 10x quicker SFT."""
    out = tmp_path_factory.mktemp("sft_data")
    for name, keep in (("positive_reviews_first_sent.json", 800), ("scored_gpt_dataset.json", 100)):
        (out / name).write_text(json.dumps(json.loads((data_dir / name).read_text())[:keep]))
    return out


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that holds `folder`'s write lock until it is killed: a writer at work."""
    code = ("import sys; from common.lock import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()")  # fmt: skip
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "held\n"
    return holder
