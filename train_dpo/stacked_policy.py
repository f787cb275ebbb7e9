"""Saved LoRA adapters over one base model, loaded as one policy whose batch blocks are the adapters.

Generation samples from K training runs in one `generate` call this way (`train_dpo/generate.py`): the
base is loaded once, `lora_stack.stack_adapters` puts the K adapters beside its frozen weights, and inside
`stack.routed()` block k of the batch goes through adapter k. Only adapters that the stack reproduces
exactly are stacked: local folders of plain LoRA weights (safetensors), nothing PEFT would add on top of
the low-rank updates. Adapters share one stack when they have the same base, rank and target modules and
read text with the same tokenizer (the prompts are encoded once for all K).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftType
from transformers import AutoModelForCausalLM

from common.errors import InputError
from common.models import adapter_config, default_device, for_inference, load_tokenizer
from common.weights import ADAPTER_WEIGHTS, LOAD_ERRORS, load_error, load_kwargs
from train_dpo.lora_stack import LoRAStack, stack_adapters

# LoraConfig fields that may take any value in a stacked adapter: names and bookkeeping, initialisation
# (the weights are loaded), dropout (off in eval mode), and what the stack reads itself (rank, targets,
# alpha, the Conv1D layout). Any other field away from its default changes the forward pass: not stacked.
FREE_FIELDS = frozenset({"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path",
                         "revision", "inference_mode", "r", "target_modules", "lora_alpha", "lora_dropout",
                         "fan_in_fan_out", "init_lora_weights"})  # fmt: skip


def _fixed_fields(config: LoraConfig) -> dict:
    return {key: value for key, value in config.to_dict().items() if key not in FREE_FIELDS}


DEFAULT_FIXED_FIELDS = _fixed_fields(LoraConfig())


def stackable_adapter(name: str) -> LoraConfig | None:
    """The config of `name` if it is a local plain-LoRA adapter folder with safetensors weights, else None."""
    folder = Path(name)
    if not (folder / "adapter_config.json").is_file() or not (folder / ADAPTER_WEIGHTS).is_file():
        return None
    config = adapter_config(name)
    # A string of target modules is a regex to PEFT and a module name to the stack.
    plain = (isinstance(config, LoraConfig) and config.peft_type == PeftType.LORA
             and not isinstance(config.target_modules, str)
             and _fixed_fields(config) == DEFAULT_FIXED_FIELDS)  # fmt: skip
    return config if plain else None


def tokenizer_fingerprint(tokenizer) -> str:
    """What decides how a tokenizer encodes and pads a batch: its full pipeline and its special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pipeline = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    specials = repr((sorted(tokenizer.special_tokens_map.items()), tokenizer.padding_side))
    return hashlib.sha256((pipeline + specials).encode()).hexdigest()


def stack_key(name: str, config: LoraConfig, flag: str = "--models") -> tuple:
    """Adapters with equal keys can share a stack: the same base (and revision), rank, targets and layer
    layout, and a tokenizer that encodes alike."""
    base = config.base_model_name_or_path
    try:
        tokenizer = tokenizer_fingerprint(load_tokenizer(name, base))
    except LOAD_ERRORS as error:
        raise load_error(f"{flag} {name}", error) from None
    targets = tuple(sorted(config.target_modules))
    return base, config.revision, config.r, targets, config.fan_in_fan_out, tokenizer


@dataclass
class StackedPolicy:
    names: list[str]  # the adapters, in block order
    model: torch.nn.Module  # the base with the stack in it: the base alone outside `stack.routed()`
    stack: LoRAStack
    tokenizer: object
    base: str


def load_stacked_policy(names: list[str], device: str | None = None, flag: str = "--models") -> StackedPolicy:
    """Adapters that share a `stack_key`, over their base loaded once, ready as `load_policy` leaves a policy.

    The tokenizer follows `load_policy`'s rule for the first adapter (equal keys: the same tokenizer).
    """
    config = adapter_config(names[0])
    base, device = config.base_model_name_or_path, device or default_device()
    try:
        model = AutoModelForCausalLM.from_pretrained(base, revision=config.revision, **load_kwargs())
        tokenizer = load_tokenizer(names[0], base)
    except LOAD_ERRORS as error:
        raise load_error(f"{flag} {names[0]}", error) from None
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))  # as PEFT's auto class does for a larger tokenizer
    try:
        stack = stack_adapters(model, names)
    except ValueError as error:  # saved weights that do not fit their own config's rank or targets
        raise InputError(f"{flag}: {error}") from None
    model = for_inference(model, device)
    stack.scaling = stack.scaling.to(device)  # a (K, 1, 1) tensor: it must sit where the activations are
    return StackedPolicy(names=list(names), model=model, stack=stack, tokenizer=tokenizer, base=base)
