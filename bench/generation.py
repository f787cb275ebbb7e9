"""Continuations per second: batched generation vs the study's loop (one prompt at a time).

    poetry run python bench/generation.py --quick                  # tiny GPT-2, CPU, ~1 minute
    poetry run python bench/generation.py --model gpt2-124m --device cuda --prompts 256 --batch_size 64

Both variants run in the same process on the same weights, prompts and decoding; the ratio is printed.
The study's loop runs GPT-2 as transformers loads it, with its default (dynamic) KV cache; the batched
variant runs as `common/generation.py` does, with the fused tanh-GELU (`common/kernels.py`) and, on the
CPU, a static KV cache. Both use transformers' logits processors. The batched variant also runs with the
study's cache, so that the static cache has its ratio from the same run.
`gpt2-124m` is GPT-2-small's architecture with random weights (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from unittest import mock

import torch
from transformers import AutoTokenizer, GPT2LMHeadModel

from bench.harness import gpu_peak_gib, model_dir, peak_rss_gib, scratch_folder, stops_cleanly, timed
from common import imdb
from common.cli import ArgParser, count_type
from common.generation import Decoding, generate_batch
from common.models import load_policy
from common.prompts import load_prompts


def load_models(name: str, device: str, scratch: Path):
    """GPT-2 as the study loaded it, as `common/models.py` loads it, and the tokenizer."""
    path = model_dir(name, scratch)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    study = GPT2LMHeadModel.from_pretrained(path).to(device).eval()
    return study, load_policy(path, device).model, tokenizer


def as_the_study_generated():
    """The KV cache grown by concatenation at every step (transformers' default), even on the CPU."""
    return mock.patch("common.generation.static_kv_cache", lambda device: False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, gpt2-124m (random), or a model dir / Hub id")
    parser.add_argument("--decoding", default="diverse_beam", choices=["diverse_beam", "sample"])
    parser.add_argument("--prompts", type=count_type(1), default=64, help="prompts per variant")
    parser.add_argument("--batch_size", type=count_type(1), default=32, help="prompts per batch")
    parser.add_argument(
        "--loop_prompts",
        type=count_type(1),
        default=None,
        help="time the study's loop on the first N prompts only",
    )
    parser.add_argument(
        "--max_new_tokens", type=count_type(1), default=48, help="new tokens per continuation"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="16 prompts, 24 tokens")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.max_new_tokens = 16, 24
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_grad_enabled(False)
    with scratch_folder(prefix="bench-generation-") as scratch:
        measure(args, scratch)


def measure(args: argparse.Namespace, scratch: Path) -> None:
    """Time both variants and print their rates as one JSON line."""
    study, model, tokenizer = load_models(args.model, args.device, scratch)
    prompts = load_prompts(imdb.default_prompt_source())[: args.prompts]
    decoding = Decoding(method=args.decoding, max_new_tokens=args.max_new_tokens, top_k=50)
    with as_the_study_generated():
        generate_batch(study, tokenizer, prompts[:2], decoding, seed=0)
    generate_batch(model, tokenizer, prompts[:2], decoding, seed=0)

    looped = prompts[: args.loop_prompts or len(prompts)]
    with as_the_study_generated():
        loop = timed(
            lambda: [generate_batch(study, tokenizer, [p], decoding, seed=i) for i, p in enumerate(looped)]
        )

    def batched_run() -> float:
        return timed(
            lambda: [
                generate_batch(model, tokenizer, prompts[i : i + args.batch_size], decoding, seed=i)
                for i in range(0, len(prompts), args.batch_size)
            ]
        )

    # The batched run with the KV cache as the study had it: what the static cache gains, in this run.
    with as_the_study_generated():
        batched_dynamic_cache = batched_run()
    batched = batched_run()
    n, n_loop = len(prompts) * decoding.k, len(looped) * decoding.k
    result = {
        "model": args.model,
        "device": args.device,
        "decoding": args.decoding,
        "prompts": len(prompts),
        "continuations": n,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "study_loop_per_s": round(n_loop / loop, 2),
        "batched_per_s": round(n / batched, 2),
        "speedup": round((n / batched) / (n_loop / loop), 2),
        "static_cache_speedup": round(batched_dynamic_cache / batched, 2),  # 1.0 where it is off (GPU)
        "gpu_peak_gib": gpu_peak_gib(),
        "peak_rss_gib": peak_rss_gib(),
    }
    print(json.dumps(result))


cli = stops_cleanly(main)

if __name__ == "__main__":
    cli()
