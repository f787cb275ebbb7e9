"""`--help` comes from the stored texts in common/help_text/, which must match the live parsers, and is
printed before torch, transformers or TRL is imported (bench/help_time.py times it)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.help import TEXT_DIR, help_text

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {  # the command after `python` -> the module whose text it prints
    "reproduce.py": "reproduce",
    "dataset/main.py": "dataset.main",
    "train_dpo/train.py": "train_dpo.train",
    "train_dpo/sft.py": "train_dpo.sft",
    "train_dpo/generate.py": "train_dpo.generate",
    "train_dpo/evaluate.py": "train_dpo.evaluate",
    "train_dpo/stack.py": "train_dpo.stack",
    "train_dpo/rloo.py": "train_dpo.rloo",
    "-m train_dpo.train": "train_dpo.train",
    "-m train_dpo.stack": "train_dpo.stack",
    "-m dataset.main": "dataset.main",
}
HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")


def test_the_stored_help_matches_the_live_parsers():
    """Renamed, added or re-documented flags, or changed defaults, make this fail until
    `poetry run python scripts/build_help.py` is rerun."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FDPO_")}
    done = subprocess.run(
        [sys.executable, "scripts/build_help.py", "--check"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


@pytest.mark.parametrize("command", ENTRY_POINTS)
@pytest.mark.parametrize("flag", ["-h", "--help", "--help-all"])
def test_help_is_the_stored_text_printed_before_any_heavy_import(command, flag):
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *command.split(), "--preset", "tiny", flag],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    module = ENTRY_POINTS[command]
    wanted = TEXT_DIR / f"{module}.all.txt" if flag == "--help-all" else TEXT_DIR / f"{module}.txt"
    wanted = wanted if wanted.is_file() else TEXT_DIR / f"{module}.txt"
    assert done.stdout == wanted.read_text(encoding="utf-8")
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert imported & set(HEAVY) == set()


def test_only_the_trainers_have_a_longer_help_all():
    assert sorted(path.name for path in TEXT_DIR.glob("*.all.txt")) == [
        "train_dpo.rloo.all.txt",
        "train_dpo.train.all.txt",
    ]
    short = (TEXT_DIR / "train_dpo.train.txt").read_text(encoding="utf-8")
    full = (TEXT_DIR / "train_dpo.train.all.txt").read_text(encoding="utf-8")
    # The project's flags; TRL's behind --help-all (both are in the examples).
    assert "\n  --divergence " in short and "\n  --beta " not in short and "\n  --beta " in full
    assert "Inherited from trl.DPOConfig:" in full
    assert "Inherited from transformers.TrainingArguments:" in full
    assert full.index("--divergence") < full.index("Inherited from")


def test_help_text_reads_the_flags_as_argparse_would():
    assert help_text("train_dpo.train", ["--beta", "1"]) is None
    assert help_text("train_dpo.train", ["--", "--help"]) is None  # after `--`, not a flag
    assert help_text("no.such.module", ["--help"]) is None  # argparse answers, slowly but correctly
    # sft.py inherits no flags: --help-all prints its --help.
    assert help_text("train_dpo.sft", ["--help-all"]) == help_text("train_dpo.sft", ["-h"])


def test_importing_an_entry_point_with_help_on_the_command_line_does_nothing():
    """Only the program being run answers: a script that imports an entry module is not cut short."""
    probe = "import sys; sys.argv.append('--help'); import train_dpo.sft; print('imported')"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "imported\n"), done.stderr[-2000:]
