"""K LoRA adapters over one frozen base model, stacked along the batch: a grid's runs in one forward pass.

A batch of K equal blocks goes through each frozen base weight in one matmul; block k's low-rank update
uses adapter k only, one `torch.bmm` over the stacked A and B for all K. The adapters share no
parameter, so the sum of the blocks' losses gives each adapter exactly the gradient its own loss would.
Outside `LoRAStack.routed()` every layer is its base layer alone: the reference policy, and what TRL's
reference precompute sees. Each adapter saves to, and loads from, a standard PEFT folder.

Every adapter, stacked or alone (PEFT), starts from `initial_lora_A(seed)`: A drawn as PEFT draws it
(Kaiming-uniform, a = sqrt(5)) from a generator of the run's own seed, B zero. So a run's start depends on
its seed only, not on whatever else drew from the global generator before PEFT wrapped the model.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # how PEFT names a wrapped module's weights in its saved file


def initial_lora_A(shapes: list[tuple[int, int]], seed: int) -> list[torch.Tensor]:
    """The A matrices (rank x in) of one run's adapter, in module order, from a generator of `seed`."""
    generator = torch.Generator().manual_seed(seed)
    weights = []
    for shape in shapes:
        weight = torch.empty(shape)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        weights.append(weight)
    return weights


def seed_peft_lora(model: nn.Module, seed: int, adapter: str = "default") -> None:
    """Re-draw a PEFT model's fresh LoRA adapter from `seed` (A as `initial_lora_A`, B zero)."""
    layers = [
        module for module in model.modules() if isinstance(module, LoraLayer) and adapter in module.lora_A
    ]
    shapes = [tuple(layer.lora_A[adapter].weight.shape) for layer in layers]
    with torch.no_grad():
        for layer, weight in zip(layers, initial_lora_A(shapes, seed), strict=True):
            layer.lora_A[adapter].weight.copy_(weight)
            layer.lora_B[adapter].weight.zero_()


class StackedLoRA(nn.Module):
    """A frozen linear layer (GPT-2's Conv1D or nn.Linear) plus K LoRA adapters, one per batch block."""

    def __init__(self, base_layer: nn.Module, stack: LoRAStack, rank: int, dropout: float):
        super().__init__()
        if isinstance(base_layer, Conv1D):
            in_features, out_features = base_layer.weight.shape
        elif isinstance(base_layer, nn.Linear):
            in_features, out_features = base_layer.in_features, base_layer.out_features
        else:
            raise TypeError(f"stacked LoRA wraps Conv1D or nn.Linear layers, not {type(base_layer).__name__}")
        self.base_layer, self._stack = base_layer, [stack]  # a list: the stack is no submodule
        # One Parameter per run and matrix (PEFT's shapes): each run gets its own optimizer group.
        self.lora_A = nn.ParameterList(torch.zeros(rank, in_features) for _ in range(stack.count))
        self.lora_B = nn.ParameterList(torch.zeros(out_features, rank) for _ in range(stack.count))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        stack = self._stack[0]
        if not stack.active:
            return out
        blocks = self.dropout(x).reshape(stack.count, -1, x.shape[-1])  # (K, rows of a block x positions, in)
        down = torch.bmm(blocks, torch.stack(tuple(self.lora_A)).transpose(1, 2))
        up = torch.bmm(down, torch.stack(tuple(self.lora_B)).transpose(1, 2))
        return out + (up * stack.scaling.to(up.device, up.dtype)).reshape(out.shape)


class LoRAStack:
    """The K adapters stacked into a model: routing, per-run parameters, seeding, saving and loading."""

    def __init__(self, model: nn.Module, count: int, config: LoraConfig):
        if count < 1:
            raise ValueError(f"a LoRA stack needs at least one adapter, got {count}")
        self.count, self.config, self.active = count, config, False
        self.scaling = torch.full((count, 1, 1), config.lora_alpha / config.r)
        targets = [config.target_modules] if isinstance(config.target_modules, str) else config.target_modules
        names = [name for name, _ in model.named_modules()
                 if any(name == t or name.endswith(f".{t}") for t in targets)]  # fmt: skip
        if not names:
            raise ValueError(f"no module of the model matches the LoRA targets {sorted(targets)}")
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.layers: dict[str, StackedLoRA] = {}
        for name in names:
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            layer = StackedLoRA(getattr(owner, child), self, config.r, config.lora_dropout)
            layer.to(next(layer.base_layer.parameters()).device)
            setattr(owner, child, layer)
            self.layers[name] = layer

    @contextlib.contextmanager
    def routed(self):
        """Inside: a batch of `count` equal blocks, block k through adapter k. Outside: the base model."""
        previous, self.active = self.active, True
        try:
            yield
        finally:
            self.active = previous

    def parameters_of(self, run: int) -> list[nn.Parameter]:
        return [p for layer in self.layers.values() for p in (layer.lora_A[run], layer.lora_B[run])]

    def seed(self, run: int, seed: int) -> None:
        """Adapter `run` as a fresh PEFT adapter of a run with this seed would start (`seed_peft_lora`)."""
        shapes = [tuple(layer.lora_A[run].shape) for layer in self.layers.values()]
        with torch.no_grad():
            for layer, weight in zip(self.layers.values(), initial_lora_A(shapes, seed), strict=True):
                layer.lora_A[run].copy_(weight)
                layer.lora_B[run].zero_()

    def adapter_state(self, run: int) -> dict[str, torch.Tensor]:
        """Adapter `run`'s weights under the names PEFT saves them with."""
        state = {}
        for name, layer in self.layers.items():
            state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A[run].detach().cpu().contiguous()
            state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B[run].detach().cpu().contiguous()
        return state

    def load_adapter_state(self, run: int, state: dict[str, torch.Tensor], source: str) -> None:
        expected = set(self.adapter_state(run))
        if set(state) != expected:
            missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
            raise ValueError(
                f"{source}: adapter weights do not fit the stack (missing {missing}, unexpected {extra})"
            )
        with torch.no_grad():
            for name, layer in self.layers.items():
                layer.lora_A[run].copy_(state[f"{PEFT_PREFIX}{name}.lora_A.weight"])
                layer.lora_B[run].copy_(state[f"{PEFT_PREFIX}{name}.lora_B.weight"])

    def state(self) -> dict[str, torch.Tensor]:
        """Every adapter's weights, for a checkpoint of the whole stack."""
        return {
            f"run{run}/{key}": value
            for run in range(self.count)
            for key, value in self.adapter_state(run).items()
        }

    def load_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        for run in range(self.count):
            prefix = f"run{run}/"
            self.load_adapter_state(
                run, {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, source
            )


def stack_adapters(model: nn.Module, folders: list[str]) -> LoRAStack:
    """Load saved PEFT LoRA adapters (same rank and targets) into one stack over `model`, in that order.

    Each keeps its own lora_alpha / r scaling. A Hub id stands for its downloaded folder.
    """
    from huggingface_hub import snapshot_download

    configs, paths = [], []
    for name in folders:
        path = Path(name) if Path(name).exists() else Path(snapshot_download(name))
        configs.append(LoraConfig.from_pretrained(str(path)))
        paths.append(path)
    shape = {(c.r, tuple(sorted(c.target_modules)), c.fan_in_fan_out) for c in configs}
    if len(shape) != 1:
        raise ValueError(
            f"adapters {', '.join(folders)} differ in rank or target modules: they cannot be stacked"
        )
    stack = LoRAStack(model, len(folders), configs[0])
    stack.scaling = torch.tensor([c.lora_alpha / c.r for c in configs]).view(-1, 1, 1)
    for run, path in enumerate(paths):
        stack.load_adapter_state(run, load_file(str(path / ADAPTER_WEIGHTS)), str(path))
    return stack


def write_peft_adapter(
    folder: Path, config: LoraConfig, state: dict[str, torch.Tensor], base_model: str
) -> None:
    """One adapter as a standard PEFT folder (config and weights, PEFT's names) that `PeftModel` loads."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {**config.to_dict(), "base_model_name_or_path": base_model, "inference_mode": True}
    LoraConfig(**settings).save_pretrained(str(folder))
    save_file(state, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
