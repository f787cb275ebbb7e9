"""A tiny GPT-2 and BPE tokenizer built from IMDb text, for CPU runs and tests.

No model is downloaded: the tokenizer is trained with `tokenizers` on IMDb text (`common.imdb.texts`:
the Hub's reviews, or the study's local files), and the model is a randomly initialised GPT-2 from a
config. Both are saved as an ordinary Hugging Face model directory, so every loader in the project
treats it like a Hub id.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer, Tokenizer
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

import config
from common import imdb
from common.atomic import check_replaceable, replace_dir, staging_dir

EOS = "<|endoftext|>"
VOCAB_SIZE = 2048  # BPE merges learned from ~1.2M tokens of reviews; small enough for 2 CPU cores
TINY_MANIFEST = "tiny_manifest.json"  # marks a folder this module built, which a rebuild may replace
TINY_ARCH = {"n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 320}  # ~0.3M params + embeddings


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE tokenizer with `<|endoftext|>` as bos, eos and pad.

    The generic fast tokenizer wraps the trained one as it is (transformers 5's GPT2Tokenizer builds its
    own pipeline from a vocabulary and merges instead).
    """
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(bpe.to_str()), bos_token=EOS, eos_token=EOS, unk_token=EOS
    )
    tokenizer.pad_token = EOS
    return tokenizer


def build_tiny_gpt2(out_dir: Path | str, data_dir: Path | str | None = None, seed: int = 0) -> Path:
    """Train the tokenizer, initialise the model, and save both to `out_dir` (written atomically)."""
    out_dir = Path(out_dir)
    check_replaceable(out_dir, TINY_MANIFEST)
    tokenizer = train_tokenizer(imdb.texts(data_dir))
    model_config = GPT2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_ARCH,
    )
    # The init draws from its own seed, and the caller's generator is left as it was: a run that seeded
    # itself and then builds the model on first use must train exactly as one that finds it cached.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(model_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with staging_dir(out_dir) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / TINY_MANIFEST).write_text(json.dumps({"arch": TINY_ARCH, "seed": seed}, indent=2))
        replace_dir(staging, out_dir, TINY_MANIFEST)
    return out_dir


def ensure_tiny_gpt2(out_dir: Path | str | None = None, data_dir: Path | str | None = None) -> Path:
    """The cached tiny model directory, built on first use; by default one folder per text it is built from
    (`imdb.text_fingerprint`): changed files under FDPO_DATA_DIR give a new tokenizer, never a stale one."""
    source = imdb.text_fingerprint(data_dir).removeprefix("sha256:")[:12]
    out_dir = Path(out_dir or config.MODELS_DIR / f"tiny-gpt2-{source.replace('/', '-')}")
    if not (out_dir / "model.safetensors").is_file():
        build_tiny_gpt2(out_dir, data_dir)
    return out_dir
