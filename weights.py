"""How every model, classifier and adapter is loaded: safetensors only, and never the repository's code.

Pickle checkpoints (`pytorch_model.bin`, `adapter_model.bin`) can run code when unpickled, and
`trust_remote_code` runs a repository's Python outright. The project refuses both. Some older Hub
models (the study's `lvwerra/*` among them) may ship only pickle weights: set
FDPO_ALLOW_PICKLE_WEIGHTS=1 to load those knowingly. No setting turns on `trust_remote_code`.
"""

from __future__ import annotations

import os
from pathlib import Path

from errors import InputError, first_line

ALLOW_PICKLE_ENV = "FDPO_ALLOW_PICKLE_WEIGHTS"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def pickle_allowed() -> bool:
    return os.environ.get(ALLOW_PICKLE_ENV, "").strip().lower() in ("1", "true", "yes")


def load_kwargs() -> dict:
    """Arguments for every model `from_pretrained`: safetensors unless opted out, no remote code."""
    return {"use_safetensors": None if pickle_allowed() else True, "trust_remote_code": False}


def check_adapter_weights(name: str) -> None:
    """Refuse a PEFT adapter without safetensors weights (PEFT would fall back to unpickling)."""
    if pickle_allowed():
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
        raise InputError(f"adapter {name}: no {ADAPTER_WEIGHTS} ({hint()})")


def hint() -> str:
    return f"only safetensors weights are loaded; set {ALLOW_PICKLE_ENV}=1 to allow pickle weights"


def load_error(what: str, error: Exception) -> InputError:
    """One line for a model that would not load, saying when the safetensors-only rule is the cause."""
    message = first_line(error)
    if "safetensors" in message.lower() and not pickle_allowed():
        message = f"{message}; {hint()}"
    if "trust_remote_code" in str(error):
        message = "it needs its repository's own code (trust_remote_code), which the project never runs"
    return InputError(f"{what}: cannot load ({message})")
