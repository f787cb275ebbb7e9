"""The completion-only log-probs (train_dpo/logps.py) against TRL's own forward, and the fused GELU."""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.activations import GELUTanh, NewGELUActivation
from trl import DPOTrainer

from common.kernels import fuse_gelu
from train_dpo.logps import causal_padding_mask
from train_dpo.trainer import FDPOConfig, FDPOTrainer

# Prompts and completions of different lengths, so batches have left and right padding to flush,
# and some pairs run past max_length.
PAIRS = Dataset.from_list(
    [
        {"prompt": "A film", "chosen": " that shines.", "rejected": " that drags on and on and on."},
        {"prompt": "This movie was one of the best I have seen in years, and", "chosen": " I loved it.",
         "rejected": " the plot was thin, the acting wooden, the music loud, the ending far too long."},
        {"prompt": "Bad.", "chosen": " Actually, quite good once it gets going.", "rejected": " Awful."},
        {"prompt": "I watched it twice", "chosen": " and would again.", "rejected": " by mistake."},
    ]
)  # fmt: skip


def make_trainer(model_dir, tmp_path, peft=False, attention="sdpa", **kwargs):
    args = FDPOConfig(
        output_dir=str(tmp_path), report_to="none", beta=0.5, per_device_train_batch_size=4, **kwargs
    )
    lora = (
        LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM")
        if peft
        else None
    )
    return FDPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention),
        args=args,
        train_dataset=PAIRS,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=lora,
    )


def forward_and_grads(forward, trainer):
    """Outputs of one DPO forward, and the gradients of a loss built from its log-probs."""
    model = trainer.model
    model.zero_grad(set_to_none=True)
    batch = next(iter(trainer.get_train_dataloader()))
    out = forward(model, batch)
    (out["chosen_logps"].sum() - 0.5 * out["rejected_logps"].sum()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out, grads


@torch.no_grad()
def mean_logits(trainer):
    """TRL's `logits/chosen` and `logits/rejected` by their definition: the mean logit over the positions
    that score a completion token, each row run alone, cut to max_length as the truncation mode says.
    (TRL's own also counts the last position of a row whose prompt `keep_end` truncation cut off
    entirely, which scores nothing.)"""
    batch = next(iter(trainer.get_train_dataloader()))
    max_length, mode = trainer.args.max_length, trainer.args.truncation_mode
    means = {}
    for side in ("chosen", "rejected"):
        total, count = 0.0, 0
        for prompt, prompt_mask, completion, completion_mask in zip(
            batch["prompt_input_ids"], batch["prompt_attention_mask"],
            batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"], strict=True,
        ):  # fmt: skip
            prompt, completion = prompt[prompt_mask.bool()], completion[completion_mask.bool()]
            ids = torch.cat((prompt, completion))
            scores = torch.cat((torch.zeros_like(prompt), torch.ones_like(completion))).bool()
            if max_length is not None and len(ids) > max_length:
                kept = slice(-max_length, None) if mode == "keep_end" else slice(0, max_length)
                ids, scores = ids[kept], scores[kept]
            logits = trainer.model(ids[None]).logits[0, :-1][scores[1:]]
            total, count = total + logits.sum(), count + logits.numel()
        means[f"mean_{side}_logits"] = total / count
    return means


@pytest.mark.parametrize(
    ("max_length", "truncation_mode", "peft", "attention"),
    [(None, "keep_end", False, "sdpa"), (24, "keep_end", False, "sdpa"), (24, "keep_start", False, "sdpa"),
     (24, "keep_end", True, "sdpa"), (24, "keep_end", False, "eager")],
    ids=["no_truncation", "keep_end", "keep_start", "lora", "eager_attention"],
)  # fmt: skip
def test_same_logps_and_gradients_as_trl(
    max_length, truncation_mode, peft, attention, tiny_model_dir, tmp_path
):
    trainer = make_trainer(
        tiny_model_dir, tmp_path, peft, attention, max_length=max_length, truncation_mode=truncation_mode
    )
    ours, our_grads = forward_and_grads(trainer.concatenated_forward, trainer)
    assert trainer.completion_only_logits is True
    trl, trl_grads = forward_and_grads(lambda m, b: DPOTrainer.concatenated_forward(trainer, m, b), trainer)

    for key in ("chosen_logps", "rejected_logps"):
        torch.testing.assert_close(ours[key], trl[key], rtol=1e-5, atol=1e-4)
    for key, expected in mean_logits(trainer).items():  # on the scale of one logit: they average to ~0
        torch.testing.assert_close(ours[key], expected, rtol=0, atol=1e-6)
    assert our_grads.keys() == trl_grads.keys() and our_grads
    assert all("lora_" in name for name in our_grads) == peft
    for name, grad in trl_grads.items():
        # float32 sums in another order: the absolute slack scales with the gradient's own size (the
        # tied embedding's reaches ~10, where 1e-6 is below one rounding step of its larger entries).
        scale = max(1.0, float(grad.abs().max()))
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-4, atol=1e-6 * scale, msg=name)


def test_trl_path_for_models_that_post_process_logits(tiny_model_dir, tmp_path):
    """Logits scaled after the head (as soft-capping models do) are caught on the first batch."""
    trainer = make_trainer(tiny_model_dir, tmp_path)
    trainer.model.register_forward_hook(
        lambda module, args, out: out.__setitem__("logits", out.logits * 2) or out
    )
    ours, _ = forward_and_grads(trainer.concatenated_forward, trainer)
    assert trainer.completion_only_logits is False
    trl, _ = forward_and_grads(lambda m, b: DPOTrainer.concatenated_forward(trainer, m, b), trainer)
    torch.testing.assert_close(ours["chosen_logps"], trl["chosen_logps"], rtol=0, atol=0)


@pytest.mark.parametrize("option", [{"loss_type": "ipo"}, {"rpo_alpha": 0.5}, {"use_weighting": True}])
def test_trl_path_for_options_that_need_every_logit(option, tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, **option)
    ours, _ = forward_and_grads(trainer.concatenated_forward, trainer)
    assert trainer.completion_only_logits is False
    trl, _ = forward_and_grads(lambda m, b: DPOTrainer.concatenated_forward(trainer, m, b), trainer)
    assert (
        ours.keys() == trl.keys()
        and {"nll_loss", "policy_weights"} & ours.keys()
        == {"rpo_alpha": {"nll_loss"}, "use_weighting": {"policy_weights"}, "loss_type": set()}[
            next(iter(option))
        ]
    )
    for key in ours:
        torch.testing.assert_close(ours[key], trl[key], rtol=0, atol=0)


def test_fused_gelu_gives_the_same_model(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    fused = fuse_gelu(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    assert any(isinstance(m, NewGELUActivation) for m in model.modules())
    assert not any(isinstance(m, NewGELUActivation) for m in fused.modules())
    assert sum(isinstance(m, GELUTanh) for m in fused.modules()) == model.config.n_layer
    assert fused.config.activation_function == "gelu_new"  # saved configs load the same anywhere
    ids = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fused(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_logps_stay_close_to_float64(tiny_model_dir, tmp_path):
    """The GPU path (bf16 autocast) on the CPU: log-probs from bf16 logits, scored in float32.

    TRL's log-softmax runs in bf16 under CPU autocast; ours upcasts the completion logits first.
    """
    trainer = make_trainer(tiny_model_dir, tmp_path)
    trainer.model.double()
    exact, _ = forward_and_grads(trainer.concatenated_forward, trainer)
    trainer.model.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = forward_and_grads(trainer.concatenated_forward, trainer)
        trl, _ = forward_and_grads(lambda m, b: DPOTrainer.concatenated_forward(trainer, m, b), trainer)
    for key in ("chosen_logps", "rejected_logps"):
        assert ours[key].dtype == torch.float32
        our_error, trl_error = (ours[key] - exact[key]).abs().max(), (trl[key] - exact[key]).abs().max()
        assert our_error < 0.02 and our_error <= trl_error, (key, our_error, trl_error)


def test_causal_padding_mask_is_the_one_transformers_builds(tiny_model_dir):
    """What `completion_logps` hands an SDPA model equals transformers' own mask for right-padded rows."""
    from transformers.masking_utils import create_causal_mask

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    attention = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    embeds = torch.zeros(*attention.shape, model.config.n_embd)
    positions = torch.arange(attention.shape[1])
    theirs = create_causal_mask(model.config, embeds, attention, positions, None, positions[None])
    assert torch.equal(causal_padding_mask(attention), theirs)
