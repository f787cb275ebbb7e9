"""Stages 4 and 5: pair scored answers, split by prompt, save the dataset with its manifest.

Output directory:
    hf/                 DatasetDict (train, test) via save_to_disk: prompt, chosen, rejected, rewards
    train.jsonl         the same pairs as JSON lines
    test.jsonl
    eval_prompts.json   held-out prompts for evaluation, disjoint from every pair's prompt
    manifest.json       models, reward, decoding, seeds, counts and SHA-256 of every file above
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset, DatasetDict

from dataset.atomic import check_replaceable, replace_dir, staging_dir
from dataset.pairing import check_pairs, pair_scored, split_by_prompt
from dataset.readers import read_json_records
from errors import InputError, writing

MANIFEST = "manifest.json"  # what marks a dataset folder as this project's


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def validate_scored(records: object, source: str) -> list[dict]:
    """Check the study's scored schema: {prompt: str, answers: [str], rm_scores: [number]} per record."""
    if not isinstance(records, list) or not records:
        raise InputError(f"{source}: expected a non-empty list of scored records")
    for i, record in enumerate(records):
        if not isinstance(record, dict) or not {"prompt", "answers", "rm_scores"} <= record.keys():
            raise InputError(f"{source}: record {i} needs prompt, answers and rm_scores")
        answers, scores = record["answers"], record["rm_scores"]
        if (
            not isinstance(record["prompt"], str)
            or not isinstance(answers, list)
            or not isinstance(scores, list)
        ):
            raise InputError(f"{source}: record {i} has a non-string prompt or non-list answers/rm_scores")
        if len(answers) != len(scores):
            raise InputError(f"{source}: record {i} has {len(answers)} answers but {len(scores)} scores")
        if not all(isinstance(a, str) for a in answers) or not all(
            isinstance(s, int | float) and not isinstance(s, bool) for s in scores
        ):
            raise InputError(f"{source}: record {i} has a non-string answer or a non-numeric score")
        if not all(_is_finite(s) for s in scores):  # NaN would sort anywhere and pair at random
            raise InputError(f"{source}: record {i} has a score that is not a finite number")
    return records


def _is_finite(score: int | float) -> bool:
    try:
        return math.isfinite(score)
    except OverflowError:  # an integer beyond the float range
        return False


def load_scored_json(path: Path) -> list[dict]:
    """The study's `scored_gpt_dataset.json` (a JSON list) or our scored JSONL."""
    return validate_scored(read_json_records(path), str(path))


def build_dataset(
    records: list[dict],
    out_dir: Path,
    pairs: Sequence[tuple[int, int]],
    test_size: float,
    seed: int,
    eval_prompts: Sequence[str] = (),
    provenance: dict | None = None,
    keep_degenerate: bool = False,
) -> dict:
    """Pair, split and save everything to `out_dir` at once (built in a temp dir, then renamed).

    Returns:
        the manifest that was written.
    """
    validate_scored(records, "scored records")
    try:
        check_pairs(pairs, min(len(record["answers"]) for record in records))
    except ValueError as error:
        raise InputError(f"--pairs: {error}") from None
    all_pairs = pair_scored(records, pairs, keep_degenerate=keep_degenerate)
    if not all_pairs:
        raise InputError("no preference pairs: every pair tied or was empty")
    train, test = split_by_prompt(all_pairs, test_size=test_size, seed=seed)
    pair_prompts = {pair["prompt"] for pair in all_pairs}
    eval_prompts = [prompt for prompt in eval_prompts if prompt not in pair_prompts]

    out_dir = Path(out_dir)
    check_replaceable(out_dir, MANIFEST)
    # A full disk or a refused write names the dataset directory.
    with writing(out_dir), staging_dir(out_dir) as staging:
        splits = {"train": train, "test": test}
        DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items() if rows}).save_to_disk(
            str(staging / "hf")
        )
        for name, rows in splits.items():
            with open(staging / f"{name}.jsonl", "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (staging / "eval_prompts.json").write_text(
            json.dumps(list(eval_prompts), indent=1, ensure_ascii=False)
        )
        manifest = {
            **(provenance or {}),
            "pairs_scheme": [list(pair) for pair in pairs],
            "split": {"test_size": test_size, "seed": seed, "by": "prompt"},
            "keep_degenerate_pairs": keep_degenerate,
            "counts": {
                "scored_prompts": len(records),
                "pairs": len(all_pairs),
                "train_pairs": len(train),
                "test_pairs": len(test),
                "train_prompts": len({p["prompt"] for p in train}),
                "test_prompts": len({p["prompt"] for p in test}),
                "eval_prompts": len(eval_prompts),
                "skipped_pairs": len(records) * len(pairs) - len(all_pairs),
            },
            "files": {
                name: _sha256(staging / name) for name in ("train.jsonl", "test.jsonl", "eval_prompts.json")
            },
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        replace_dir(staging, out_dir, MANIFEST)
    return manifest
