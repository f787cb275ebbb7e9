"""Diverse (group) beam search with a Hamming diversity penalty, batched over prompts.

The study decoded with transformers' group beam search (Vijayakumar et al., 2016, arXiv 1610.02424):
6 beams in 6 groups, diversity penalty 50. Transformers 4.56 moved that decoder to a Hub repository
run as remote code, which cannot be fetched offline; this module re-implements the same procedure:

* each step, groups are decoded in order; group g's log-probs are lowered by `diversity_penalty` times
  the number of earlier groups that picked each token at this step (the Hamming penalty);
* within a group it is ordinary beam search over 2 * beams_per_group candidates: a candidate ending in
  EOS becomes a finished hypothesis scored by sum log-prob / generated_length ** length_penalty, the
  others continue; a group stops once no running beam can beat its finished ones (early_stopping=False);
* at the end the running beams join the finished ones and each group returns its best
  `beams_per_group` hypotheses, all sorted by score.

Logits processors (no-repeat n-grams, sequence bias, bad words) act on the log-softmax scores, as in
transformers' beam search.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessorList, StaticCache


@dataclass
class _Hypotheses:
    """The n best finished hypotheses of one (prompt, group)."""

    size: int
    length_penalty: float
    entries: list[tuple[float, list[int]]] = field(default_factory=list)

    def add(self, tokens: list[int], sum_logprobs: float, generated_len: int) -> None:
        score = sum_logprobs / generated_len**self.length_penalty
        self.entries.append((score, tokens))
        self.entries.sort(key=lambda entry: -entry[0])
        del self.entries[self.size :]

    def is_done(self, best_running_sum_logprobs: float, generated_len: int) -> bool:
        if len(self.entries) < self.size:
            return False
        best_attainable = best_running_sum_logprobs / generated_len**self.length_penalty
        return self.entries[-1][0] >= best_attainable


@torch.no_grad()
def diverse_beam_search(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    num_groups: int = 6,
    beams_per_group: int = 1,
    diversity_penalty: float = 50.0,
    max_new_tokens: int = 256,
    eos_token_id: int,
    pad_token_id: int,
    length_penalty: float = 1.0,
    logits_processor: LogitsProcessorList | None = None,
    static_cache: bool = False,
) -> list[list[list[int]]]:
    """Decode every prompt of a left-padded batch with group beam search.

    Args:
        model: a causal LM returning `.logits` and `.past_key_values` (a transformers Cache).
        input_ids, attention_mask: (B, T) left-padded prompts.
        num_groups, beams_per_group: num_beams = num_groups * beams_per_group.
        diversity_penalty: subtracted from a token's log-prob once per earlier group that chose it.
        max_new_tokens, eos_token_id, pad_token_id, length_penalty: as in transformers.
        logits_processor: applied to each group's log-softmax scores.
        static_cache: keep keys and values in a cache allocated once for the longest output, instead of
            one grown by concatenation at every step (the same tokens; faster on the CPU).

    Returns:
        For each prompt, num_groups * beams_per_group lists of generated token ids (EOS excluded), best
        score first.
    """
    device = input_ids.device
    batch, prompt_len = input_ids.shape
    group_size, num_beams = beams_per_group, num_groups * beams_per_group
    processors = logits_processor or LogitsProcessorList()

    # Row b * num_beams + g * group_size + j holds beam j of group g of prompt b.
    sequences = input_ids.repeat_interleave(num_beams, dim=0)
    mask = attention_mask.repeat_interleave(num_beams, dim=0)
    beam_scores = torch.full((batch, num_beams), -1e9, device=device)
    beam_scores[:, ::group_size] = 0.0  # only the first beam of each group starts "alive"
    beam_scores = beam_scores.view(-1)
    hypotheses = [[_Hypotheses(group_size, length_penalty) for _ in range(num_groups)] for _ in range(batch)]
    done = [[False] * num_groups for _ in range(batch)]

    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    # A static cache is written at the positions it is told; a dynamic one (None: the model's own) appends.
    cache, positions = None, {}
    if static_cache:
        cache = StaticCache(config=model.config, max_cache_len=prompt_len + max_new_tokens)
        positions = {"cache_position": torch.arange(prompt_len, device=device)}
    outputs = model(
        input_ids=sequences,
        attention_mask=mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        **positions,
    )
    for step in range(max_new_tokens):
        log_probs = torch.log_softmax(outputs.logits[:, -1, :].float(), dim=-1)
        vocab = log_probs.shape[-1]
        next_tokens = torch.full((batch * num_beams,), pad_token_id, dtype=torch.long, device=device)
        reorder = torch.arange(batch * num_beams, device=device)
        reordered = False  # with one beam per group (the study's), each beam always extends itself
        generated_len = sequences.shape[1] + 1 - prompt_len  # counting this step's token, as transformers

        for group in range(num_groups):
            rows = (
                torch.arange(batch, device=device)[:, None] * num_beams
                + group * group_size
                + torch.arange(group_size, device=device)[None, :]
            ).view(-1)
            scores = processors(sequences[rows], log_probs[rows].clone())
            if group > 0:  # Hamming diversity against the tokens earlier groups chose at this step
                earlier = next_tokens.view(batch, num_beams)[:, : group * group_size]
                counts = torch.zeros(batch, vocab, device=device).scatter_add_(
                    1, earlier, torch.ones_like(earlier, dtype=torch.float)
                )
                scores = scores - diversity_penalty * counts.repeat_interleave(group_size, dim=0)
            candidates = (scores + beam_scores[rows, None]).view(batch, group_size * vocab)
            top_scores, top_ids = candidates.topk(2 * group_size, dim=1)
            # Bookkeeping in Python lists, written back with one tensor op per group (per-element
            # tensor writes would dominate the step time for small models).
            row_ids, sources, tokens_out, scores_out = [], [], [], []
            for b, (b_scores, b_ids) in enumerate(zip(top_scores.tolist(), top_ids.tolist(), strict=True)):
                base = b * num_beams + group * group_size
                if done[b][group]:  # finished group: pad and keep a dummy beam
                    for j in range(group_size):
                        row_ids.append(base + j), sources.append(base + j)
                        tokens_out.append(pad_token_id), scores_out.append(0.0)
                    continue
                kept = 0
                for rank, (score, flat) in enumerate(zip(b_scores, b_ids, strict=True)):
                    source, token = base + flat // vocab, flat % vocab
                    if token == eos_token_id:
                        if rank < group_size:  # an EOS outside the top group_size is not a finished beam
                            tokens = sequences[source, prompt_len:].tolist()
                            hypotheses[b][group].add(tokens, score, generated_len)
                        continue
                    row_ids.append(base + kept), sources.append(source)
                    tokens_out.append(token), scores_out.append(score)
                    kept += 1
                    if kept == group_size:
                        break
                done[b][group] = hypotheses[b][group].is_done(max(b_scores), generated_len)
            index = torch.tensor(row_ids, device=device)
            next_tokens[index] = torch.tensor(tokens_out, device=device)
            beam_scores[index] = torch.tensor(scores_out, device=device, dtype=beam_scores.dtype)
            if sources != row_ids:
                reordered = True
                reorder[index] = torch.tensor(sources, device=device)
                # Later groups must see this group's reordered beams; rows of other groups are untouched.
                sequences[rows] = sequences[reorder[rows]]

        sequences = torch.cat([sequences, next_tokens[:, None]], dim=-1)
        if all(all(row) for row in done) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        if reordered:  # else an index_select of the whole cache that changes nothing
            outputs.past_key_values.reorder_cache(reorder)
        position_ids = position_ids[:, -1:] + 1
        if static_cache:
            positions["cache_position"] = positions["cache_position"][-1:] + 1
        outputs = model(
            input_ids=next_tokens[:, None],
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=outputs.past_key_values,
            use_cache=True,
            **positions,
        )

    results = []
    for b in range(batch):
        for group in range(num_groups):
            if done[b][group]:
                continue
            for j in range(group_size):  # still running at max length: the beams compete as they are
                row = b * num_beams + group * group_size + j
                hypotheses[b][group].add(
                    sequences[row, prompt_len:].tolist(),
                    beam_scores[row].item(),
                    sequences.shape[1] - prompt_len,
                )
        ranked = sorted(
            (entry for hyp in hypotheses[b] for entry in hyp.entries), key=lambda entry: -entry[0]
        )
        results.append([tokens for _, tokens in ranked])
    return results
