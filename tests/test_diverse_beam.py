"""Diverse beam search: a hand-worked case, and agreement with transformers' own beam search."""

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.diverse_beam import diverse_beam_search

EOS, A, B, C = 0, 1, 2, 3


class BigramLM(torch.nn.Module):
    """Next-token log-probs depend on the last token only; the 'cache' just records reorders."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.log(torch.tensor(table))

    def forward(
        self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True
    ):
        cache = past_key_values or SimpleNamespace(reorder_cache=lambda index: None)
        return SimpleNamespace(logits=self.table[input_ids], past_key_values=cache)


TABLE = [
    [0.25, 0.25, 0.25, 0.25],  # after EOS (pad)
    [0.90, 0.05, 0.025, 0.025],  # after a: EOS likely
    [0.10, 0.10, 0.10, 0.70],  # after b: c likely
    [0.05, 0.60, 0.30, 0.05],  # after c (the prompt): a, then b
]


def test_hand_worked_two_groups():
    prompt = torch.tensor([[C]])
    out = diverse_beam_search(
        BigramLM(TABLE), prompt, torch.ones_like(prompt), num_groups=2, beams_per_group=1,
        diversity_penalty=50.0, max_new_tokens=3, eos_token_id=EOS, pad_token_id=EOS,
    )  # fmt: skip
    # Group 0: a (0.6), then EOS (0.9) ranks first -> finished [a], score (log .6 + log .9) / 2, and no
    # running beam can beat it: done. Group 1: a is taken by group 0 at step 0 (-50) -> b (0.3); then
    # c (0.7); then group 0 is done and emits pad = EOS, so EOS is penalised -> a (0.6). Max length:
    # the running beam [b, c, a] scores (log .3 + log .7 + log .6) / 3.
    assert out == [[[A], [B, C, A]]]
    assert (math.log(0.6) + math.log(0.9)) / 2 > (math.log(0.3) + math.log(0.7) + math.log(0.6)) / 3


def test_without_diversity_the_groups_agree():
    prompt = torch.tensor([[C]])
    out = diverse_beam_search(
        BigramLM(TABLE), prompt, torch.ones_like(prompt), num_groups=3, beams_per_group=1,
        diversity_penalty=1e-6, max_new_tokens=3, eos_token_id=EOS, pad_token_id=EOS,
    )  # fmt: skip
    assert out == [[[A], [A], [A]]]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")
    return model, tokenizer


def _until(tokens, eos):
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


@pytest.mark.parametrize("eos_text", ["<|endoftext|>", ".", "Ġthe"])  # frequent EOS exercises finished beams
@pytest.mark.parametrize("beams", [1, 2, 3])
@pytest.mark.parametrize("static_cache", [False, True], ids=["dynamic_cache", "static_cache"])
def test_one_group_equals_transformers_beam_search(tiny, eos_text, beams, static_cache):
    model, tokenizer = tiny
    eos = tokenizer.convert_tokens_to_ids(eos_text)
    encoded = tokenizer(
        ["This movie was", "I loved the acting and the music"], return_tensors="pt", padding=True
    )
    reference = model.generate(
        **encoded, num_beams=beams, num_return_sequences=beams, max_new_tokens=12, do_sample=False,
        early_stopping=False, length_penalty=1.0, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
    )[:, encoded.input_ids.shape[1] :].view(2, beams, -1)  # fmt: skip
    expected = [[_until(row, eos) for row in prompt_rows] for prompt_rows in reference.tolist()]
    ours = diverse_beam_search(
        model, encoded.input_ids, encoded.attention_mask, num_groups=1, beams_per_group=beams,
        diversity_penalty=1.0, max_new_tokens=12, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
        static_cache=static_cache,
    )  # fmt: skip
    assert ours == expected


@pytest.mark.parametrize("static_cache", [False, True], ids=["dynamic_cache", "static_cache"])
def test_batched_equals_one_prompt_at_a_time(tiny, static_cache):
    model, tokenizer = tiny
    prompts = ["This movie was", "I loved the acting and the music", "Worst film"]
    kwargs = dict(num_groups=6, beams_per_group=1, diversity_penalty=50.0, max_new_tokens=10,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    batched = diverse_beam_search(
        model, encoded.input_ids, encoded.attention_mask, static_cache=static_cache, **kwargs
    )
    for prompt, expected in zip(prompts, batched, strict=True):
        single = tokenizer([prompt], return_tensors="pt")
        assert diverse_beam_search(model, single.input_ids, single.attention_mask, **kwargs) == [expected]
    # A penalty of 50 makes the six groups pick six different first tokens.
    assert all(len({answer[0] for answer in answers}) == 6 for answers in batched)
