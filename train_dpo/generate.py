"""Write evaluation completions for one or many models, in the study's CSV format.

    poetry run python train_dpo/generate.py --models results/gpt_imdb_jsd_beta1e-1 lvwerra/gpt2-imdb
    poetry run python train_dpo/generate.py --models therem/gpt_imdb_jsd_beta1e-1 --samples 4 --top_k 50

A model is a training run's directory (LoRA adapter), a full model (the SFT base), or a Hub id, published
PEFT adapters included. For each model: `<out_dir>/<tag>.csv` with columns prompt, answers (= prompt +
continuation, the study's format), sample, and the token ids behind each row: `prompt_ids` (the prompt as
the model read it) and `completion_ids` (the sampled tokens, up to and including the first EOS when one was
emitted), space-separated; and `<tag>.json` with the model, decoding, seed and counts. The evaluator scores
KL and entropy on those ids; the text is for reward models and text metrics.
Only the flags below exist: an unknown option (the study's `topk=5`, which transformers ignored) is an
error, not a silent no-op.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm
from trl import TrlParser

import config
from common.appendlog import settings_hash
from common.atomic import write_atomic
from common.cli import parse_with_presets
from common.errors import InputError, exits_cleanly
from common.generation import Decoding, encode_prompts, sample_tokens
from common.models import check_policy_source, load_policy
from common.prompts import load_prompts

logger = logging.getLogger("generate")


@dataclass
class GenerateArguments:
    models: list[str] = field(
        default_factory=lambda: [config.SFT_MODEL], metadata={"help": "Run dirs, model dirs or Hub ids."}
    )
    prompts: str = field(
        default=str(config.DATASETS_DIR / "imdb" / "dataset" / "eval_prompts.json"),
        metadata={"help": "Held-out prompts: the dataset's eval_prompts.json or any prompt file."},
    )
    num_prompts: int | None = field(
        default=None, metadata={"help": "Use the first N prompts (default: all)."}
    )
    samples: int = field(default=4, metadata={"help": "Completions per prompt."})
    max_new_tokens: int = field(default=64, metadata={"help": "Tokens per completion at most."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0 = off)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1 = off)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    seed: int = field(default=0, metadata={"help": "Seed; batch i uses seed + i * batch_size."})
    batch_size: int = field(default=32, metadata={"help": "Prompts per batch."})
    out_dir: str = field(default=str(config.RESULTS_DIR / "generations"), metadata={"help": "Output folder."})
    device: str | None = field(default=None, metadata={"help": "cpu / cuda (default: cuda when available)."})
    overwrite: bool = field(default=False, metadata={"help": "Regenerate even if the output exists."})

    def decoding(self) -> Decoding:
        return Decoding(
            method="sample",
            k=self.samples,
            max_new_tokens=self.max_new_tokens,
            top_k=self.top_k,
            top_p=self.top_p,
            temperature=self.temperature,
            no_repeat_ngram_size=0,
            word_bias=0.0,
            ban_markup=False,
        )


def model_tag(name: str) -> str:
    """File-name tag: a run directory's name, or a Hub id with '/' as '__'."""
    path = Path(name)
    return path.name if path.exists() else name.replace("/", "__")


def ids_text(ids: list[int]) -> str:
    """Token ids as a CSV cell: space-separated integers."""
    return " ".join(map(str, ids))


def parse_ids(cell: str) -> list[int]:
    """The inverse of `ids_text`."""
    return [int(token) for token in cell.split()]


def until_eos(ids: list[int], eos_token_id: int | None) -> list[int]:
    """The sampled tokens up to and including the first EOS: what follows it is padding."""
    return ids[: ids.index(eos_token_id) + 1] if eos_token_id in ids else ids


@torch.no_grad()
def sample_batch(model, tokenizer, prompts: list[str], decoding: Decoding, seed: int) -> list[list[tuple]]:
    """K sampled continuations per prompt, each as (text, prompt ids, completion ids).

    common.generation's sampling (same seed, same draws, same text), keeping the ids: the prompt's
    unpadded ids, and the new tokens up to and including the first EOS. The text is those ids decoded
    without special tokens.
    """
    encoded = encode_prompts(model, tokenizer, prompts, decoding)
    new_tokens = sample_tokens(model, tokenizer, encoded, decoding, seed)
    out = []
    for row, rows in enumerate(new_tokens):
        prompt_ids = encoded.input_ids[row][encoded.attention_mask[row].bool()].tolist()
        completions = [until_eos(ids, tokenizer.eos_token_id) for ids in rows]
        texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
        out.append([(text, prompt_ids, ids) for text, ids in zip(texts, completions, strict=True)])
    return out


def generate_for_model(name: str, prompts: list[str], args: GenerateArguments) -> Path:
    """Write `<tag>.csv` and `<tag>.json` for one model, unless they exist with the same settings."""
    out_dir = Path(args.out_dir)
    csv_path, meta_path = out_dir / f"{model_tag(name)}.csv", out_dir / f"{model_tag(name)}.json"
    decoding = args.decoding()
    # `token_ids`: CSVs written before the ids were saved have another hash, so they are written again.
    settings = {"model": name, "decoding": asdict(decoding), "seed": args.seed, "batch_size": args.batch_size,
                "prompts": len(prompts), "prompt_source": args.prompts, "token_ids": True}  # fmt: skip
    done = not args.overwrite and meta_path.is_file() and csv_path.is_file()
    if done and json.loads(meta_path.read_text()).get("settings_hash") == settings_hash(settings):
        logger.info("%s: up to date, skipped", csv_path)
        return csv_path
    policy = load_policy(name, args.device)
    rows = []
    for start in tqdm(range(0, len(prompts), args.batch_size), desc=model_tag(name), unit="batch"):
        batch = prompts[start : start + args.batch_size]
        sampled = sample_batch(policy.model, policy.tokenizer, batch, decoding, seed=args.seed + start)
        for prompt, completions in zip(batch, sampled, strict=True):
            rows.extend(
                {
                    "prompt": prompt,
                    "answers": prompt + text,
                    "sample": i,
                    "prompt_ids": ids_text(prompt_ids),
                    "completion_ids": ids_text(completion_ids),
                }
                for i, (text, prompt_ids, completion_ids) in enumerate(completions)
            )
    # Every text quoted: pandas leaves a lone "\r" unquoted, and readers then split the row there.
    write_atomic(csv_path, pd.DataFrame(rows).to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC))
    metadata = {**settings, "base_model": policy.base, "is_adapter": policy.is_adapter, "rows": len(rows),
                "eos_token_id": policy.tokenizer.eos_token_id,
                "settings_hash": settings_hash(settings)}  # fmt: skip
    write_atomic(meta_path, json.dumps(metadata, indent=2))
    return csv_path


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = parse_with_presets(TrlParser(GenerateArguments), None, argv)
    args.decoding()  # validate before loading anything
    if args.batch_size < 1 or (args.num_prompts is not None and args.num_prompts < 1):
        raise InputError("--batch_size and --num_prompts must be >= 1")
    for name in args.models:
        check_policy_source(name)
    prompts = load_prompts(args.prompts)[: args.num_prompts]
    for name in args.models:
        logger.info("wrote %s", generate_for_model(name, prompts, args))


cli = exits_cleanly(main)

if __name__ == "__main__":
    cli()
