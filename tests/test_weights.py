"""Weights: safetensors first, pickle checkpoints only through torch's restricted unpickler (or not at all
under the strict switch), and a repository's own code never runs."""

import ast
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, DistilBertForSequenceClassification

from common.errors import InputError
from common.weights import SAFETENSORS_ONLY_ENV

REPO = Path(__file__).resolve().parents[1]


def pickle_copy(model_dir: Path, out: Path, model_class=AutoModelForCausalLM) -> Path:
    """The same model saved as pytorch_model.bin only (the layout of the study's `lvwerra/*` models)."""
    shutil.copytree(model_dir, out)
    (out / "model.safetensors").unlink()
    # transformers 5 only saves safetensors: the pickle is written with torch, as older savers did.
    torch.save(model_class.from_pretrained(model_dir).state_dict(), out / "pytorch_model.bin")
    assert (out / "pytorch_model.bin").is_file() and not (out / "model.safetensors").exists()
    return out


class Payload:
    """Unpickling this runs a shell command: what a hostile checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def poison(weights_file: Path, marker: Path) -> None:
    """Add a code-running object to a pickle checkpoint, and check that a full unpickle does run it."""
    state = torch.load(weights_file, weights_only=True)
    torch.save({**state, "payload": Payload(marker)}, weights_file)
    torch.load(weights_file, weights_only=False)  # the oracle: the payload is live
    assert marker.exists()
    marker.unlink()


def assert_same_weights(model, reference) -> None:
    for (name, value), expected in zip(
        model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)


@pytest.fixture
def loaders():
    """Every loader of the project that reads a full model: (name, load(path))."""
    from common.models import load_policy
    from common.rewards import ClassifierReward
    from train_dpo.train import load_model_and_tokenizer

    return {
        "train": lambda path: load_model_and_tokenizer(path)[0],
        "policy": lambda path: load_policy(path, "cpu").model,
        "classifier": lambda path: ClassifierReward(path, device="cpu"),
    }


def test_pickle_only_models_load_by_default_exactly_as_their_safetensors_copy(
    tiny_model_dir, tiny_classifier_dir, tmp_path, monkeypatch, loaders
):
    monkeypatch.delenv(SAFETENSORS_ONLY_ENV, raising=False)
    policy = str(pickle_copy(tiny_model_dir, tmp_path / "policy"))
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for name in ("train", "policy"):
        assert_same_weights(loaders[name](policy), reference)
    classifier = str(pickle_copy(tiny_classifier_dir, tmp_path / "clf", DistilBertForSequenceClassification))
    texts = ["a fine film", "a dull film"]
    assert loaders["classifier"](classifier).score(texts) == loaders["classifier"](
        str(tiny_classifier_dir)
    ).score(texts)


def test_the_strict_switch_refuses_pickle_weights(
    tiny_model_dir, tiny_classifier_dir, tmp_path, monkeypatch, loaders
):
    monkeypatch.setenv(SAFETENSORS_ONLY_ENV, "1")
    policy = str(pickle_copy(tiny_model_dir, tmp_path / "policy"))
    classifier = str(pickle_copy(tiny_classifier_dir, tmp_path / "clf", DistilBertForSequenceClassification))
    for name, load in loaders.items():
        with pytest.raises(InputError, match=f"{SAFETENSORS_ONLY_ENV}=1 loads safetensors weights only"):
            load(classifier if name == "classifier" else policy)
    assert_same_weights(
        loaders["train"](str(tiny_model_dir)), AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    )


def test_a_pickle_that_runs_code_is_refused_and_never_runs(
    tiny_model_dir, tiny_classifier_dir, tmp_path, monkeypatch, loaders
):
    monkeypatch.delenv(SAFETENSORS_ONLY_ENV, raising=False)
    marker = tmp_path / "payload-ran"
    policy = pickle_copy(tiny_model_dir, tmp_path / "policy")
    poison(policy / "pytorch_model.bin", marker)
    classifier = pickle_copy(tiny_classifier_dir, tmp_path / "clf", DistilBertForSequenceClassification)
    poison(classifier / "pytorch_model.bin", marker)
    for name, load in loaders.items():
        with pytest.raises(InputError, match="holds objects other than tensors, which are never unpickled"):
            load(str(classifier if name == "classifier" else policy))
        assert not marker.exists(), name


def test_pickle_adapters_load_safely_or_not_at_all(tiny_run_dir, tmp_path, monkeypatch):
    from common.models import load_policy

    monkeypatch.delenv(SAFETENSORS_ONLY_ENV, raising=False)
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_run_dir, adapter, ignore=shutil.ignore_patterns("checkpoint-*"))
    weights = load_file(adapter / "adapter_model.safetensors")
    (adapter / "adapter_model.safetensors").unlink()
    torch.save(weights, adapter / "adapter_model.bin")
    loaded = load_policy(str(adapter), device="cpu")
    assert loaded.is_adapter
    assert_same_weights(loaded.model, load_policy(str(tiny_run_dir), device="cpu").model)

    monkeypatch.setenv(SAFETENSORS_ONLY_ENV, "1")
    with pytest.raises(InputError, match="no adapter_model.safetensors"):
        load_policy(str(adapter), device="cpu")

    monkeypatch.delenv(SAFETENSORS_ONLY_ENV)
    marker = tmp_path / "payload-ran"
    poison(adapter / "adapter_model.bin", marker)
    with pytest.raises(InputError, match="holds objects other than tensors"):
        load_policy(str(adapter), device="cpu")
    assert not marker.exists()


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


def test_a_folder_with_both_formats_says_which_it_loaded(tiny_model_dir, tmp_path, caplog):
    """Safetensors and a pickle of other weights in one folder: the safetensors load, and a warning
    names the file loaded and the one ignored, for a full model and for an adapter."""
    from peft import LoraConfig, get_peft_model

    from common.models import load_policy

    full = tmp_path / "full"
    shutil.copytree(tiny_model_dir, full)
    state = load_file(full / "model.safetensors")
    torch.save({key: torch.zeros_like(value) for key, value in state.items()}, full / "pytorch_model.bin")
    adapter = tmp_path / "adapter"
    lora = LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(adapter)
    lora_state = load_file(adapter / "adapter_model.safetensors")
    torch.save({key: value + 1.0 for key, value in lora_state.items()}, adapter / "adapter_model.bin")

    for folder, loaded, ignored in ((full, "model.safetensors", "pytorch_model.bin"),
                                    (adapter, "adapter_model.safetensors", "adapter_model.bin")):  # fmt: skip
        caplog.clear()
        with caplog.at_level("WARNING", logger="models"):
            policy = load_policy(str(folder), "cpu")
        assert (
            f"{folder} holds both {loaded} and {ignored}: loaded {loaded}, ignored {ignored}" in caplog.text
        )
        weights = policy.model.state_dict()
        if policy.is_adapter:
            weights = {k.replace(".default", ""): v for k, v in weights.items() if "lora_" in k}
            assert weights.keys() == lora_state.keys()
            for key, value in lora_state.items():
                torch.testing.assert_close(weights[key], value, rtol=0, atol=0)
        else:
            torch.testing.assert_close(weights["transformer.wte.weight"], state["transformer.wte.weight"])
    caplog.clear()
    with caplog.at_level("WARNING", logger="models"):
        load_policy(str(tiny_model_dir), "cpu")  # safetensors alone: nothing to say
    assert "holds both" not in caplog.text
