"""Completion log-probs with the vocabulary projection on completion positions only (the CPU path).

TRL 1.16's fused LM head skips the prompt and padding positions only in its Triton kernel (CUDA, XPU).
On the CPU it projects every position onto the vocabulary and masks afterwards, so at the study's
lengths a third or more of the step's largest product and of the passes over it is thrown away. Here
the model's body runs alone, the final hidden states of the positions that score a completion token are
gathered, and only those go through the LM head. The log-probs and metrics then follow the formula of
TRL's kernel operation for operation (`TargetLogProbs`), so they are its float32 numbers, not merely
close to them: a loss that amplifies small differences in the log-ratios (forward KL's 1/u) gives
TRL's gradients too (tests/test_logps.py, tests/test_trl_agreement.py).
"""

from __future__ import annotations

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel
from trl.trainer.utils import FusedCausalLMOutput

# Config fields of models whose logits are more than the LM head's linear map (TRL's fused head applies
# them), and of MoE models whose loss wants router logits: those keep TRL's fused head.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                    "logits_scaling", "output_router_logits")  # fmt: skip


def body_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """A causal LM's body (hidden states out) and LM head, through a LoRA-type PEFT wrapper.

    Adapters injected into the model's layers (PEFT's LoRA, `train_dpo.lora_stack`) apply as usual.
    None where the two cannot be called apart from the model's own forward: a wrapper whose forward does
    work of its own (DDP's gradient sync, FSDP, torch.compile), prompt-learning PEFT (virtual tokens), a
    vision-language model, or logits transformed after the head (`LOGIT_TRANSFORMS`).
    """
    if isinstance(model, PeftModel):
        if model.active_peft_config.is_prompt_learning:
            return None
        model = model.get_base_model()  # LoRA layers sit inside it, so calling its modules applies them
    if not isinstance(model, PreTrainedModel) or model.config.get_text_config() is not model.config:
        return None
    if any(getattr(model.config, name, None) for name in LOGIT_TRANSFORMS) or model.base_model is model:
        return None
    return model.base_model, model.get_output_embeddings()  # `base_model`: the body TRL's head calls


class TargetLogProbs(torch.autograd.Function):
    """log p(target) of each row of float32 logits, and TRL's per-token metrics, by TRL's kernel's formula.

    (positions, vocabulary) logits, (positions,) targets -> log-probs (differentiable), entropies, mean
    logits, top-1 flags, each (positions,). The operations are those of TRL 1.16's CPU fold of one
    vocabulary tile (`_forward_tile`, `_backward_tile` in `trl/kernels/chunked_logprob.py`): the row
    maximum m, e = exp(z - m), log Z = m + log sum e, log p = z_target - log Z, entropy
    log Z - sum(e z) / sum e; backward g (1[target] - exp(z - log Z)). TRL's tiles are 32,768 tokens of
    the vocabulary wide: one covers the tiny GPT-2's 2,048, while GPT-2's 50,257 take two, whose online
    rescaling sums in another order (the same numbers within float32 rounding). The backward writes the
    gradient into the probabilities it recomputes: one buffer, no one-hot.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor):
        row_max = logits.amax(-1)
        exp = torch.sub(logits, row_max[:, None]).exp_()
        sum_exp = exp.sum(-1)
        log_z = row_max + torch.log(sum_exp)
        target_logits = logits.gather(-1, targets[:, None]).squeeze(-1)
        entropy = log_z - exp.mul_(logits).sum(-1) / sum_exp
        mean_logits = logits.sum(-1) / logits.shape[-1]
        # The target counts as top-1 only as the first of tied maxima (argmax's rule and TRL's): the tie
        # check runs on the rows whose target reaches the maximum, as argmax is slow on the CPU.
        is_top1 = target_logits >= row_max
        hits = is_top1.nonzero().squeeze(-1)
        earlier = torch.arange(logits.shape[-1], device=logits.device) < targets[hits, None]
        is_top1[hits] = ~((logits[hits] == target_logits[hits, None]) & earlier).any(-1)
        ctx.save_for_backward(logits, targets, log_z)
        ctx.mark_non_differentiable(entropy, mean_logits, is_top1)
        return target_logits - log_z, entropy, mean_logits, is_top1

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None, *_):
        if grad is None:
            return None, None
        logits, targets, log_z = ctx.saved_tensors
        probs = torch.sub(logits, log_z[:, None]).exp_()
        target_probs = probs.gather(-1, targets[:, None])
        grad_logits = probs.mul_(-grad[:, None])  # g (0 - p) off the target
        grad_logits.scatter_(-1, targets[:, None], grad[:, None] * (1 - target_probs))
        return grad_logits, None


def completion_logps(body: nn.Module, head: nn.Module, inputs: dict, completion_mask: torch.Tensor):
    """Per-token log-probs of the completion tokens, projecting only the positions that score one.

    `inputs`: the model's inputs (input_ids, attention_mask, ...); `completion_mask` (rows, T) marks the
    completion tokens. Position t scores token t + 1 where `completion_mask[:, t + 1]` is set, as in
    TRL's fused head. `body` gives the final hidden states (after the last norm), `head` maps them to
    the vocabulary, under the caller's autocast; the rest runs in float32, as TRL's kernel.
    Returns TRL's `FusedCausalLMOutput`, each field (rows, T - 1) and zero at the other positions:
    `log_probs` (float32, differentiable), and without gradient `entropy`, `mean_logits` (float32) and
    `is_top1` (bool), plus `label_mask`, the positions scored.
    """
    scored = completion_mask[:, 1:].bool()
    targets = inputs["input_ids"][:, 1:][scored]
    hidden = body(**inputs, use_cache=False).last_hidden_state
    logits = head(hidden[:, :-1][scored])  # (scored positions, vocabulary); bf16 under autocast
    with torch.autocast(logits.device.type, enabled=False):
        log_probs, entropy, mean_logits, is_top1 = TargetLogProbs.apply(logits.float(), targets)

    def spread(values: torch.Tensor) -> torch.Tensor:
        return values.new_zeros(scored.shape).masked_scatter(scored, values)

    return FusedCausalLMOutput(
        log_probs=spread(log_probs),
        entropy=spread(entropy),
        mean_logits=spread(mean_logits),
        is_top1=spread(is_top1),
        label_mask=scored,
    )
