"""Every file the project reads, cut to half, emptied or overwritten with other bytes, at every entry point
that reads it: exit status 2, one last `error:` line naming the file, no traceback, no output left behind.

The table below is the class: one row per (entry point, kind of file). Each case copies one valid tree of
inputs (built once for the module), damages one file in the copy, and calls the entry point's `cli` in
process. The flag values the same entry points refuse where they are parsed (`--device`, rloo's `--beta`)
follow, and an evaluation of a run recorded with beta 0, which scores the run without its pair metrics.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from synthetic import PROMPTS_FILE, SCORED_FILE, first_sentences, scored_records

import config
import reproduce
from dataset.main import cli as dataset_cli
from train_dpo.evaluate import cli as evaluate_cli
from train_dpo.generate import cli as generate_cli
from train_dpo.rloo import cli as rloo_cli
from train_dpo.sft import cli as sft_cli
from train_dpo.train import cli as train_cli

CORRUPTIONS = {
    "half": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "garbage": lambda data: random.Random(len(data)).randbytes(max(len(data), 64)),
}


def write_pairs(path: Path, count: int = 12) -> list[dict]:
    rows = [{"prompt": f"The film number {i} was", "chosen": " good and moving.", "rejected": " dull."}
            for i in range(count)]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, tiny_model_dir, tiny_classifier_dir) -> Path:
    """One tree of valid inputs of every kind, each case's copy of which has one file damaged."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("pristine")
    shutil.copytree(tiny_model_dir, root / "model")
    shutil.copytree(tiny_classifier_dir, root / "classifier")
    imdb = root / "imdb"
    imdb.mkdir()
    sentences = first_sentences(60)
    (imdb / PROMPTS_FILE).write_text(json.dumps(sentences))
    (imdb / SCORED_FILE).write_text(json.dumps(scored_records(sentences[:20])))
    shutil.copy(imdb / SCORED_FILE, root / "scored.json")
    rows = write_pairs(root / "pairs.jsonl")
    (root / "pairs.json").write_text(json.dumps(rows))
    pd.DataFrame(rows).to_parquet(root / "pairs.parquet")
    Dataset.from_list(rows).save_to_disk(str(root / "pairs_hf"))
    (root / "eval_prompts.json").write_text(json.dumps(sentences[40:44]))
    (root / "config.yaml").write_text(
        "{beta: 0.5, seed: 3, learning_rate: 0.001}\n"
    )  # flow style: half is no YAML
    stage = root / "stage"  # a dataset folder whose prompts stage is done
    stage.mkdir()
    (stage / "prompts.json").write_text(json.dumps({"train": sentences[:8], "eval": sentences[8:10]}))

    # A LoRA run folder as train.py leaves one: the adapter and its record.
    model = AutoModelForCausalLM.from_pretrained(root / "model")
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM")
    )
    peft_model.save_pretrained(root / "run")
    record = {"training": {"loss_type": "sigmoid", "divergence": "jsd", "beta": 0.1, "alpha": None,
                           "learning_rate": 1e-3, "seed": 0, "max_length": 64},
              "script": {"dataset": str(root / "pairs.jsonl"), "test_size": 0.2, "max_prompt_tokens": 128}}  # fmt: skip
    (root / "run" / "run_config.json").write_text(json.dumps(record))
    generate_cli(["--models", str(root / "run"), "--prompts", str(root / "eval_prompts.json"), "--samples", "2",
                  "--max_new_tokens", "4", "--stack_size", "1", "--out_dir", str(root / "gen")])  # fmt: skip
    assert {path.name for path in (root / "gen").iterdir()} == {"run.csv", "run.json"}
    return root


def relocate(root: Path, pristine: Path) -> None:
    """Point the copied records at the copied folders (the adapter's base, the CSV's model)."""
    for path, key in (
        (root / "run" / "adapter_config.json", "base_model_name_or_path"),
        (root / "gen" / "run.json", "model"),
    ):
        record = json.loads(path.read_text())
        record[key] = record[key].replace(str(pristine), str(root))
        path.write_text(json.dumps(record))


@dataclass
class Case:
    entry: str  # the entry point, as a test id
    cli: Callable
    target: str  # the damaged file, relative to the copied tree
    argv: Callable[[Path, Path], list[str]]  # (tree, out) -> flags
    data_dir: bool = False  # reads the IMDb folder as FDPO_DATA_DIR
    out_exists: bool = False  # `out` is an input folder too, which must stay unchanged
    corruptions: tuple[str, ...] = tuple(CORRUPTIONS)


def dataset_prompts(tree: Path, out: Path, *flags: str) -> list[str]:
    return ["--stages", "prompts", "--sft_model", str(tree / "model"), "--num_prompts", "4",
            "--num_eval_prompts", "2", "--out_dir", str(out), *flags]  # fmt: skip


def train_argv(tree: Path, out: Path, dataset: str = "pairs.jsonl", model: str = "model") -> list[str]:
    return ["--model", str(tree / model), "--dataset", str(tree / dataset), "--output_dir", str(out),
            "--max_steps", "1", "--max_length", "64", "--save_strategy", "no"]  # fmt: skip


def rloo_argv(tree: Path, out: Path, reward: str = "vader") -> list[str]:
    return ["--preset", "tiny", "--model", str(tree / "model"), "--dataset", str(tree / "pairs.jsonl"),
            "--output_dir", str(out), "--max_steps", "1", "--max_completion_length", "4", "--num_generations", "2",
            "--per_device_train_batch_size", "2", "--reward_model", reward]  # fmt: skip


def generate_argv(tree: Path, out: Path, model: str = "run") -> list[str]:
    return ["--models", str(tree / model), "--prompts", str(tree / "eval_prompts.json"), "--samples", "1",
            "--max_new_tokens", "4", "--out_dir", str(out)]  # fmt: skip


def evaluate_argv(tree: Path, out: Path, reward: str = "vader") -> list[str]:
    return ["--generations", str(tree / "gen" / "run.csv"), "--reward_model", reward, "--tokenizer",
            str(tree / "model"), "--metrics", "reward", "length", "kl", "--out_dir", str(out)]  # fmt: skip


MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
)
CLASSIFIER_FILES = ("config.json", "model.safetensors", "tokenizer.json")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
DATASETS = ("pairs.jsonl", "pairs.json", "pairs.parquet", "scored.json", "pairs_hf/dataset_info.json",
            "pairs_hf/state.json", "pairs_hf/data-00000-of-00001.arrow")  # fmt: skip
NOT_EMPTY = ("half", "garbage")  # an empty YAML file is a valid config that sets nothing

CASES = [
    # dataset/main.py: the prompt file (given, or FDPO_DATA_DIR's), the SFT model, the reward model, the
    # scored file, the prompts stage's record, the YAML config.
    Case(
        "dataset",
        dataset_cli,
        "eval_prompts.json",
        lambda t, o: dataset_prompts(t, o, "--prompts", str(t / "eval_prompts.json")),
    ),
    Case("dataset", dataset_cli, f"imdb/{PROMPTS_FILE}", lambda t, o: dataset_prompts(t, o), data_dir=True),
    *(
        Case("dataset", dataset_cli, f"model/{name}", lambda t, o: dataset_prompts(t, o))
        for name in MODEL_FILES
    ),
    *(
        Case(
            "dataset",
            dataset_cli,
            f"classifier/{name}",
            lambda t, o: ["--stages", "score", "--reward_model", str(t / "classifier"), "--out_dir", str(o)],
        )
        for name in CLASSIFIER_FILES
    ),  # fmt: skip
    Case(
        "dataset",
        dataset_cli,
        "scored.json",
        lambda t, o: ["--stages", "pair", "--scored_file", str(t / "scored.json"), "--out_dir", str(o)],
    ),  # fmt: skip
    Case(
        "dataset",
        dataset_cli,
        "stage/prompts.json",
        lambda t, o: ["--stages", "generate", "--sft_model", str(t / "model"), "--out_dir", str(o)],
        out_exists=True,
    ),  # fmt: skip
    Case(
        "dataset",
        dataset_cli,
        "config.yaml",
        lambda t, o: ["--config", str(t / "config.yaml"), "--out_dir", str(o)],
        corruptions=NOT_EMPTY,
    ),  # fmt: skip
    # train_dpo/train.py: the preference data in each accepted format, the policy, the YAML config.
    *(
        Case("train", train_cli, name, lambda t, o, name=name: train_argv(t, o, name.split("/")[0]))
        for name in DATASETS
    ),
    *(Case("train", train_cli, f"model/{name}", train_argv) for name in MODEL_FILES),
    Case(
        "train",
        train_cli,
        "config.yaml",
        lambda t, o: ["--config", str(t / "config.yaml"), *train_argv(t, o)],
        corruptions=NOT_EMPTY,
    ),  # fmt: skip
    # train_dpo/rloo.py: the prompts' pairs, the policy, the reward model.
    Case("rloo", rloo_cli, "pairs.jsonl", rloo_argv),
    *(
        Case("rloo", rloo_cli, f"model/{name}", rloo_argv)
        for name in ("config.json", "model.safetensors", "tokenizer.json")
    ),
    *(
        Case("rloo", rloo_cli, f"classifier/{name}", lambda t, o: rloo_argv(t, o, str(t / "classifier")))
        for name in CLASSIFIER_FILES
    ),  # fmt: skip
    # train_dpo/sft.py: the study's two IMDb files, given by --data_dir and as FDPO_DATA_DIR.
    *(
        Case(
            "sft",
            sft_cli,
            f"imdb/{name}",
            lambda t, o: ["--data_dir", str(t / "imdb"), "--out_dir", str(o), "--epochs", "0.01"],
        )
        for name in (PROMPTS_FILE, SCORED_FILE)
    ),  # fmt: skip
    Case(
        "sft",
        sft_cli,
        f"imdb/{SCORED_FILE}",
        lambda t, o: ["--out_dir", str(o), "--epochs", "0.01"],
        data_dir=True,
    ),
    # train_dpo/generate.py: the prompts, a run's adapter and its base model, a full model.
    Case("generate", generate_cli, "eval_prompts.json", generate_argv),
    *(Case("generate", generate_cli, f"run/{name}", generate_argv) for name in ADAPTER_FILES),
    *(
        Case(
            "generate", generate_cli, f"run/{name}", lambda t, o: [*generate_argv(t, o), "--stack_size", "1"]
        )
        for name in ADAPTER_FILES
    ),  # fmt: skip
    *(Case("generate", generate_cli, f"model/{name}", generate_argv) for name in MODEL_FILES),
    *(
        Case("generate", generate_cli, f"model/{name}", lambda t, o: generate_argv(t, o, "model"))
        for name in MODEL_FILES
    ),
    # train_dpo/evaluate.py: the CSV, the record beside it, the run it names (record, adapter, base), the
    # tokenizer and the reward model.
    *(
        Case("evaluate", evaluate_cli, name, evaluate_argv)
        for name in (
            "gen/run.csv",
            "gen/run.json",
            "run/run_config.json",
            *(f"run/{f}" for f in ADAPTER_FILES),
            "model/model.safetensors",
            "model/tokenizer.json",
        )
    ),  # fmt: skip
    *(
        Case(
            "evaluate",
            evaluate_cli,
            f"classifier/{name}",
            lambda t, o: evaluate_argv(t, o, str(t / "classifier")),
        )
        for name in CLASSIFIER_FILES
    ),  # fmt: skip
    # reproduce.py: the IMDb folder it plans from, dry run or not.
    *(
        Case(
            "reproduce",
            reproduce.cli,
            f"imdb/{name}",
            lambda t, o, dry=dry: ["--preset", "tiny", "--results_dir", str(o), *dry],
            data_dir=True,
        )
        for name in (PROMPTS_FILE, SCORED_FILE)
        for dry in (["--dry-run"], [])
    ),  # fmt: skip
]


def snapshot(folder: Path) -> dict[str, bytes] | None:
    if not folder.exists():
        return None
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize(
    ("case", "corruption"),
    [(case, corruption) for case in CASES for corruption in case.corruptions],
    ids=lambda value: value if isinstance(value, str) else f"{value.entry}:{value.target}",
)
def test_a_damaged_input_file_is_one_error_line_naming_it(
    case, corruption, pristine, tmp_path, monkeypatch, capsys
):
    tree = tmp_path / "in"
    shutil.copytree(pristine, tree)
    relocate(tree, pristine)
    target = tree / case.target
    target.write_bytes(CORRUPTIONS[corruption](target.read_bytes()))
    if case.data_dir:
        monkeypatch.setattr(config, "DATA_DIR", tree / "imdb")
    out = tree / "stage" if case.out_exists else tmp_path / "out"
    before = snapshot(out)

    with pytest.raises(SystemExit) as ended:
        case.cli(case.argv(tree, out))

    err = capsys.readouterr().err
    assert ended.value.code == 2, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(target) in last, err
    assert snapshot(out) == before
    if not case.out_exists:
        assert not out.exists() and not list(tmp_path.glob(".out*")), list(tmp_path.iterdir())


def test_a_generation_csv_cut_at_a_row_boundary_disagrees_with_its_record(pristine, tmp_path, error_line):
    """A CSV cut short between rows parses; the row count generate.py recorded beside it tells."""
    tree = tmp_path / "in"
    shutil.copytree(pristine, tree)
    relocate(tree, pristine)
    csv = tree / "gen" / "run.csv"
    csv.write_text("".join(csv.read_text().splitlines(keepends=True)[:3]))  # the header and two of 8 rows
    line = error_line(evaluate_cli, evaluate_argv(tree, tmp_path / "out"))
    assert line == f"error: {csv}: 2 rows, but run.json records 8 (cut short?)"
    assert not (tmp_path / "out").exists()


# Flag values the entry points refuse where they are parsed, before anything is read or written.
NO_GPU = "this machine has no CUDA GPU"
DEVICE_CASES = [
    (dataset_cli, ["--out_dir", "{out}"]),
    (generate_cli, ["--models", "lvwerra/gpt2-imdb", "--out_dir", "{out}"]),
    (evaluate_cli, ["--generations", "{out}", "--out_dir", "{out}"]),
]


@pytest.mark.parametrize(("cli", "flags"), DEVICE_CASES, ids=["dataset", "generate", "evaluate"])
@pytest.mark.parametrize(
    ("device", "message"),
    [("cpux", "--device cpux: not a device; use cpu, cuda or cuda:N"), ("gpu", "--device gpu: not a device"),
     pytest.param("cuda", f"--device cuda: {NO_GPU}", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),
     pytest.param("cuda:0", f"--device cuda:0: {NO_GPU}", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU"))],
)  # fmt: skip
def test_a_device_this_machine_lacks_is_refused_where_it_is_parsed(
    cli, flags, device, message, tmp_path, error_line
):
    out = tmp_path / "out"
    line = error_line(cli, [arg.format(out=out) for arg in flags] + ["--device", device], alone=True)
    assert line == f"error: {message}" if device == "cpux" else message in line
    assert not out.exists()


@pytest.mark.parametrize("beta", ["0", "-1", "nan", "inf"])
def test_an_rloo_beta_that_is_not_a_finite_positive_number_is_refused(beta, tmp_path, error_line):
    out = tmp_path / "run"
    line = error_line(rloo_cli, ["--beta", beta, "--output_dir", str(out)], alone=True)
    assert line == f"error: --beta must be a finite number > 0, got {float(beta)}"
    assert not out.exists()


def test_a_run_recorded_with_beta_zero_is_evaluated_without_its_pair_metrics(pristine, tmp_path, caplog):
    """A record from before rloo.py refused beta 0: its other metrics are scored, its pair metrics skipped."""
    tree = tmp_path / "in"
    shutil.copytree(pristine, tree)
    relocate(tree, pristine)
    record = json.loads((tree / "run" / "run_config.json").read_text())
    record["training"].update(loss_type="rloo", divergence="reverse_kl", beta=0.0)
    (tree / "run" / "run_config.json").write_text(json.dumps(record))
    with caplog.at_level("WARNING", logger="evaluate"):
        evaluate_cli([*evaluate_argv(tree, tmp_path / "eval"), "--metrics", "reward", "kl", "preference"])
    results = pd.read_csv(tmp_path / "eval" / "results.csv")
    assert results["beta"].tolist() == [0.0] and results["kl"].notna().all()
    assert "pref_accuracy" not in results
    assert "run: preference not computed: its run_config.json records beta 0.0" in caplog.text
