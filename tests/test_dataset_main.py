"""dataset/main.py end to end on the tiny preset: every stage, the saved dataset, resume, bad input."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import load_from_disk

from dataset.main import cli
from train_dpo.data import load_preference_dataset

REPO = Path(__file__).resolve().parents[1]


def tiny_flags(model_dir, out_dir, *extra):
    return ["--preset", "tiny", "--sft_model", str(model_dir), "--out_dir", str(out_dir), *extra]


@pytest.fixture(scope="module")
def built(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "imdb_tiny"
    cli(tiny_flags(tiny_model_dir, out))
    return out


def test_all_stages_build_a_consistent_dataset(built):
    manifest = json.loads((built / "dataset" / "manifest.json").read_text())
    counts = manifest["counts"]
    generations = [json.loads(line) for line in (built / "generations.jsonl").read_text().splitlines()]
    scored = [json.loads(line) for line in (built / "scored.jsonl").read_text().splitlines()]
    assert len(generations) == len(scored) == counts["scored_prompts"] == 48
    assert all(
        len(r["answers"]) == 6 and all(a.startswith(r["prompt"]) for a in r["answers"]) for r in generations
    )
    assert all(len(r["rm_scores"]) == 6 for r in scored)

    hf = load_from_disk(str(built / "dataset" / "hf"))
    train, test = hf["train"], hf["test"]
    assert (len(train), len(test)) == (counts["train_pairs"], counts["test_pairs"])
    assert counts["pairs"] + counts["skipped_pairs"] == 48 * 6
    assert all(c > r for c, r in zip(train["chosen_reward"], train["rejected_reward"], strict=True))
    assert not set(train["prompt"]) & set(test["prompt"])
    eval_prompts = json.loads((built / "dataset" / "eval_prompts.json").read_text())
    assert len(eval_prompts) == 16 and not set(eval_prompts) & (set(train["prompt"]) | set(test["prompt"]))
    assert manifest["reward_model"] == "vader" and manifest["scored_text"] == "continuation"
    assert (
        manifest["decoding"]["method"] == "diverse_beam" and manifest["decoding"]["diversity_penalty"] == 50.0
    )
    jsonl = [json.loads(line) for line in (built / "dataset" / "train.jsonl").read_text().splitlines()]
    assert [row["chosen"] for row in jsonl] == list(train["chosen"])
    # The training script reads what this wrote.
    assert len(load_preference_dataset(str(built / "dataset" / "hf"))["train"]) == len(train)


def test_scored_file_of_the_study_pairs_to_its_dataset(tmp_path, study_data_dir):
    out = tmp_path / "study"
    cli(["--stages", "pair", "--scored_file", str(study_data_dir / "scored_gpt_dataset.json"), "--out_dir", str(out),
         "--keep_degenerate_pairs", "true"])  # fmt: skip
    counts = json.loads((out / "dataset" / "manifest.json").read_text())["counts"]
    assert counts["pairs"] == 3612 and counts["train_pairs"] + counts["test_pairs"] == 3612


def test_rerun_does_nothing_new(built, tiny_model_dir):
    before = (built / "generations.jsonl").read_bytes()
    state = (built / "generations.jsonl.state.json").stat().st_mtime_ns
    cli(tiny_flags(tiny_model_dir, built, "--stages", "generate"))
    assert (built / "generations.jsonl").read_bytes() == before
    assert (built / "generations.jsonl.state.json").stat().st_mtime_ns == state


@pytest.mark.slow
@pytest.mark.parametrize("decoding", ["diverse_beam", "sample"])
def test_generation_killed_midway_resumes_to_the_same_bytes(decoding, tiny_model_dir, tmp_path):
    flags = ["--stages", "prompts,generate", "--num_prompts", "40", "--batch_size", "4", "--max_new_tokens", "16",
             "--decoding", decoding, "--top_k", "50"]  # fmt: skip
    cli(tiny_flags(tiny_model_dir, tmp_path / "straight", *flags))
    expected = (tmp_path / "straight" / "generations.jsonl").read_bytes()

    out = tmp_path / "killed"
    rng = random.Random(decoding)
    for attempt in range(2):  # two kills at seeded random moments after some progress
        command = [sys.executable, "dataset/main.py", *tiny_flags(tiny_model_dir, out, *flags)]
        if attempt:
            command[command.index("prompts,generate")] = "generate"
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        state_path = out / "generations.jsonl.state.json"
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            if state_path.is_file() and json.loads(state_path.read_text())["records"] >= 8 * (attempt + 1):
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        state = json.loads(state_path.read_text())
        assert not state["complete"] and state["records"] < 40, "the kill should land mid-run"
    cli(tiny_flags(tiny_model_dir, out, *flags[:1], "generate", *flags[2:]))
    assert (out / "generations.jsonl").read_bytes() == expected


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--k", "1"], "--k must be >= 2"),
        (["--pairs", "0-6"], "out of range for K=6"),
        (["--pairs", "zero-one"], "--pairs must look like"),
        (["--stages", "prompts,cook"], "unknown stage(s) cook"),
        (["--sft_model", "/nonexistent/model"], "--sft_model /nonexistent/model: no such directory"),
        (["--prompts", "missing.json"], "missing.json: no such prompt file"),
        (["--decoding", "greedy"], "--decoding must be"),
        (["--num_prompts", "20000"], "distinct ones"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_output(flags, message, tiny_model_dir, tmp_path, error_line):
    out = tmp_path / "out"
    assert message in error_line(cli, tiny_flags(tiny_model_dir, out, *flags))
    assert not (out / "generations.jsonl").exists() and not (out / "dataset").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [("[1, 2", "malformed JSON"), ('[{"prompt": "p", "answers": ["a"]}]', "needs prompt, answers and rm_scores"),
     ("[]", "non-empty list"), ('[{"prompt": "p", "answers": ["a", "b"], "rm_scores": [1]}]', "2 answers but 1")],
)  # fmt: skip
def test_bad_scored_files(content, message, tmp_path, error_line):
    path = tmp_path / "scored.json"
    path.write_text(content)
    assert message in error_line(
        cli, ["--stages", "pair", "--scored_file", str(path), "--out_dir", str(tmp_path / "out")]
    )
    assert not (tmp_path / "out" / "dataset").exists()


def test_scores_of_other_generations_are_never_reused(tmp_path):
    from common.appendlog import AppendLog
    from common.errors import InputError
    from common.rewards import VaderReward
    from dataset.score import run_score

    generations, scored = tmp_path / "generations.jsonl", tmp_path / "scored.jsonl"

    def generate(answer: str, overwrite: bool) -> None:
        log = AppendLog(generations, {"decoding": answer})
        log.open(overwrite=overwrite)
        log.append(
            {"idx": i, "prompt": "A film", "answers": [f"A film {answer}", "A film dull"]} for i in range(3)
        )
        log.finish()

    generate("wonderful", overwrite=False)
    first = json.loads(run_score(generations, scored, VaderReward()).read_text().splitlines()[0])
    generate("awful", overwrite=True)  # as many generations as before, but other ones
    with pytest.raises(InputError, match="made with other settings"):
        run_score(generations, scored, VaderReward())
    rescored = json.loads(
        run_score(generations, scored, VaderReward(), overwrite=True).read_text().splitlines()[0]
    )
    assert first["rm_scores"][0] > 0 > rescored["rm_scores"][0]
