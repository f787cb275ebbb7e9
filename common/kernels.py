"""Numerically equivalent, faster modules swapped into loaded models.

GPT-2's `gelu_new` is the tanh approximation of GELU written as eight elementwise tensor operations,
each a pass over the MLP's 4x-wide activations and each saved for the backward pass. PyTorch computes
the same formula in one fused kernel (`F.gelu(approximate="tanh")`, transformers' `gelu_pytorch_tanh`),
equal to within float rounding (2.4e-7 in float32). The model's config is left as it was, so what is
saved loads the same anywhere.
"""

from __future__ import annotations

import torch
from transformers.activations import GELUTanh, NewGELUActivation


def fuse_gelu(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with every `gelu_new` activation computed by PyTorch's fused tanh-GELU (in place)."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is NewGELUActivation:
                setattr(parent, name, GELUTanh())
    return model
