"""What a training run's result depends on, hashed, so that a checkpoint is only resumed by the run that
wrote it.

A run directory's `run_config.json` carries a fingerprint: every setting that can change the weights,
the SHA-256 of the pairs it trains and evaluates on, and that of the starting model's weights and
vocabulary. A checkpoint left by a run with another fingerprint is not resumed: resuming the final
checkpoint of an old config trains 0 steps and passes the old weights off as the new run's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from datasets import DatasetDict

from common.appendlog import describe_changes, settings_hash
from train_dpo.divergences import imported_divergence, values_sha256
from train_dpo.user_code import divergence_source_sha256

logger = logging.getLogger("train_dpo")

RUN_CONFIG = "run_config.json"  # in a run's folder: its settings and fingerprint (train.record_run)

# Settings that name where a run writes or reports, never what it learns (logging_dir carries the time), and
# where its inputs are: the pairs and the starting model are hashed by content (`data_sha256`,
# `model_sha256`), so a moved results or models folder retrains nothing.
UNHASHED = frozenset(
    {"dataset", "model", "output_dir", "logging_dir", "overwrite_output_dir", "resume",
     "resume_from_checkpoint", "preset",
     "ref_logps_cache", "report_to", "run_name", "local_rank", "push_to_hub", "push_to_hub_model_id",
     "push_to_hub_organization", "push_to_hub_token", "hub_model_id", "hub_strategy", "hub_token",
     "hub_private_repo", "hub_always_push", "hub_revision"}
)  # fmt: skip


# Settings added after runs were recorded, whose default is what those runs did: recorded only when set, so
# the fingerprints of earlier runs still match and their checkpoints still resume.
HASHED_WHEN_SET = frozenset({"length_buckets"})


def run_settings(script_args, training_args) -> dict:
    """Every flag of a run that can change its weights, flat and JSON-able (the preset is resolved)."""
    training = training_args.to_dict()
    for key in training:  # to_dict masks every `*_token`, but only the Hub's (unhashed) are secrets
        if key.endswith("_token") and key not in UNHASHED:
            training[key] = getattr(training_args, key)
    merged = {**asdict(script_args), **training}
    if merged.get("use_peft"):  # how the adapter starts (train_dpo/lora_stack.py); earlier runs drew it else
        merged["lora_init"] = "kaiming_uniform from the run's seed"
    if ":" in str(merged.get("divergence", "")):  # a user's module: its code, not only its name
        merged["divergence_source_sha256"] = divergence_source_sha256(merged["divergence"])
        merged["divergence_values_sha256"] = values_sha256(imported_divergence(merged["divergence"]))
    for key in HASHED_WHEN_SET:
        if not merged.get(key):
            merged.pop(key, None)
    return {key: value for key, value in sorted(merged.items()) if key not in UNHASHED}


def data_sha256(data: DatasetDict) -> str:
    """SHA-256 of every pair a run uses (after filtering and subsampling), split by split."""
    digest = hashlib.sha256()
    for split in sorted(data):
        for column in ("prompt", "chosen", "rejected"):
            digest.update(json.dumps([split, column, list(data[split][column])], ensure_ascii=False).encode())
    return digest.hexdigest()


def model_sha256(model, tokenizer) -> str:
    """SHA-256 of the starting weights (name and bytes of every tensor) and of the vocabulary."""
    digest = hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_fingerprint(script_args, training_args, data: DatasetDict, model, tokenizer) -> dict:
    """The run's settings and the content hashes of its inputs, with one hash over all of them."""
    return fingerprint_of(
        run_settings(script_args, training_args), data_sha256(data), model_sha256(model, tokenizer)
    )


def fingerprint_of(settings: dict, data_hash: str, model_hash: str) -> dict:
    """The fingerprint record of settings and input hashes, as `run_config.json` keeps it."""
    fingerprint = {"settings": settings, "data_sha256": data_hash, "model_sha256": model_hash}
    return json.loads(json.dumps({**fingerprint, "hash": settings_hash(fingerprint)}, default=str))


def recorded_fingerprint(output_dir: Path | str) -> dict | None:
    """The fingerprint in `output_dir/run_config.json`, or None (no run there, or one from before)."""
    try:
        return json.loads((Path(output_dir) / RUN_CONFIG).read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def changes(old: dict | None, new: dict) -> str:
    """What differs between two fingerprints, e.g. `weight_decay 0.0 → 0.1` or `the pairs`."""
    if not old:
        return "no record of its settings"
    said = [describe_changes(old.get("settings", {}), new["settings"])]
    said += [what for key, what in (("data_sha256", "the pairs"), ("model_sha256", "the starting model"))
             if old.get(key) != new[key]]  # fmt: skip
    return ", ".join(item for item in said if item)


def discard_stale_checkpoints(output_dir: Path | str, fingerprint: dict) -> None:
    """Remove the checkpoints of `output_dir` when another config wrote them, before this run's config is
    recorded there: they must never be resumed under it."""
    output_dir = Path(output_dir)
    stale = sorted(output_dir.glob("checkpoint-*"))
    old = recorded_fingerprint(output_dir)
    if not stale or (old or {}).get("hash") == fingerprint["hash"]:
        return
    logger.warning(
        "%s: its checkpoints were written with other settings (%s); removed, the run starts from scratch",
        output_dir,
        changes(old, fingerprint),
    )
    for path in stale:
        shutil.rmtree(path)
