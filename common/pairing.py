"""The dataset's file format: scored generations, DPO preference pairs, and a prompt-level split.

The study sorted each prompt's six continuations by reward and paired ranks (0,3), (0,4), (0,5),
(1,5), (2,5), (3,5): the best against the bottom half, and the top half against the worst.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from common.errors import InputError
from common.readers import read_json_records

STUDY_PAIRS: tuple[tuple[int, int], ...] = ((0, 3), (0, 4), (0, 5), (1, 5), (2, 5), (3, 5))


def check_pairs(pairs: Sequence[tuple[int, int]], k: int) -> None:
    """Raise ValueError unless every (better, worse) rank pair is valid for k answers per prompt."""
    if k < 2:
        raise ValueError(f"need at least 2 answers per prompt to form pairs, got K={k}")
    for better, worse in pairs:
        if not (0 <= better < k and 0 <= worse < k):
            raise ValueError(f"pair index ({better}, {worse}) out of range for K={k} answers per prompt")
        if better >= worse:
            raise ValueError(f"pair ({better}, {worse}) must rank the chosen answer above the rejected one")


def strip_prompt(prompt: str, answer: str) -> str:
    """The continuation alone: `answer` minus its leading `prompt` (the study stored prompt + text).

    A prompt that carries trailing whitespace the answer lacks (a CSV cell edited by hand, a tokenizer
    round trip) is still recognised.
    """
    for head in (prompt, prompt.rstrip()):
        if head and answer.startswith(head):
            return answer[len(head) :]
    return answer


def is_prefixed(prompt: str, answer: str) -> bool:
    """Whether `strip_prompt` finds the prompt at the start of `answer`."""
    return answer.startswith(prompt) or bool(prompt.rstrip()) and answer.startswith(prompt.rstrip())


def pair_record(
    prompt: str,
    answers: Sequence[str],
    scores: Sequence[float],
    pairs: Sequence[tuple[int, int]] = STUDY_PAIRS,
    keep_degenerate: bool = False,
) -> list[dict]:
    """Preference pairs of one prompt: chosen has the strictly higher reward; ties and empties dropped.

    `keep_degenerate=True` keeps tied pairs and empty continuations, as the study did: its 602 scored
    prompts then give exactly its 3,612 pairs (55 with an empty continuation, 5 of those tied).

    Returns:
        dicts with prompt, chosen, rejected (continuations only) and their rewards.
    """
    if len(answers) != len(scores):
        raise ValueError(f"prompt {prompt[:40]!r}: {len(answers)} answers but {len(scores)} scores")
    ranked = sorted(zip(scores, answers, strict=True), key=lambda item: -item[0])  # stable for equal scores
    out = []
    for better, worse in pairs:
        (chosen_score, chosen), (rejected_score, rejected) = ranked[better], ranked[worse]
        chosen, rejected = strip_prompt(prompt, chosen), strip_prompt(prompt, rejected)
        degenerate = chosen_score <= rejected_score or not chosen.strip() or not rejected.strip()
        if degenerate and not keep_degenerate:
            continue
        out.append(
            {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "chosen_reward": float(chosen_score),
                "rejected_reward": float(rejected_score),
            }
        )
    return out


def pair_scored(
    records: Iterable[dict], pairs: Sequence[tuple[int, int]] = STUDY_PAIRS, keep_degenerate: bool = False
) -> list[dict]:
    """Pairs of every record {prompt, answers, rm_scores} (the study's scored-file schema)."""
    out = []
    for record in records:
        check_pairs(pairs, len(record["answers"]))
        out.extend(
            pair_record(record["prompt"], record["answers"], record["rm_scores"], pairs, keep_degenerate)
        )
    return out


def is_test_prompt(prompt: str, test_size: float, seed: int) -> bool:
    """Deterministic prompt-level split: a hash of (seed, prompt) decides, so a prompt never straddles.

    Independent of order and of the other prompts, so adding prompts never moves existing ones.
    """
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_size


def split_by_prompt(
    pairs: Sequence[dict], test_size: float = 0.2, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """(train, test) pairs, split by prompt so that no prompt appears in both."""
    if not 0.0 <= test_size < 1.0:
        raise ValueError(f"test_size must lie in [0, 1), got {test_size}")
    train, test = [], []
    for pair in pairs:
        (test if is_test_prompt(pair["prompt"], test_size, seed) else train).append(pair)
    return train, test


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
