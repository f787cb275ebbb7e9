"""How continuations are decoded, for the dataset's SFT generations and the eval generations alike.

Two decodings: sampling (the paper's) and the study's diverse beam search (6 groups, diversity
penalty 50, no repeated bigrams, +/-1.5 bias on sentiment words, HTML/markup/URL tokens banned).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from transformers import (
    LogitsProcessorList,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    SequenceBiasLogitsProcessor,
)

from common.diverse_beam import diverse_beam_search
from common.errors import InputError

# The study nudged generations towards sentiment words (both ways, so both good and bad reviews
# appear) and away from markup. Words are biased as whole tokens with a leading space.
POSITIVE_WORDS = ("good", "great", "excellent", "amazing", "wonderful", "best", "love", "loved", "beautiful",
                  "brilliant", "enjoyed", "fantastic", "perfect", "superb")  # fmt: skip
NEGATIVE_WORDS = ("bad", "worst", "awful", "terrible", "boring", "waste", "poor", "horrible", "stupid",
                  "disappointing", "dull", "mess", "hated", "annoying")  # fmt: skip
BAD_STRINGS = ("<br />", "<br/>", "<br", "/>", "**", "***", "http", "https", "www", ".com", "://")


@dataclass(frozen=True)
class Decoding:
    """How continuations are decoded; every field is recorded in the dataset manifest."""

    method: str = "diverse_beam"  # or "sample"
    k: int = 6  # continuations per prompt
    max_new_tokens: int = 256
    top_k: int = 0  # sampling: 0 = off
    top_p: float = 1.0  # sampling: 1.0 = off
    temperature: float = 1.0  # sampling
    diversity_penalty: float = 50.0  # diverse beam: per earlier group that chose the token
    no_repeat_ngram_size: int = 2  # 0 = off
    word_bias: float = 1.5  # +bias on POSITIVE_WORDS, -bias on NEGATIVE_WORDS; 0 = off
    ban_markup: bool = True  # forbid BAD_STRINGS

    def __post_init__(self):
        if self.method not in ("sample", "diverse_beam"):
            raise InputError(f"--decoding must be 'sample' or 'diverse_beam', got '{self.method}'")
        if self.k < 1:
            raise InputError(f"--k must be >= 1, got {self.k}")
        if self.max_new_tokens < 1:
            raise InputError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0.0 < self.top_p <= 1.0 or self.temperature <= 0.0 or self.top_k < 0:
            raise InputError("sampling needs 0 < --top_p <= 1, --temperature > 0 and --top_k >= 0")

    @classmethod
    def from_flags(cls, flags, **fixed) -> Decoding:
        """The decoding a command's flags describe: each field the flags carry by name, then `fixed`.

        The one place flags become a Decoding, so a field added here reaches every command that has
        the flag, and a command fixes what it has no flag for.
        """
        names = [field.name for field in fields(cls) if hasattr(flags, field.name)]
        values = {name: getattr(flags, name) for name in names}
        return cls(**{**values, **fixed})


def _token_sequences(tokenizer, strings) -> list[list[int]]:
    sequences = {tuple(tokenizer(text, add_special_tokens=False).input_ids) for text in strings}
    return [list(ids) for ids in sequences if ids]


def study_processors(tokenizer, decoding: Decoding) -> LogitsProcessorList:
    """No-repeat n-grams, sentiment-word bias and banned markup, as the study's generation used.

    transformers' own: since transformers 5 they ban n-grams with one tensor comparison and match each
    length's biased sequences at once, as this project's own vectorised copies did (those gained
    0.95-1.15x over them on the CPU, docs/performance.md, and were dropped).
    """
    processors = LogitsProcessorList()
    if decoding.no_repeat_ngram_size:
        processors.append(NoRepeatNGramLogitsProcessor(decoding.no_repeat_ngram_size))
    if decoding.word_bias:
        bias = {}
        for words, sign in ((POSITIVE_WORDS, 1.0), (NEGATIVE_WORDS, -1.0)):
            for ids in _token_sequences(tokenizer, [f" {word}" for word in words]):
                bias[tuple(ids)] = sign * decoding.word_bias
        processors.append(SequenceBiasLogitsProcessor(sequence_bias=[[list(k), v] for k, v in bias.items()]))
    if decoding.ban_markup:
        banned = _token_sequences(tokenizer, [*BAD_STRINGS, *(f" {text}" for text in BAD_STRINGS)])
        processors.append(NoBadWordsLogitsProcessor(banned, eos_token_id=tokenizer.eos_token_id))
    return processors


def static_kv_cache(device: torch.device) -> bool:
    """Whether to decode with a KV cache allocated once (on the CPU): the same tokens as one grown by
    concatenation at every step, and faster (docs/performance.md). On a GPU, transformers would compile the
    forward pass for every new batch shape with a static cache, a cost not yet measured there, so the
    GPU keeps the default dynamic cache."""
    return device.type == "cpu"


def encode_prompts(model, tokenizer, prompts: list[str], decoding: Decoding):
    """The batch, left-padded on the model's device; InputError if prompt + new tokens exceed the context."""
    encoded = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and encoded.input_ids.shape[1] + decoding.max_new_tokens > context:
        raise InputError(
            f"a prompt of {encoded.input_ids.shape[1]} tokens + --max_new_tokens {decoding.max_new_tokens} "
            f"exceeds the model's context of {context} tokens (shorten the prompts or --max_new_tokens)"
        )
    return encoded


@torch.no_grad()
def sample_tokens(model, tokenizer, encoded, decoding: Decoding, seed: int) -> list[list[list[int]]]:
    """K sampled continuations per prompt as new token ids ([prompt][k][step], padded after EOS)."""
    torch.manual_seed(seed)  # the batch's own seed: a resumed run draws exactly what it would have
    output = model.generate(
        **encoded,
        do_sample=True,
        top_k=decoding.top_k,
        top_p=decoding.top_p,
        temperature=decoding.temperature,
        max_new_tokens=decoding.max_new_tokens,
        num_return_sequences=decoding.k,
        logits_processor=study_processors(tokenizer, decoding),
        pad_token_id=tokenizer.pad_token_id,
        cache_implementation="static" if static_kv_cache(model.device) else None,
    )
    rows = len(encoded.input_ids)
    return output[:, encoded.input_ids.shape[1] :].view(rows, decoding.k, -1).tolist()


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[str], decoding: Decoding, seed: int) -> list[list[str]]:
    """K continuations (text after the prompt) for each prompt of one batch."""
    encoded = encode_prompts(model, tokenizer, prompts, decoding)
    if decoding.method == "sample":
        new_tokens = sample_tokens(model, tokenizer, encoded, decoding, seed)
    else:
        processors = study_processors(tokenizer, decoding)
        torch.manual_seed(seed)
        new_tokens = diverse_beam_search(
            model,
            encoded.input_ids,
            encoded.attention_mask,
            num_groups=decoding.k,
            beams_per_group=1,
            diversity_penalty=decoding.diversity_penalty,
            max_new_tokens=decoding.max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            logits_processor=processors,
            static_cache=static_kv_cache(model.device),
        )
    return [tokenizer.batch_decode(rows, skip_special_tokens=True) for rows in new_tokens]
