"""How every model, classifier and adapter is loaded: never the repository's code, never a full unpickle.

safetensors weights are used whenever a model has them. Some Hub models (the study's `lvwerra/*`
among them) ship only pickle checkpoints (`pytorch_model.bin`); transformers and PEFT read those with
torch's restricted unpickler (`torch.load(weights_only=True)`), which rebuilds tensors and refuses any
other object, so a checkpoint cannot run code when loaded. That is the default. Set
FDPO_SAFETENSORS_ONLY=1 to refuse pickle checkpoints altogether. No setting turns on `trust_remote_code`.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from safetensors import SafetensorError

from common.errors import InputError, first_line

SAFETENSORS_ONLY_ENV = "FDPO_SAFETENSORS_ONLY"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# What a refused or unreadable checkpoint raises; PEFT lets the restricted unpickler's own error through.
# A local folder's files are checked first (common.readers.check_model_folder), naming the damaged file;
# safetensors' own error stays here for the files a loader fetches from the Hub cache.
LOAD_ERRORS = (OSError, ValueError, pickle.UnpicklingError, SafetensorError)


def safetensors_only() -> bool:
    return os.environ.get(SAFETENSORS_ONLY_ENV, "").strip().lower() in ("1", "true", "yes")


def load_kwargs() -> dict:
    """Arguments for every model `from_pretrained`: safetensors first (only, if strict), no remote code."""
    return {"use_safetensors": True if safetensors_only() else None, "trust_remote_code": False}


def check_adapter_weights(name: str) -> None:
    """Under FDPO_SAFETENSORS_ONLY, refuse a PEFT adapter without safetensors weights."""
    if not safetensors_only():
        return
    if Path(name).is_dir():
        present = (Path(name) / ADAPTER_WEIGHTS).is_file()
    else:
        from huggingface_hub import file_exists, try_to_load_from_cache

        try:
            present = file_exists(name, ADAPTER_WEIGHTS)
        except Exception:  # offline or unreachable: what the local cache holds decides
            present = isinstance(try_to_load_from_cache(name, ADAPTER_WEIGHTS), str)
    if not present:
        raise InputError(f"adapter {name}: no {ADAPTER_WEIGHTS} ({strict_hint()})")


def strict_hint() -> str:
    return f"{SAFETENSORS_ONLY_ENV}=1 loads safetensors weights only; unset it to read pickle weights safely"


def load_error(what: str, error: Exception) -> InputError:
    """One line for a model that would not load, naming the reason a user can act on."""
    message = first_line(error)
    if "safetensors" in message.lower() and safetensors_only():
        message = f"{message}; {strict_hint()}"
    if unsafe_pickle(error):
        message = "its pickle checkpoint holds objects other than tensors, which are never unpickled"
    if "trust_remote_code" in str(error):
        message = "it needs its repository's own code (trust_remote_code), which the project never runs"
    return InputError(f"{what}: cannot load ({message})")


def unsafe_pickle(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is torch's restricted unpickler refusing an object."""
    while error is not None:
        if "weights only load failed" in str(error).lower() or "weights_only" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False
