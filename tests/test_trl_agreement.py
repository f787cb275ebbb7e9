"""Our f-DPO losses against TRL 0.28's own f-divergence formulas, on one tiny trainer each."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_config import FDivergenceType

from train_dpo.trainer import FDPOConfig, FDPOTrainer

PAIRS = Dataset.from_list([{"prompt": "A film", "chosen": " that shines.", "rejected": " that drags."}] * 2)


def make(trainer_cls, config_cls, model_dir, tmp_path, **kwargs):
    args = config_cls(output_dir=str(tmp_path), report_to="none", bf16=False, beta=0.7, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return trainer_cls(model=model, args=args, train_dataset=PAIRS, processing_class=tokenizer)


def random_logps():
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(64, generator=generator) * 4 - 20 for _ in range(4)]


# (our flags, TRL's divergence, TRL's alpha coefficient): TRL 0.28's coefficient is the paper's alpha.
CASES = [
    ({"divergence": "reverse_kl"}, FDivergenceType.REVERSE_KL, 1.0),
    ({"divergence": "jsd"}, FDivergenceType.JS_DIVERGENCE, 1.0),
    ({"divergence": "alpha", "alpha": 0.3}, FDivergenceType.ALPHA_DIVERGENCE, 0.3),
    ({"divergence": "alpha", "alpha": 0.7}, FDivergenceType.ALPHA_DIVERGENCE, 0.7),
]


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge"])
@pytest.mark.parametrize(("ours", "trl_type", "trl_alpha"), CASES, ids=["rkl", "jsd", "alpha03", "alpha07"])
def test_same_loss_as_trl(ours, trl_type, trl_alpha, loss_type, tiny_model_dir, tmp_path):
    fdpo = make(FDPOTrainer, FDPOConfig, tiny_model_dir, tmp_path / "ours", **ours)
    trl = make(DPOTrainer, DPOConfig, tiny_model_dir, tmp_path / "trl", f_alpha_divergence_coef=trl_alpha)
    trl.f_divergence_type = trl_type  # see test_trl_ignores_its_config_option
    logps = random_logps()
    our_losses, _, _ = fdpo.dpo_loss(*logps, loss_type=loss_type)
    trl_losses, _, _ = trl.dpo_loss(*logps, loss_type=loss_type)
    torch.testing.assert_close(our_losses, trl_losses, rtol=1e-5, atol=1e-6)


def test_trl_ignores_its_config_option(tiny_model_dir, tmp_path):
    """TRL 0.28.0 stores f_divergence_type as a string but compares it with an enum: JS trains as DPO.

    If this starts failing, TRL fixed it; the comparison above can then use the config path.
    """
    trl_js = make(DPOTrainer, DPOConfig, tiny_model_dir, tmp_path / "js", f_divergence_type="js_divergence")
    trl_dpo = make(DPOTrainer, DPOConfig, tiny_model_dir, tmp_path / "dpo")
    logps = random_logps()
    torch.testing.assert_close(trl_js.dpo_loss(*logps)[0], trl_dpo.dpo_loss(*logps)[0])
