"""Stage 2: K continuations per prompt from the SFT model, batched, resumable.

Output: one JSONL record per prompt in the study's format, `{idx, prompt, answers}`, where each answer is
prompt + continuation. The decodings themselves are in `common/generation.py`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from common.appendlog import AppendLog, settings_hash
from common.errors import InputError
from common.generation import Decoding, generate_batch
from common.models import default_device, load_policy, model_version


def generation_settings(
    prompts: list[str], model_name: str, decoding: Decoding, seed: int, batch_size: int
) -> dict:
    """What the generations depend on; every prompt's text counts, so changing any one of them (not only
    the first, or their number) makes other generations, never a resumed old file. A local model counts
    by its weights too: an SFT model retrained in its folder must not pass for the one that wrote them
    (`model_version`), and a Hub model by its commit, so a pushed-to repo makes other generations too."""
    settings = {"model": model_name, "decoding": asdict(decoding), "seed": seed, "batch_size": batch_size,
                "prompts": len(prompts), "prompts_hash": settings_hash(prompts)}  # fmt: skip
    return {**settings, **model_version(model_name)}


def run_generate(
    prompts: list[str],
    out_path: Path,
    model_name: str,
    decoding: Decoding,
    batch_size: int = 32,
    seed: int = 0,
    device: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `{idx, prompt, answers}` for every prompt to `out_path`, resuming a killed run."""
    if batch_size < 1:
        raise InputError(f"--batch_size must be >= 1, got {batch_size}")
    log = AppendLog(out_path, generation_settings(prompts, model_name, decoding, seed, batch_size))
    done = log.open(overwrite=overwrite, batch=batch_size)
    if log.complete:
        return out_path
    policy = load_policy(model_name, device or default_device(), flag="--sft_model")
    model, tokenizer = policy.model, policy.tokenizer
    with tqdm(total=len(prompts), initial=done, desc="generate", unit="prompt") as progress:
        for start in range(done, len(prompts), batch_size):  # whole batches only: done is a multiple
            batch = prompts[start : start + batch_size]
            continuations = generate_batch(model, tokenizer, batch, decoding, seed=seed + start)
            log.append(
                {"idx": start + i, "prompt": prompt, "answers": [prompt + text for text in texts]}
                for i, (prompt, texts) in enumerate(zip(batch, continuations, strict=True))
            )
            progress.update(len(batch))
    log.finish()
    return out_path
