"""The paper preset end to end, against local stand-ins for the study's two Hub models in their Hub layout.

`lvwerra/gpt2-imdb` and `lvwerra/distilbert-imdb` ship pickle weights (`pytorch_model.bin`). The stand-ins
do too: a GPT-2 124M config and a DistilBERT sentiment classifier with IMDb's labels, random weights and
tokenizers trained here. The work is shrunk by flags (a few prompts and tokens, one run, two steps), so this
is the only check the paper preset gets before a user runs it on a GPU.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from tokenizers import BertWordPieceTokenizer, Tokenizer
from transformers import (
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from common import imdb
from common.tiny import EOS, train_tokenizer

REPO = Path(__file__).resolve().parents[1]


def full_size_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained here, its vocabulary filled up to GPT-2's size with tokens no merge makes.

    A random GPT-2 samples across its whole vocabulary: without the filler, most ids would decode to
    nothing and every continuation would be empty.
    """
    trained = json.loads(train_tokenizer(imdb.texts()).backend_tokenizer.to_str())
    vocab = trained["model"]["vocab"]
    vocab.update({f"unused{i}": i for i in range(len(vocab), vocab_size)})
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(trained)),
                                        bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS)  # fmt: skip
    assert len(tokenizer) == vocab_size
    return tokenizer


def save_pickle_only(model, out: Path) -> None:
    """The model as `pytorch_model.bin` and its config, no safetensors (transformers 5 only saves those)."""
    model.save_pretrained(out)
    (out / "model.safetensors").unlink()
    torch.save(model.state_dict(), out / "pytorch_model.bin")


def gpt2_imdb_standin(out: Path) -> Path:
    model_config = GPT2Config()
    tokenizer = full_size_tokenizer(model_config.vocab_size)
    model_config.bos_token_id = model_config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(0)
    model = GPT2LMHeadModel(model_config)
    assert 124_000_000 < model.num_parameters() < 125_000_000  # GPT-2 small, as gpt2-imdb
    save_pickle_only(model, out)
    tokenizer.save_pretrained(out)
    return out


def distilbert_imdb_standin(out: Path, seed: int = 0) -> Path:
    out.mkdir(parents=True)
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(imdb.texts(), vocab_size=4000)
    wordpiece.save_model(str(out))
    PreTrainedTokenizerFast(
        tokenizer_object=wordpiece._tokenizer, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
        cls_token="[CLS]", mask_token="[MASK]",
    ).save_pretrained(out)  # fmt: skip
    torch.manual_seed(seed)
    labels = {0: "NEGATIVE", 1: "POSITIVE"}
    model = DistilBertForSequenceClassification(
        DistilBertConfig(id2label=labels, label2id={name: i for i, name in labels.items()})
    )
    save_pickle_only(model, out)
    return out


@pytest.mark.slow
def test_the_paper_preset_runs_end_to_end_on_pickle_only_models(tmp_path, data_dir):
    policy = gpt2_imdb_standin(tmp_path / "hub" / "gpt2-imdb")
    reward = distilbert_imdb_standin(tmp_path / "hub" / "distilbert-imdb")
    gold = distilbert_imdb_standin(tmp_path / "hub" / "sentiment-roberta-large-english", seed=1)
    assert not list((tmp_path / "hub").rglob("*.safetensors"))
    env = {**os.environ, "FDPO_SFT_MODEL": str(policy), "FDPO_REWARD_MODEL": str(reward), "FDPO_GOLD_REWARD_MODEL": str(gold),
           "FDPO_DATA_DIR": str(data_dir), "FDPO_MODELS_DIR": str(tmp_path / "models")}  # fmt: skip
    env.pop("FDPO_SAFETENSORS_ONLY", None)
    root = tmp_path / "paper"
    command = [sys.executable, "reproduce.py", "--preset", "paper", "--results_dir", str(root),
               "--only", "gpt_imdb_sigmoid_beta1",
               "--dataset_args", "--num_prompts 6 --num_eval_prompts 3 --max_new_tokens 6 --batch_size 6",
               "--train_args", "--max_steps 2 --per_device_train_batch_size 2 --per_device_eval_batch_size 2 "
                               "--max_eval_pairs 2 --logging_steps 1",
               "--generate_args", "--samples 2 --max_new_tokens 6",
               "--evaluate_args", "--max_test_pairs 4"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (
        f"base policy: found {policy}" in result.stdout and f"reward model: found {reward}" in result.stdout
    )
    table = pd.read_csv(root / "eval" / "results.csv").set_index("model")
    assert list(table.index) == ["gpt2-imdb", "gpt_imdb_sigmoid_beta1"]
    assert table.loc["gpt_imdb_sigmoid_beta1", "reward_model"].startswith(f"{reward}:logit")
    assert table["reward"].notna().all() and table.loc["gpt_imdb_sigmoid_beta1", "kl"] != 0
    assert table.loc["gpt_imdb_sigmoid_beta1", "gold_reward_model"].startswith(f"{gold}:logit")
    assert table["gold_reward"].notna().all()
    assert (root / "results.ipynb").is_file()
