"""Reward scoring texts/s: the project's batched, length-sorted scorer vs one call per prompt (the study).

    poetry run python bench/scoring.py --quick            # tiny DistilBERT (random weights), CPU
    poetry run python bench/scoring.py --model lvwerra/distilbert-imdb --device cuda --prompts 500

The study scored each prompt's six answers with one `pipeline("sentiment-analysis")` call per prompt,
which at the pipeline's default batch size runs one text per forward pass; that loop runs here as the
baseline (returning raw logits). The project's scorer runs in float32 (logits checked equal to the
loop's within 1e-3) and in bf16, all in the same process on the same classifier and texts. For bf16
it prints the largest deviation, the shift of the mean reward and the share of the study's pairs that
stay the same; `default_dtype` is what evaluation's `--reward_dtype auto` picks on this device.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # one progress bar per text would drown the result

import numpy as np
import torch
from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification, pipeline

import config
from bench.harness import gpu_peak_gib, peak_rss_gib, scratch_folder, stops_cleanly, synchronize
from common import imdb
from common.cli import ArgParser, count_type
from common.pairing import pair_record, strip_prompt
from common.rewards import ClassifierReward, native_bf16
from common.tiny import ensure_tiny_gpt2


def tiny_classifier(directory: Path) -> str:
    """DistilBERT's architecture at full size (66 M parameters), random weights, the tiny BPE tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_gpt2())
    torch.manual_seed(0)
    model = DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_labels=2)
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="classifier dir / Hub id (default: random DistilBERT)")
    parser.add_argument("--prompts", type=count_type(1), default=100, help="prompts (x 6 answers) to score")
    parser.add_argument(
        "--batch_size", type=count_type(1), default=None, help="default: the scorer's (64 GPU, 8 CPU)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="30 prompts")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts = 30
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    folder = imdb.local_data_dir()
    if folder:  # the study's continuations, six per prompt
        records = json.loads((folder / config.SCORED_FILE).read_text())[: args.prompts]
        groups = [[strip_prompt(r["prompt"], a) for a in r["answers"]] for r in records]
    else:  # review openings from the Hub, in groups of six
        openings = imdb.texts()[: 6 * args.prompts]
        groups = [openings[i : i + 6] for i in range(0, len(openings), 6)]
    texts = [text for group in groups for text in group]
    with scratch_folder(prefix="bench-scoring-") as tmp:
        model = args.model or tiny_classifier(tmp / "clf")
        batched = ClassifierReward(model, batch_size=args.batch_size, device=args.device, dtype="float32")
        bf16 = ClassifierReward(model, batch_size=args.batch_size, device=args.device, dtype="bfloat16")
        study = pipeline("text-classification", model=model, device=args.device, function_to_apply="none")

        def study_scores(texts: list[str]) -> list[float]:
            texts = [text or " " for text in texts]  # as the scorer: an empty text has nothing to classify
            outputs = study(texts, top_k=None, truncation=True, max_length=512)
            labels = [{d["label"]: d["score"] for d in out} for out in outputs]
            return [scores[batched.model.config.id2label[batched.positive]] for scores in labels]

        def study_loop(items: list[str]) -> list[float]:
            return [score for group in chunks(items) for score in study_scores(group)]

        def timed_scores(score, items) -> tuple[list[float], float]:
            score(items[:6])  # warm-up
            synchronize()
            start = time.perf_counter()
            scores = score(items)
            synchronize()
            return scores, time.perf_counter() - start

        loop_scores, loop = timed_scores(study_loop, texts)
        fp32_scores, fp32 = timed_scores(batched.score, texts)
        bf16_scores, bf16_s = timed_scores(bf16.score, texts)
    assert max(abs(a - b) for a, b in zip(loop_scores, fp32_scores, strict=True)) < 1e-3
    n = len(loop_scores)
    print(json.dumps({"model": args.model or "distilbert-random", "device": args.device, "texts": n,
                      "batch_size": batched.batch_size, "study_loop_per_s": round(n / loop, 1),
                      "batched_per_s": round(n / fp32, 1), "speedup": round(loop / fp32, 2),
                      "bf16_per_s": round(n / bf16_s, 1), "bf16_speedup": round(loop / bf16_s, 2),
                      "bf16_vs_float32": round(fp32 / bf16_s, 2),
                      "bf16_max_abs_diff": round(max(map(abs, np.subtract(fp32_scores, bf16_scores))), 4),
                      "score_range": round(max(fp32_scores) - min(fp32_scores), 3),
                      "bf16_mean_shift": round(float(np.mean(bf16_scores) - np.mean(fp32_scores)), 5),
                      "bf16_same_pairs": round(same_pairs(groups, fp32_scores, bf16_scores), 4),
                      "default_dtype": "bfloat16" if native_bf16(args.device) else "float32",
                      "gpu_peak_gib": gpu_peak_gib(), "peak_rss_gib": peak_rss_gib()}))  # fmt: skip


def same_pairs(groups: list[list[str]], scores: list[float], other: list[float]) -> float:
    """The share of the study's pairs built from `scores` that `other` scores build too."""
    kept = total = 0
    for group, ours, theirs in zip(groups, chunks(scores), chunks(other), strict=True):
        pairs = [(p["chosen"], p["rejected"]) for p in pair_record("", group, ours)]
        kept += len(set(pairs) & {(p["chosen"], p["rejected"]) for p in pair_record("", group, theirs)})
        total += len(pairs)
    return kept / total


def chunks(texts: list, size: int = 6) -> list[list]:
    """One prompt's six answers at a time, as the study called the pipeline."""
    return [texts[i : i + size] for i in range(0, len(texts), size)]


cli = stops_cleanly(main)

if __name__ == "__main__":
    cli()
