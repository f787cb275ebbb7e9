"""The study's logits processors act on the tiny tokenizer's words; the CPU's static KV cache draws the same
samples as the dynamic one."""

import torch
from transformers import AutoTokenizer

from common.generation import Decoding, study_processors


def test_the_study_processors_bias_sentiment_words_and_ban_markup(tiny_model_dir):
    """The study's word lists and markup through the tiny tokenizer, over rows that end in the first tokens
    of biased and banned multi-token sequences, so that their last tokens are the ones moved."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ngram, bias, bad = study_processors(tokenizer, Decoding())
    assert sum(len(ids) > 1 for ids in bias.sequence_bias) >= 5  # words the tiny BPE splits
    for processor, moved in ((bias, {1.5, -1.5}), (bad, {float("-inf")})):
        for ids, _ in [(ids, v) for ids, v in processor.sequence_bias.items() if len(ids) > 1][:5]:
            row = torch.tensor([list(tokenizer(" It was a film and").input_ids[-6:]) + list(ids[:-1])])
            scores = torch.zeros(1, len(tokenizer))
            change = processor(row, scores.clone()) - scores
            assert change[0, ids[-1]].item() in moved, (processor, ids)
    hand_worked = ngram(torch.tensor([[0, 1, 0]]), torch.zeros(1, 3))  # "a b a": b would repeat (a, b)
    assert hand_worked.tolist() == [[0.0, float("-inf"), 0.0]]


def test_sampling_with_a_static_cache_draws_what_the_dynamic_cache_draws(tiny_model_dir, monkeypatch):
    """The CPU's static KV cache changes the speed of sampling, not one drawn token."""
    import common.generation as generate
    from common.models import load_policy

    policy = load_policy(str(tiny_model_dir), "cpu")
    model, tokenizer = policy.model, policy.tokenizer
    prompts = ["A film", "This movie was one of the best I have seen, and", "Bad."]
    decoding = Decoding(method="sample", k=3, max_new_tokens=24, top_k=50)
    assert generate.static_kv_cache(model.device)
    static = generate.generate_batch(model, tokenizer, prompts, decoding, seed=3)
    monkeypatch.setattr(generate, "static_kv_cache", lambda device: False)
    assert generate.generate_batch(model, tokenizer, prompts, decoding, seed=3) == static
    assert len({text for texts in static for text in texts}) == 9  # nine different draws
