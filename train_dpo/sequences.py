"""Sequence log-probs and entropies of completions under a policy, for KL and entropy estimates."""

from __future__ import annotations

import torch


def completion_stats(
    model,
    tokenizer,
    prompts: list[str],
    completions: list[str],
    batch_size: int = 16,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """`sequence_stats` of completions given as text, re-tokenized: no EOS, and not always the sampled ids.

    Prompt and completion are tokenized separately and concatenated (as TRL does). For the study's
    generation CSVs, which hold text only; generate.py saves the ids it sampled, which are scored as they
    are. Returns float64 tensors of shape (N,).
    """
    prompt_ids = tokenizer(prompts, add_special_tokens=False).input_ids if prompts else []
    completion_ids = tokenizer(completions, add_special_tokens=False).input_ids if completions else []
    return sequence_stats(model, tokenizer.pad_token_id, prompt_ids, completion_ids, batch_size, max_length)


@torch.no_grad()
def sequence_stats(
    model,
    pad_token_id: int,
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    batch_size: int = 16,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Per sequence: summed log-prob of the completion's tokens given the prompt, summed entropy, length.

    Scores token ids as given, e.g. the ids a policy sampled, EOS included, so every step that was
    sampled is scored, the one that chose EOS too. The entropy of a step is that of the model's full
    next-token distribution at temperature 1. Sequences longer than `max_length` (default: the model's
    context) lose the end of their completion.

    Args:
        prompt_ids, completion_ids: N lists of token ids each.
    Returns:
        `logps`, `entropy` (sums over completion tokens) and `tokens` (completion tokens scored):
        float64 tensors of shape (N,).
    """
    device = next(model.parameters()).device
    max_length = max_length or model.config.max_position_embeddings
    out = {"logps": [], "entropy": [], "tokens": []}
    for start in range(0, len(prompt_ids), batch_size):
        prompts = prompt_ids[start : start + batch_size]
        sequences = [
            (list(p) + list(c))[:max_length]
            for p, c in zip(prompts, completion_ids[start : start + batch_size], strict=True)
        ]
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        is_completion = torch.zeros_like(input_ids, dtype=torch.bool)
        for row, (p, seq) in enumerate(zip(prompts, sequences, strict=True)):  # right padding
            input_ids[row, : len(seq)] = torch.tensor(seq)
            attention[row, : len(seq)] = 1
            is_completion[row, min(len(p), len(seq)) : len(seq)] = True
        input_ids, attention, is_completion = (
            input_ids.to(device),
            attention.to(device),
            is_completion.to(device),
        )
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
        log_probs = logits.log_softmax(-1)
        targets = input_ids[:, 1:]
        mask = is_completion[:, 1:]
        token_logps = log_probs.gather(-1, targets[..., None]).squeeze(-1)
        token_entropy = -(log_probs.exp() * log_probs).sum(-1)
        # Summed in float64: a float32 sum of ~100 nats would carry ~1e-5 of rounding into every log-ratio.
        out["logps"].append((token_logps.double() * mask).sum(-1).cpu())
        out["entropy"].append((token_entropy.double() * mask).sum(-1).cpu())
        out["tokens"].append(mask.sum(-1).double().cpu())
    return {
        key: torch.cat(values) if values else torch.empty(0, dtype=torch.float64)
        for key, values in out.items()
    }
