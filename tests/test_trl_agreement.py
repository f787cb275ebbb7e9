"""Our f-DPO losses against TRL 1.16's native `f_divergence_type`, on the same batch and weights.

TRL's alpha-divergence uses f'(t) = (t^(a-1) - 1) / (a - 1), which is the paper's (1 - u^-alpha) / alpha
for a = 1 - alpha; its forward KL is f'(t) = 1 - 1/t, the paper's -1/u shifted by a constant that
cancels in the margin. TRL clamps (a - 1) log u at 80 before the exp; the batch here keeps every log-ratio
far from that clamp, where both must agree in loss and in every gradient.
"""

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from train_dpo.trainer import FDPOConfig, FDPOTrainer

PAIRS = Dataset.from_list(
    [
        {"prompt": "A film", "chosen": " that shines.", "rejected": " that drags on and on."},
        {"prompt": "This movie was one of the best I have seen,", "chosen": " truly.", "rejected": " sadly not."},
        {"prompt": "Bad.", "chosen": " Actually, quite good once it gets going.", "rejected": " Awful."},
        {"prompt": "I watched it twice", "chosen": " and would again.", "rejected": " by mistake."},
    ]
)  # fmt: skip
BETA = 0.7

# (our flags, TRL's flags): TRL 1.16's alpha coefficient is 1 - the paper's alpha.
CASES = {
    "reverse_kl": ({"divergence": "reverse_kl"}, {"f_divergence_type": "reverse_kl"}),
    "forward_kl": ({"divergence": "forward_kl"}, {"f_divergence_type": "forward_kl"}),
    "jsd": ({"divergence": "jsd"}, {"f_divergence_type": "js_divergence"}),
    **{
        f"alpha{alpha}": (
            {"divergence": "alpha", "alpha": alpha},
            {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 1 - alpha},
        )
        for alpha in (0.3, 0.5, 0.7)
    },
}


@pytest.fixture(scope="module")
def reference_dir(tiny_model_dir, tmp_path_factory):
    """The tiny GPT-2 with every weight nudged: a reference the policy differs from by a few nats a pair."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    out = tmp_path_factory.mktemp("models") / "nudged"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def make(trainer_cls, config_cls, model_dir, ref_dir, out_dir, **kwargs):
    args = config_cls(
        output_dir=str(out_dir),
        report_to="none",
        bf16=False,
        beta=BETA,
        activation_checkpointing=False,
        **kwargs,
    )
    return trainer_cls(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        ref_model=AutoModelForCausalLM.from_pretrained(ref_dir),
        args=args,
        train_dataset=PAIRS,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )


def loss_and_grads(trainer):
    """The loss of the batch of all four pairs, and its gradient for every parameter."""
    batch = trainer._prepare_inputs(
        trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    )
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), {
        name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge"])
@pytest.mark.parametrize("case", list(CASES))
def test_same_loss_and_gradients_as_trls_f_divergence(
    case, loss_type, tiny_model_dir, reference_dir, tmp_path
):
    ours_flags, trl_flags = CASES[case]
    ours = make(
        FDPOTrainer,
        FDPOConfig,
        tiny_model_dir,
        reference_dir,
        tmp_path / "ours",
        loss_type=loss_type,
        **ours_flags,
    )
    trl = make(
        DPOTrainer,
        DPOConfig,
        tiny_model_dir,
        reference_dir,
        tmp_path / "trl",
        loss_type=[loss_type],
        **trl_flags,
    )
    assert not ours.trl_computes_loss

    # The batch means something and stays inside TRL's clamp: log-ratios of a few nats, none near 80 / alpha.
    batch = ours._prepare_inputs(ours.data_collator([ours.train_dataset[i] for i in range(len(PAIRS))]))
    with torch.no_grad():
        chosen, rejected, _ = ours.sequence_logps(ours.model, batch)
        ref_chosen, ref_rejected = ours.reference_logps(batch)
    logratios = torch.cat([chosen - ref_chosen, rejected - ref_rejected])
    assert logratios.abs().max() < 40 and logratios.std() > 0.5, logratios

    our_loss, our_grads = loss_and_grads(ours)
    trl_loss, trl_grads = loss_and_grads(trl)
    torch.testing.assert_close(our_loss, trl_loss, rtol=1e-5, atol=1e-6)
    assert our_grads.keys() == trl_grads.keys() and our_grads
    assert any(grad.abs().max() > 0 for grad in trl_grads.values())
    for name, grad in trl_grads.items():
        scale = max(1.0, float(grad.abs().max()))
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-4, atol=1e-6 * scale, msg=name)


@pytest.mark.parametrize("case", [name for name in CASES if name != "reverse_kl"])
def test_a_divergence_changes_the_loss_of_the_first_batch(case, tiny_model_dir, reference_dir, tmp_path):
    """Ours and TRL's alike: the divergence reaches the loss (TRL 0.28's config option once did not)."""
    ours_flags, trl_flags = CASES[case]
    losses = {}
    for name, flags in (("ours", ours_flags), ("ours_rkl", CASES["reverse_kl"][0])):
        losses[name] = loss_and_grads(
            make(FDPOTrainer, FDPOConfig, tiny_model_dir, reference_dir, tmp_path / name, **flags)
        )[0]
    for name, flags in (("trl", trl_flags), ("trl_rkl", CASES["reverse_kl"][1])):
        losses[name] = loss_and_grads(
            make(DPOTrainer, DPOConfig, tiny_model_dir, reference_dir, tmp_path / name, **flags)
        )[0]
    assert abs(losses["ours"] - losses["ours_rkl"]) > 1e-3 and abs(losses["trl"] - losses["trl_rkl"]) > 1e-3
    torch.testing.assert_close(losses["ours"], losses["trl"], rtol=1e-5, atol=1e-6)


def test_policy_equal_to_reference_gives_log_2(tiny_model_dir, tmp_path):
    """Without the nudged reference every log-ratio is 0: the loss is ln 2 whatever the divergence."""
    trainer = make(FDPOTrainer, FDPOConfig, tiny_model_dir, tiny_model_dir, tmp_path, divergence="jsd")
    loss, _ = loss_and_grads(trainer)
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-6)
