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
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset, DatasetDict

from common.atomic import check_replaceable, replace_dir, staging_dir
from common.errors import InputError, writing
from common.pairing import check_pairs, pair_scored, split_by_prompt, validate_scored

MANIFEST = "manifest.json"  # what marks a dataset folder as this project's


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


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
