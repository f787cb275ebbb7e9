"""Weights load from safetensors only unless the user opts in, and a repository's own code never runs."""

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, DistilBertForSequenceClassification

from errors import InputError
from weights import ALLOW_PICKLE_ENV

REPO = Path(__file__).resolve().parents[1]


def pickle_copy(model_dir: Path, out: Path, model_class=AutoModelForCausalLM) -> Path:
    """The same model saved as pytorch_model.bin only."""
    shutil.copytree(model_dir, out)
    (out / "model.safetensors").unlink()
    model_class.from_pretrained(model_dir).save_pretrained(out, safe_serialization=False)
    assert (out / "pytorch_model.bin").is_file() and not (out / "model.safetensors").exists()
    return out


def test_pickle_only_models_are_refused_unless_opted_in(
    tiny_model_dir, tiny_classifier_dir, tmp_path, monkeypatch
):
    from dataset.generate import load_policy as load_generator
    from dataset.rewards import ClassifierReward
    from train_dpo.train import load_model_and_tokenizer

    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)
    policy = str(pickle_copy(tiny_model_dir, tmp_path / "policy"))
    classifier = str(pickle_copy(tiny_classifier_dir, tmp_path / "clf", DistilBertForSequenceClassification))
    loaders = [lambda: load_model_and_tokenizer(policy), lambda: load_generator(policy, "cpu"),
               lambda: ClassifierReward(classifier, device="cpu")]  # fmt: skip
    for load in loaders:
        with pytest.raises(
            InputError, match=f"only safetensors weights are loaded; set {ALLOW_PICKLE_ENV}=1"
        ):
            load()

    monkeypatch.setenv(ALLOW_PICKLE_ENV, "1")
    model, _ = load_model_and_tokenizer(policy)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for (name, value), expected in zip(
        model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)
    generator = load_generator(policy, "cpu")[0]
    for (name, value), expected in zip(
        generator.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)
    texts = ["a fine film", "a dull film"]
    assert ClassifierReward(classifier, device="cpu").score(texts) == ClassifierReward(
        str(tiny_classifier_dir), device="cpu"
    ).score(texts)


def test_pickle_adapters_are_refused_unless_opted_in(tiny_run_dir, tmp_path, monkeypatch):
    from train_dpo.models import load_policy

    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_run_dir, adapter, ignore=shutil.ignore_patterns("checkpoint-*"))
    weights = load_file(adapter / "adapter_model.safetensors")
    (adapter / "adapter_model.safetensors").unlink()
    torch.save(weights, adapter / "adapter_model.bin")
    with pytest.raises(InputError, match="no adapter_model.safetensors"):
        load_policy(str(adapter), device="cpu")

    monkeypatch.setenv(ALLOW_PICKLE_ENV, "1")
    loaded = load_policy(str(adapter), device="cpu")
    assert loaded.is_adapter
    reference = load_policy(str(tiny_run_dir), device="cpu")
    for (name, value), expected in zip(
        loaded.model.state_dict().items(), reference.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)


def test_a_repository_that_needs_its_own_code_is_refused_and_its_code_never_runs(
    tiny_model_dir, tmp_path, error_line
):
    from train_dpo.train import cli

    evil = tmp_path / "evil-model"
    shutil.copytree(tiny_model_dir, evil)
    marker = tmp_path / "code-ran"
    config = json.loads((evil / "config.json").read_text())
    config.update(
        model_type="evil_gpt2",
        auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"},
    )
    (evil / "config.json").write_text(json.dumps(config))
    (evil / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    line = error_line(
        cli, ["--model", str(evil), "--output_dir", str(tmp_path / "run"), "--max_steps", "1"], alone=True
    )
    assert line.startswith(f"error: --model {evil}: cannot load")
    assert not marker.exists()


def test_no_code_of_the_project_turns_on_trust_remote_code():
    """Wherever the project's code names trust_remote_code (a keyword or a dict key), the value is False."""
    sources = [path for path in REPO.rglob("*.py") if not {"tests", ".venv"} & set(path.parts)]
    assert len(sources) > 20
    named = 0
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            values = []
            if isinstance(node, ast.Call):
                values = [k.value for k in node.keywords if k.arg == "trust_remote_code"]
            elif isinstance(node, ast.Dict):
                keys = [isinstance(k, ast.Constant) and k.value == "trust_remote_code" for k in node.keys]
                values = [value for key, value in zip(keys, node.values, strict=True) if key]
            for value in values:
                named += 1
                assert isinstance(value, ast.Constant) and value.value is False, f"{path}:{value.lineno}"
    assert named >= 5  # the loaders do name it (False), so the walk finds them
