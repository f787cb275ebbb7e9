"""f-DPO preference losses as pure functions of sequence log-ratios.

The paper (arXiv 2309.16240, Eq. 9) trains with -log sigmoid(beta f'(u_w) - beta f'(u_l)); the
study's IMDb runs also used the hinge form. Any registered divergence combines with any loss here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from train_dpo.divergences import Divergence
from train_dpo.loss_names import ONLINE_LOSS as ONLINE_LOSS  # re-exported: defined without torch
from train_dpo.loss_names import PROBABILISTIC_LOSSES as PROBABILISTIC_LOSSES

# Loss shapes on the divergence-aware margin m = beta * (f'(u_w) - f'(u_l)).
LOSS_TYPES = {
    "sigmoid": "-log sigmoid(m)  (DPO, paper Eq. 9)",
    "hinge": "max(0, 1 - m)  (SLiC-style hinge)",
}


def fdpo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    divergence: Divergence,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair f-DPO losses and the implicit rewards beta * f'(u).

    Args:
        chosen_logratios: log pi(y_w|x) - log pi_ref(y_w|x), summed over tokens. Shape (B,).
        rejected_logratios: the same for y_l. Shape (B,).
        divergence: supplies f' of the log-ratio.
        beta: strength of the divergence constraint (> 0).
        loss_type: one of LOSS_TYPES.
        label_smoothing: conservative-DPO label noise for `sigmoid` (0 = none).

    Returns:
        (losses, chosen_rewards, rejected_rewards), each of shape (B,), in float32 (or float64 when
        the inputs are float64). The rewards are beta * f'(u), the reward that the f-DPO policy is
        optimal for (paper, Eq. 8), so the margin between them is what the loss acts on.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type '{loss_type}'; choose one of: {', '.join(LOSS_TYPES)}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    # bfloat16 has 8 bits of mantissa: f'(u_w) - f'(u_l) of two large, close numbers would be noise.
    compute_dtype = torch.float64 if chosen_logratios.dtype == torch.float64 else torch.float32
    chosen_rewards = beta * divergence.f_prime(chosen_logratios.to(compute_dtype))
    rejected_rewards = beta * divergence.f_prime(rejected_logratios.to(compute_dtype))
    margin = chosen_rewards - rejected_rewards

    if loss_type == "sigmoid":
        losses = -F.logsigmoid(margin) * (1 - label_smoothing) - F.logsigmoid(-margin) * label_smoothing
    else:  # hinge
        losses = torch.relu(1 - margin)
    return losses, chosen_rewards, rejected_rewards


def weighted_fdpo_loss(logratios, divergence, beta, loss_types, loss_weights, label_smoothing=0.0):
    """TRL's combination of several loss types (`--loss_type a b --loss_weights x y`): the weighted sum
    of their batch means, with the implicit rewards of the last one (TRL logs those).

    Returns (loss, chosen_rewards, rejected_rewards)."""
    loss = 0.0
    for loss_type, weight in zip(loss_types, loss_weights or [1.0] * len(loss_types), strict=True):
        losses, chosen_rewards, rejected_rewards = fdpo_loss(
            *logratios, divergence, beta, loss_type=loss_type, label_smoothing=label_smoothing
        )
        loss = loss + weight * losses.mean()
    return loss, chosen_rewards, rejected_rewards
