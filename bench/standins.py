"""Stand-ins for the study's three Hub models, in their Hub layout, with random weights.

`lvwerra/gpt2-imdb`, `lvwerra/distilbert-imdb` and `siebert/sentiment-roberta-large-english` ship pickle
weights (`pytorch_model.bin`). The stand-ins do too: GPT-2 124M with a 50,257-token vocabulary, a
DistilBERT sentiment classifier with IMDb's labels and a RoBERTa-large-sized one (24 layers, hidden 1024,
16 heads), with tokenizers trained here on the IMDb texts. Speed and memory do not depend on the weights,
so the paper preset runs on these as it would on the study's models. `tiny=True` keeps each layout and
vocabulary but shrinks the layers and hidden size, for a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer, Tokenizer, processors
from transformers import (
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from common import imdb
from common.tiny import EOS, train_tokenizer

IMDB_LABELS = {0: "NEGATIVE", 1: "POSITIVE"}  # distilbert-imdb's and sentiment-roberta-large-english's

# tiny=True: a few layers of a small hidden size, the vocabularies kept (the Hub layout is what is tested).
TINY_GPT2 = {"n_layer": 2, "n_head": 2, "n_embd": 64}
TINY_DISTILBERT = {"n_layers": 2, "n_heads": 2, "dim": 64, "hidden_dim": 128}
TINY_ROBERTA = {"num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 64, "intermediate_size": 128}
# siebert/sentiment-roberta-large-english's architecture (355 M parameters).
ROBERTA_LARGE = {"num_hidden_layers": 24, "num_attention_heads": 16, "hidden_size": 1024,
                 "intermediate_size": 4096, "vocab_size": 50265, "max_position_embeddings": 514,
                 "type_vocab_size": 1, "layer_norm_eps": 1e-5}  # fmt: skip
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0-4, as RoBERTa numbers them


def full_size_tokenizer(vocab_size: int, data_dir: Path | str | None = None) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained here, its vocabulary filled up to GPT-2's size with tokens no merge makes.

    A random GPT-2 samples across its whole vocabulary: without the filler, most ids would decode to
    nothing and every continuation would be empty.
    """
    trained = json.loads(train_tokenizer(imdb.texts(data_dir)).backend_tokenizer.to_str())
    vocab = trained["model"]["vocab"]
    vocab.update({f"unused{i}": i for i in range(len(vocab), vocab_size)})
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(trained)),
        bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS,
    )  # fmt: skip
    assert len(tokenizer) == vocab_size
    return tokenizer


def save_pickle_only(model, out: Path) -> None:
    """The model as `pytorch_model.bin` and its config, no safetensors (transformers 5 only saves those)."""
    model.save_pretrained(out)
    (out / "model.safetensors").unlink()
    torch.save(model.state_dict(), out / "pytorch_model.bin")


def gpt2_imdb_standin(out: Path, tiny: bool = False, data_dir: Path | str | None = None) -> Path:
    """gpt2-imdb's layout: GPT-2 124M (or `TINY_GPT2`), a 50,257-token vocabulary, pickle weights."""
    model_config = GPT2Config(**(TINY_GPT2 if tiny else {}))
    tokenizer = full_size_tokenizer(model_config.vocab_size, data_dir)
    model_config.bos_token_id = model_config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(0)
    model = GPT2LMHeadModel(model_config)
    assert tiny or 124_000_000 < model.num_parameters() < 125_000_000  # GPT-2 small, as gpt2-imdb
    save_pickle_only(model, out)
    tokenizer.save_pretrained(out)
    return out


def distilbert_imdb_standin(
    out: Path, seed: int = 0, tiny: bool = False, data_dir: Path | str | None = None
) -> Path:
    """distilbert-imdb's layout: DistilBERT (66 M parameters, or `TINY_DISTILBERT`) with IMDb's labels."""
    out.mkdir(parents=True)
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(imdb.texts(data_dir), vocab_size=4000)
    wordpiece.save_model(str(out))
    PreTrainedTokenizerFast(
        tokenizer_object=wordpiece._tokenizer, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
        cls_token="[CLS]", mask_token="[MASK]",
    ).save_pretrained(out)  # fmt: skip
    torch.manual_seed(seed)
    model = DistilBertForSequenceClassification(
        DistilBertConfig(
            id2label=IMDB_LABELS,
            label2id={name: i for i, name in IMDB_LABELS.items()},
            **(TINY_DISTILBERT if tiny else {}),
        )
    )
    save_pickle_only(model, out)
    return out


def roberta_large_standin(
    out: Path, seed: int = 1, tiny: bool = False, data_dir: Path | str | None = None
) -> Path:
    """sentiment-roberta-large-english's layout: RoBERTa-large (355 M parameters, or `TINY_ROBERTA`) with
    IMDb's labels and a byte-level BPE tokenizer that wraps each text in <s> ... </s>."""
    out.mkdir(parents=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        imdb.texts(data_dir), vocab_size=8000, min_frequency=2, special_tokens=ROBERTA_SPECIALS
    )
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(bpe.to_str()), model_max_length=512, bos_token="<s>",
        eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
        mask_token="<mask>",
    ).save_pretrained(out)  # fmt: skip
    torch.manual_seed(seed)
    labels = {"id2label": IMDB_LABELS, "label2id": {name: i for i, name in IMDB_LABELS.items()}}
    model_config = RobertaConfig(**{**ROBERTA_LARGE, **(TINY_ROBERTA if tiny else {})}, **labels,
                                 pad_token_id=1, bos_token_id=0, eos_token_id=2)  # fmt: skip
    model = RobertaForSequenceClassification(model_config)
    assert tiny or 355_000_000 < model.num_parameters() < 356_000_000  # RoBERTa-large with a 2-label head
    save_pickle_only(model, out)
    return out
