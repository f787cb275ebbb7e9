"""Stage 3: score every continuation with a reward model; the output is the study's scored format."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from common.appendlog import AppendLog, read_complete, settings_hash
from common.pairing import strip_prompt
from common.rewards import RewardModel


def run_score(
    generations_path: Path,
    out_path: Path,
    reward: RewardModel,
    batch_prompts: int = 64,
    overwrite: bool = False,
) -> Path:
    """Write `{idx, prompt, answers, rm_scores}` per prompt; each score is of the continuation alone."""
    records = read_complete(generations_path, "generate")
    settings = {
        "reward": reward.name,
        "generations": len(records),
        "generations_hash": settings_hash(records),  # other generations, even as many, are other scores
        "scored_text": "continuation",
    }
    log = AppendLog(out_path, settings)
    done = log.open(overwrite=overwrite, batch=batch_prompts)
    if log.complete:
        return out_path
    with tqdm(total=len(records), initial=done, desc="score", unit="prompt") as progress:
        for start in range(done, len(records), batch_prompts):
            batch = records[start : start + batch_prompts]
            texts = [strip_prompt(r["prompt"], answer) for r in batch for answer in r["answers"]]
            scores = iter(reward.score(texts))
            log.append({**r, "rm_scores": [next(scores) for _ in r["answers"]]} for r in batch)
            progress.update(len(batch))
    log.finish()
    return out_path
