"""The trainer's sequence log-probs against a direct forward pass of each sequence alone and against TRL's
fused LM head, and the fused GELU."""

import contextlib

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.activations import GELUTanh, NewGELUActivation
from trl import DPOTrainer

from common.kernels import fuse_gelu
from train_dpo.logps import body_and_head
from train_dpo.lora_stack import LoRAStack
from train_dpo.trainer import FDPOConfig, FDPOTrainer, model_inputs

# Prompts and completions of different lengths, so batches have padding, and some pairs run past max_length.
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


def first_batch(trainer):
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    return trainer._prepare_inputs(trainer.data_collator(rows))


def sequences(trainer, side):
    """Each pair's prompt + answer token ids as TRL tokenized them, cut to max_length keeping the start,
    with a flag per token: True for answer tokens."""
    out, max_length = [], trainer.args.max_length
    for row in trainer.train_dataset:
        ids = row["prompt_ids"] + row[f"{side}_ids"]
        scored = [False] * len(row["prompt_ids"]) + [True] * len(row[f"{side}_ids"])
        if max_length is not None:
            ids, scored = ids[:max_length], scored[:max_length]
        out.append((torch.tensor(ids), torch.tensor(scored)))
    return out


def direct_logps(model, rows, dtype=torch.float32):
    """Sum of log p(token | tokens before it) over the answer tokens, each sequence run alone, no padding;
    also the sum and count of the mean logits over the positions that score an answer token."""
    logps, logit_sum, count = [], 0.0, 0
    for ids, scored in rows:
        logits = model(ids[None]).logits[0, :-1].to(dtype)
        logp = logits.log_softmax(-1).gather(-1, ids[1:, None])[:, 0]
        logps.append(logp[scored[1:]].sum())
        logit_sum, count = (
            logit_sum + logits[scored[1:]].mean(-1).sum().detach(),
            count + int(scored[1:].sum()),
        )
    return torch.stack(logps), logit_sum / count


def grads_of(model, value):
    model.zero_grad(set_to_none=True)
    value.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("max_length", "peft", "attention"),
    [(None, False, "sdpa"), (32, False, "sdpa"), (32, True, "sdpa"), (32, False, "eager")],
    ids=["no_truncation", "keep_start", "lora", "eager_attention"],
)
def test_sequence_logps_and_gradients_equal_a_direct_forward(
    max_length, peft, attention, tiny_model_dir, tmp_path
):
    trainer = make_trainer(tiny_model_dir, tmp_path, peft, attention, max_length=max_length)
    model = trainer.model
    model.train()
    eos = trainer.processing_class.eos_token_id
    assert all(
        row["chosen_ids"][-1] == eos and row["rejected_ids"][-1] == eos for row in trainer.train_dataset
    )
    batch = first_batch(trainer)
    assert batch["input_ids"].shape[0] == 2 * len(PAIRS)  # chosen rows, then rejected rows
    if max_length is not None:
        assert batch["input_ids"].shape[1] == max_length  # some pairs were cut

    chosen, rejected, _ = trainer.sequence_logps(model, batch)
    ours = grads_of(model, chosen.sum() - 0.5 * rejected.sum())
    direct_chosen, chosen_logits = direct_logps(model, sequences(trainer, "chosen"))
    direct_rejected, rejected_logits = direct_logps(model, sequences(trainer, "rejected"))
    expected = grads_of(model, direct_chosen.sum() - 0.5 * direct_rejected.sum())

    torch.testing.assert_close(chosen, direct_chosen, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(rejected, direct_rejected, rtol=1e-5, atol=1e-4)
    assert ours.keys() == expected.keys() and ours
    assert all("lora_" in name for name in ours) == peft
    for name, grad in expected.items():
        # float32 sums in another order: the absolute slack scales with the gradient's own size.
        scale = max(1.0, float(grad.abs().max()))
        torch.testing.assert_close(ours[name], grad, rtol=1e-4, atol=1e-6 * scale, msg=name)

    # The logged `logits/*` metrics: the mean logit over the positions that score an answer token.
    trainer._metrics["train"].clear()
    trainer.compute_loss(model, batch)
    metrics = trainer._metrics["train"]
    assert metrics["logits/chosen"][-1] == pytest.approx(chosen_logits.item(), abs=1e-5)
    assert metrics["logits/rejected"][-1] == pytest.approx(rejected_logits.item(), abs=1e-5)


def fused_head(model, batch):
    """TRL's fused LM head on the batch: on the CPU it projects every position and masks."""
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    return model(**model_inputs(batch), labels=labels, fused_lm_head=True, use_cache=False)


@pytest.mark.parametrize("adapter", ["full", "lora", "lora_stack"])
def test_completion_projection_equals_trls_fused_head(adapter, tiny_model_dir, tmp_path):
    """The CPU path projects the answer positions only, with the numbers and gradients of TRL's head."""
    trainer = make_trainer(tiny_model_dir, tmp_path, peft=adapter == "lora", max_length=32)
    model = trainer.model
    batch = first_batch(trainer)
    routed = contextlib.nullcontext()
    if adapter == "lora_stack":  # the grid's adapters: chosen rows through adapter 0, rejected through 1
        stack = LoRAStack(model, 2, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
        for run in range(2):
            stack.seed(run, seed=run)
            for layer in stack.layers.values():
                torch.nn.init.normal_(layer.lora_B[run], std=0.1)
        routed = stack.routed()
    model.train()
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert all(("lora_" in name) == (adapter != "full") for name, _ in trainable)
    head = model.get_output_embeddings()
    projected = []
    hook = head.register_forward_hook(lambda module, args, out: projected.append(args[0].shape[0]))

    def grads(value):
        model.zero_grad(set_to_none=True)
        value.backward()
        return {name: p.grad.clone() for name, p in trainable}

    with routed:
        assert body_and_head(model) is not None
        logps, ours = trainer.row_logps(model, batch)
        our_grads = grads(logps.sum() - 0.5 * logps[-1])
        theirs = fused_head(model, batch)
        their_grads = grads(theirs.log_probs.sum() - 0.5 * theirs.log_probs[-1].sum())
    hook.remove()

    scored = batch["completion_mask"][:, 1:].bool()
    assert projected == [int(scored.sum())] and scored.sum() < scored.numel()  # prompt and padding skipped
    torch.testing.assert_close(logps, theirs.log_probs.sum(1), rtol=1e-5, atol=1e-5)
    for field in ("log_probs", "entropy", "mean_logits", "is_top1"):
        value, expected = getattr(ours, field), getattr(theirs, field).detach()
        assert value.shape == expected.shape == scored.shape and value.dtype == expected.dtype, field
        assert not value[~scored].any(), field  # zero where no answer token is scored, as TRL's
        torch.testing.assert_close(value[scored], expected[scored], rtol=1e-5, atol=1e-5, msg=field)
    assert any(grad.abs().max() > 0 for grad in their_grads.values())
    for name, grad in their_grads.items():
        scale = max(1.0, float(grad.abs().max()))
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-5, atol=1e-6 * scale, msg=name)


def test_completion_projection_under_bf16_autocast_matches_trls_head(tiny_model_dir, tmp_path):
    """bf16 autocast reaches the hand projection: the same bf16 logits, summed in float32, as TRL's."""
    trainer = make_trainer(tiny_model_dir, tmp_path, peft=True)
    batch = first_batch(trainer)
    with torch.no_grad():
        exact, _ = trainer.row_logps(trainer.model, batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logps, ours = trainer.row_logps(trainer.model, batch)
            theirs = fused_head(trainer.model, batch)
    assert not torch.equal(logps, exact)  # the product ran in bf16
    torch.testing.assert_close(logps, theirs.log_probs.sum(1), rtol=1e-4, atol=1e-3)
    scored = batch["completion_mask"][:, 1:].bool()
    torch.testing.assert_close(ours.entropy[scored], theirs.entropy[scored], rtol=1e-4, atol=1e-4)


def test_fused_head_is_kept_where_asked_or_where_the_body_is_not_callable_alone(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, peft=True)
    batch = first_batch(trainer)

    class Wrapper(torch.nn.Module):  # as DDP: its own forward must run (there, the gradient sync)
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert body_and_head(Wrapper(trainer.model)) is None
    projected = []
    trainer.model.get_output_embeddings().register_forward_hook(lambda *args: projected.append(1))
    trainer.completion_only_logits = False
    with torch.no_grad():
        logps, _ = trainer.row_logps(trainer.model, batch)
        expected = fused_head(trainer.model, batch).log_probs.sum(1)
    assert not projected  # TRL's head multiplies by the weight, never calls the module
    torch.testing.assert_close(logps, expected, rtol=0, atol=0)


@pytest.mark.parametrize("option", [{"loss_type": "ipo"}, {"use_weighting": True}, {"ld_alpha": 0.5}])
def test_trl_computes_the_loss_for_its_own_options(option, tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, **option)
    assert trainer.trl_computes_loss
    batch = first_batch(trainer)
    ours = trainer.compute_loss(trainer.model, batch)
    theirs = DPOTrainer.compute_loss(trainer, trainer.model, batch)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert "logratios/chosen" not in trainer._metrics["train"]  # TRL's metrics only


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
    """The GPU path (bf16 autocast) on the CPU: TRL's fused head multiplies in bf16 and sums in float32."""
    trainer = make_trainer(tiny_model_dir, tmp_path)
    model = trainer.model
    batch = first_batch(trainer)
    with torch.no_grad():
        model.double()
        exact = {
            side: direct_logps(model, sequences(trainer, side), torch.float64)[0]
            for side in ("chosen", "rejected")
        }
        model.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            chosen, rejected, _ = trainer.sequence_logps(model, batch)
    for side, ours in (("chosen", chosen), ("rejected", rejected)):
        assert ours.dtype == torch.float32
        assert (ours.double() - exact[side]).abs().max() < 0.02, (side, ours, exact[side])
