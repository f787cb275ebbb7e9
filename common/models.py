"""Load a policy from wherever it lives: the one loader for the SFT generations, training's evaluation
and the published adapters.

A policy is a full model (Hub id or directory, e.g. the SFT base) or a PEFT adapter (a training run's
output directory, or a published adapter such as `therem/gpt_imdb_jsd_beta1e-1`). Adapters load through
PEFT's auto class, which fetches the base model named in the adapter config; their reference policy
is the same network with the adapter switched off.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import AutoPeftModelForCausalLM, PeftConfig, PeftModel
from peft.utils import SAFETENSORS_WEIGHTS_NAME as ADAPTER_SAFETENSORS
from peft.utils import WEIGHTS_NAME as ADAPTER_PICKLE
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

from common import imdb
from common.errors import InputError, check_model_source
from common.kernels import fuse_gelu
from common.readers import check_model_folder, read_json_object
from common.weights import LOAD_ERRORS, check_adapter_weights, load_error, load_kwargs

logger = logging.getLogger("models")

# One checkpoint's safetensors files and its pickle files (a full model's, an adapter's): with both in a
# folder, transformers and PEFT read the safetensors and never open the pickle.
WEIGHT_FORMATS = (
    ((SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME), (WEIGHTS_NAME, WEIGHTS_INDEX_NAME)),
    ((ADAPTER_SAFETENSORS,), (ADAPTER_PICKLE,)),
)


def model_version(name: str) -> dict[str, str]:
    """Which weights `name` stands for, for anything cached per model (its generations): a local folder's
    `weights_sha256`, a Hub id's `hub_commit`; empty where a Hub id cannot be resolved (loading it then
    fails in its own words).

    A name alone is not enough: a retrained run keeps its folder's name, and a Hub repo can be pushed to.
    """
    if Path(name).is_dir():
        return {"weights_sha256": weights_sha256(Path(name))}
    commit = hub_commit(name)
    return {"hub_commit": commit} if commit else {}


def hub_commit(repo_id: str) -> str | None:
    """The commit of `repo_id` that loading it reads: the Hub's newest, or offline the cached one."""
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    if imdb.looks_local(repo_id):  # a missing folder, not a Hub id
        return None
    if not imdb.offline():
        try:
            return HfApi().model_info(repo_id).sha
        except Exception:  # no network (the HTTP client's own errors), a bad id: the cache decides
            pass
    for filename in ("config.json", "adapter_config.json"):  # a full model's, an adapter's
        try:
            cached = try_to_load_from_cache(repo_id, filename)
        except HFValidationError:
            return None
        if isinstance(cached, str):  # .../snapshots/<commit>/<filename>
            return Path(cached).parent.name
    return None


def weights_sha256(folder: Path) -> str:
    """SHA-256 of a local model folder's weight files (an adapter's or a full model's)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        with path.open("rb") as handle:
            digest.update(path.name.encode() + hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def warn_shadowed_weights(name: str | None) -> None:
    """Warn, naming both files, when a local folder holds a checkpoint as safetensors and as pickle.

    The two may hold different weights (a pickle written over an old folder, or the other way round),
    and which one a run was evaluated with is otherwise invisible: the safetensors file is the one loaded.
    """
    if not name or not Path(name).is_dir():
        return
    folder = Path(name)
    for safe, pickle in WEIGHT_FORMATS:
        loaded = next((file for file in safe if (folder / file).is_file()), None)
        ignored = next((file for file in pickle if (folder / file).is_file()), None)
        if loaded and ignored:
            logger.warning("%s holds both %s and %s: loaded %s, ignored %s", folder, loaded, ignored, loaded,
                           ignored)  # fmt: skip


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Policy:
    name: str
    model: torch.nn.Module
    tokenizer: object
    base: str  # the model the reference log-probs come from (the policy itself for a full model)

    @property
    def is_adapter(self) -> bool:
        return isinstance(self.model, PeftModel)

    def reference(self):
        """Context in which `model` computes the reference policy's outputs (adapter disabled)."""
        return self.model.disable_adapter() if self.is_adapter else contextlib.nullcontext()


def adapter_config(name: str) -> PeftConfig | None:
    """The PEFT config of an adapter (a folder or a Hub id); None for anything else."""
    try:
        return PeftConfig.from_pretrained(name)
    except (ValueError, OSError):
        return None


def check_policy_source(name: str, flag: str = "--models") -> None:
    """InputError for a local path that is neither a model nor an adapter directory, or one holding a damaged
    file (named in the line); for an adapter, its local base model's folder is checked too."""
    adapter_json = Path(name) / "adapter_config.json"
    if not adapter_json.is_file():
        check_model_source(name, flag)
        return
    check_model_folder(name)
    base = read_json_object(adapter_json).get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise InputError(f"{adapter_json}: names no base model (base_model_name_or_path)")
    check_model_source(base, f"{flag} {name}: its base model")


def check_device(device: str | None, flag: str = "--device") -> None:
    """InputError for a device torch cannot name (`cpux`) or this machine lacks (`cuda` without a GPU), so
    that a flag is refused where it is parsed, not by a traceback once a model is loaded onto it."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"{flag} {device}: not a device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cpu":
        return
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"{flag} {device}: this machine has no CUDA GPU; use cpu, or leave the flag out")
        if parsed.index is not None and parsed.index >= count:
            raise InputError(f"{flag} {device}: this machine has cuda:0 to cuda:{count - 1} only")
        return
    if parsed.type == "mps" and torch.backends.mps.is_available():
        return
    raise InputError(f"{flag} {device}: not a device this machine has; use cpu or cuda")


def load_tokenizer(name: str, base: str):
    """The tokenizer a policy reads with: `name`'s own when its folder has one (a Hub id is assumed to),
    else its base model's; left padding for batched generation, EOS as padding when none is set."""
    has_tokenizer = (Path(name) / "tokenizer_config.json").is_file() or not Path(name).exists()
    tokenizer = AutoTokenizer.from_pretrained(
        name if has_tokenizer else base, padding_side="left", trust_remote_code=False
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def for_inference(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """A loaded policy as every reader uses it: fused GELU, on `device`, in eval mode (no dropout)."""
    return fuse_gelu(model).to(device).eval()


def load_policy(name: str, device: str | None = None, flag: str = "--models") -> Policy:
    """A full model or a PEFT adapter, in eval mode, with a left-padding tokenizer; errors name `flag`."""
    check_policy_source(name, flag)
    device = device or default_device()
    adapter = adapter_config(name)
    try:
        if adapter is not None:
            check_adapter_weights(name)
            base = adapter.base_model_name_or_path
            for folder in (name, base):
                warn_shadowed_weights(folder)
            model = AutoPeftModelForCausalLM.from_pretrained(name, **load_kwargs())  # for the base model
        else:
            warn_shadowed_weights(name)
            model = AutoModelForCausalLM.from_pretrained(name, **load_kwargs())
            base = name
        tokenizer = load_tokenizer(name, base)
    except LOAD_ERRORS as error:
        raise load_error(f"{flag} {name}", error) from None
    return Policy(name=name, model=for_inference(model, device), tokenizer=tokenizer, base=base)
