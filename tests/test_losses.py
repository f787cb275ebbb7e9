"""f-DPO losses: closed forms, the original study's formula, and stability (TRL's own: test_trl_agreement.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from train_dpo.divergences import get_divergence
from train_dpo.losses import LOSS_TYPES, fdpo_loss

STUDY = [("reverse_kl", None), ("forward_kl", None), ("jsd", None), ("alpha", 0.3), ("alpha", 0.7)]
EVERY = STUDY + [("jeffreys", None), ("neyman_chi2", None)]

# f'(u) written with u itself, as the study's trainer did; valid where u neither over- nor underflows.
NAIVE_F_PRIME = {
    "reverse_kl": lambda u, a: torch.log(u) + 1,
    "forward_kl": lambda u, a: -1 / u,
    "jsd": lambda u, a: torch.log(2 * u / (1 + u)),
    "alpha": lambda u, a: (1 - u ** (-a)) / a,
    "jeffreys": lambda u, a: torch.log(u) + 1 - 1 / u,
    "neyman_chi2": lambda u, a: 1 - 1 / u**2,
}


def test_hand_computed_values():
    zero, log2 = torch.tensor([0.0]), torch.tensor([math.log(2.0)])
    # Policy equal to reference: margin 0, loss log 2 whatever the divergence.
    for name, alpha in EVERY:
        loss, _, _ = fdpo_loss(zero, zero, get_divergence(name, alpha), beta=0.1)
        assert loss.item() == pytest.approx(math.log(2.0))
    # Forward KL, u_w = 2, u_l = 1, beta = 1: f'(2) - f'(1) = -1/2 + 1 = 1/2.
    loss, chosen, rejected = fdpo_loss(log2, zero, get_divergence("forward_kl"), beta=1.0)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.5)))
    assert (chosen.item(), rejected.item()) == pytest.approx((-0.5, -1.0))
    # Hinge, JSD, u_w = 2, u_l = 1, beta = 2: margin = 2 log(4/3), loss = 1 - margin.
    loss, _, _ = fdpo_loss(log2, zero, get_divergence("jsd"), beta=2.0, loss_type="hinge")
    assert loss.item() == pytest.approx(1 - 2 * math.log(4 / 3), rel=1e-6)


@pytest.mark.parametrize(("name", "alpha"), EVERY)
@pytest.mark.parametrize("beta", [0.1, 1.0, 10.0])
def test_matches_the_study_formula(name, alpha, beta):
    generator = torch.Generator().manual_seed(0)
    chosen, rejected = (torch.randn(256, generator=generator, dtype=torch.float64) * 3 for _ in range(2))
    f_prime = NAIVE_F_PRIME[name]
    expected = -F.logsigmoid(beta * (f_prime(chosen.exp(), alpha) - f_prime(rejected.exp(), alpha)))
    loss, _, _ = fdpo_loss(chosen, rejected, get_divergence(name, alpha), beta)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize(("name", "alpha"), EVERY)
@pytest.mark.parametrize("loss_type", list(LOSS_TYPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_loss_and_gradient_across_extreme_log_ratios(name, alpha, loss_type, dtype):
    grid = torch.tensor([-1e4, -1e3, -200.0, -50.0, -1.0, 0.0, 1.0, 50.0, 200.0, 1e3, 1e4])
    chosen, rejected = torch.meshgrid(grid, grid, indexing="ij")  # every pairing of extremes
    random = torch.empty(4096).uniform_(-1e4, 1e4, generator=torch.Generator().manual_seed(1))
    chosen = torch.cat([chosen.flatten(), random[:2048]]).to(dtype).requires_grad_()
    rejected = torch.cat([rejected.flatten(), random[2048:]]).to(dtype).requires_grad_()
    for beta in (0.1, 10.0):
        losses, chosen_rewards, rejected_rewards = fdpo_loss(
            chosen, rejected, get_divergence(name, alpha), beta, loss_type=loss_type
        )
        chosen_grad, rejected_grad = torch.autograd.grad(losses.mean(), (chosen, rejected))
        for tensor in (losses, chosen_rewards, rejected_rewards, chosen_grad, rejected_grad):
            assert torch.isfinite(tensor).all()


@pytest.mark.parametrize(("name", "alpha"), EVERY)
def test_margin_orders_like_the_log_ratios(name, alpha):
    # f' strictly increasing: the chosen side wins when its log-ratio is larger, even near -1e4 where
    # exp(-log u) overflows. (For large positive log u, f' of forward KL, JSD, alpha saturates in fp32.)
    chosen = torch.tensor([-1e4, -30.0, 5.0, 1.0])
    rejected = torch.tensor([-1e4 - 100, -31.0, 4.0, 0.0])
    _, chosen_rewards, rejected_rewards = fdpo_loss(chosen, rejected, get_divergence(name, alpha), 1.0)
    assert (chosen_rewards > rejected_rewards).all()


def test_rejects_bad_arguments():
    zero = torch.zeros(1)
    with pytest.raises(ValueError, match="beta must be > 0"):
        fdpo_loss(zero, zero, get_divergence("jsd"), beta=0.0)
    with pytest.raises(ValueError, match="unknown loss_type"):
        fdpo_loss(zero, zero, get_divergence("jsd"), beta=1.0, loss_type="ipo")
