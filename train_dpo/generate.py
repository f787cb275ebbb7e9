"""Write evaluation completions for one or many models, in the study's CSV format.

    poetry run python train_dpo/generate.py --models results/gpt_imdb_jsd_beta1e-1 lvwerra/gpt2-imdb
    poetry run python train_dpo/generate.py --models therem/gpt_imdb_jsd_beta1e-1 --samples 4 --top_k 50

A model is a training run's directory (LoRA adapter), a full model (the SFT base), or a Hub id, published
PEFT adapters included. For each model: `<out_dir>/<tag>.csv` with columns prompt, answers (= prompt +
continuation, the study's format), sample, and the token ids behind each row: `prompt_ids` (the prompt as
the model read it) and `completion_ids` (the sampled tokens, up to and including the first EOS when one was
emitted), space-separated; and `<tag>.json` with the model, decoding, seed and counts. The evaluator scores
KL and entropy on those ids; the text is for reward models and text metrics.

Training runs over one base model are sampled together, `--stack_size` at a time
(train_dpo/stacked_policy.py): one `generate` call per prompt batch for all of them, the batch repeated
once per run, each run's files as they would be alone. Their samples are draws from the same
distributions as one-at-a-time sampling, not the same draws (the random numbers are spread over a
batch as many times larger as there are runs); `generation_settings` says how the two kinds of CSV are
kept apart. `--stack_size 1` samples each model alone.
Only the flags below exist: an unknown option (the study's `topk=5`, which transformers ignored) is an
error, not a silent no-op.
"""

from __future__ import annotations

import common.help  # noqa: F401  (first: answers --help before the heavy imports below)

# isort: split
import csv
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import BatchEncoding

import config
from common.appendlog import settings_hash
from common.atomic import write_atomic
from common.cli import check_field_types, parse_with_presets
from common.errors import InputError, exits_cleanly
from common.generation import Decoding, encode_prompts, sample_tokens
from common.lock import output_lock
from common.models import check_device, check_policy_source, load_policy, model_version
from common.prompts import load_prompts
from common.readers import read_json_object
from train_dpo.stacked_policy import load_stacked_policy, stack_key, stackable_adapter

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
    stack_size: int = field(
        default=16,
        metadata={"help": "LoRA runs over one base sampled in one generate call (1 = each alone)."},
    )
    out_dir: str = field(default=str(config.RESULTS_DIR / "generations"), metadata={"help": "Output folder."})
    device: str | None = field(default=None, metadata={"help": "cpu / cuda (default: cuda when available)."})
    overwrite: bool = field(default=False, metadata={"help": "Regenerate even if the output exists."})

    def __post_init__(self):
        check_field_types(self)  # a YAML value reaches the dataclass unconverted
        check_device(self.device)
        self.decoding()  # refuses a bad sampling setting
        if self.batch_size < 1 or (self.num_prompts is not None and self.num_prompts < 1):
            raise InputError("--batch_size and --num_prompts must be >= 1")
        if self.stack_size < 1:
            raise InputError(f"--stack_size must be >= 1 (1 samples each model alone), got {self.stack_size}")
        check_distinct_tags(self.models, self.out_dir)

    def decoding(self) -> Decoding:
        """Plain sampling: none of the dataset's study processors, which would bias the eval samples."""
        return Decoding.from_flags(
            self, method="sample", k=self.samples, no_repeat_ngram_size=0, word_bias=0.0, ban_markup=False
        )


def model_tag(name: str) -> str:
    """File-name tag: a run directory's name, or a Hub id with '/' as '__'."""
    path = Path(name)
    return path.name if path.exists() else name.replace("/", "__")


def check_distinct_tags(models: list[str], out_dir: str) -> None:
    """InputError for two models that would write one file: `a/run` and `b/run`, or the Hub id `user/m`
    and a folder `user__m`. The second would overwrite the first's samples. Tags are compared ignoring
    case, as a case-insensitive file system (and the Hub) would.
    """
    seen: dict[str, str] = {}
    for name in dict.fromkeys(models):
        tag = model_tag(name)
        other = seen.setdefault(tag.casefold(), name)
        if other != name:
            raise InputError(
                f"--models {other} and {name} would both write {Path(out_dir) / tag}.csv "
                "(one file name per model): give one of them another folder name"
            )


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
def sample_batch(
    model, tokenizer, prompts: list[str], decoding: Decoding, seed: int, blocks: int = 1
) -> list[list[list[tuple]]]:
    """K sampled continuations per prompt, each as (text, prompt ids, completion ids), for each of `blocks`
    copies of the batch: [block][prompt][sample]. A stacked policy runs block b through adapter b.

    common.generation's sampling (same seed, same draws, same text), keeping the ids: the prompt's
    unpadded ids, and the new tokens up to and including the first EOS. The text is those ids decoded
    without special tokens.
    """
    encoded = encode_prompts(model, tokenizer, prompts, decoding)
    copies = BatchEncoding({key: value.repeat(blocks, 1) for key, value in encoded.items()})
    # generate() repeats each input row once per sample in place (repeat_interleave), and sample_tokens
    # groups them back per input row: input rows b*len(prompts) ... are block b's, in prompt order.
    new_tokens = sample_tokens(model, tokenizer, copies, decoding, seed)
    mask = encoded.attention_mask.bool()
    prompt_ids = [encoded.input_ids[row][mask[row]].tolist() for row in range(len(prompts))]
    out = []
    for block in range(blocks):
        sampled = []
        for row, samples in enumerate(new_tokens[block * len(prompts) : (block + 1) * len(prompts)]):
            completions = [until_eos(ids, tokenizer.eos_token_id) for ids in samples]
            texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
            pairs = zip(texts, completions, strict=True)
            sampled.append([(text, prompt_ids[row], ids) for text, ids in pairs])
        out.append(sampled)
    return out


def sample_rows(
    model, tokenizer, prompts: list[str], args: GenerateArguments, blocks: int, desc: str
) -> list[list[dict]]:
    """Every prompt's CSV rows for each block ([block][row]), batch by batch, each batch from its own seed."""
    rows, decoding = [[] for _ in range(blocks)], args.decoding()
    for start in tqdm(range(0, len(prompts), args.batch_size), desc=desc, unit="batch"):
        batch = prompts[start : start + args.batch_size]
        sampled = sample_batch(model, tokenizer, batch, decoding, seed=args.seed + start, blocks=blocks)
        for block_rows, block in zip(rows, sampled, strict=True):
            for prompt, completions in zip(batch, block, strict=True):
                block_rows.extend(
                    {
                        "prompt": prompt,
                        "answers": prompt + text,
                        "sample": i,
                        "prompt_ids": ids_text(prompt_ids),
                        "completion_ids": ids_text(completion_ids),
                    }
                    for i, (text, prompt_ids, completion_ids) in enumerate(completions)
                )
    return rows


def generation_settings(name: str, prompts: list[str], args: GenerateArguments, stacked: bool) -> dict:
    """What a model's CSV depends on; `<tag>.json` keeps their hash, and an equal hash means up to date.

    `stacked` (sampled in a stack of adapters) is part of the hash: a stacked CSV and a lone one are
    different draws, so switching `--stack_size` between 1 and more writes an adapter's CSV again instead
    of keeping a mix of both. Which adapters shared the stack (and so which random numbers each
    drew) is recorded in `<tag>.json`, not hashed: it depends on which other models were due at the time.
    """
    # `token_ids`, the model's version: CSVs written before these were recorded have another hash, so they
    # are written again. The version makes a retrained run (same folder, new weights) or a Hub adapter
    # pushed to since sample anew.
    decoding = args.decoding()
    settings = {"model": name, **model_version(name), "decoding": asdict(decoding),
                "seed": args.seed, "batch_size": args.batch_size, "prompts": len(prompts),
                "prompt_source": args.prompts, "token_ids": True}  # fmt: skip
    return {**settings, "stacked": True} if stacked else settings


def output_paths(name: str, args: GenerateArguments) -> tuple[Path, Path]:
    out_dir = Path(args.out_dir)
    return out_dir / f"{model_tag(name)}.csv", out_dir / f"{model_tag(name)}.json"


def up_to_date(name: str, settings: dict, args: GenerateArguments) -> bool:
    csv_path, meta_path = output_paths(name, args)
    if args.overwrite or not (meta_path.is_file() and csv_path.is_file()):
        return False
    try:
        recorded = read_json_object(meta_path)
    except InputError as error:  # our own record, damaged (a kill mid-copy, an edit): sampled again
        logger.warning("%s; its generations are sampled again", error)
        return False
    return recorded.get("settings_hash") == settings_hash(settings)


def write_generations(name: str, settings: dict, rows: list[dict], args: GenerateArguments, **about) -> Path:
    """`<tag>.csv` (the rows) and `<tag>.json` (the settings, their hash and `about` the model)."""
    csv_path, meta_path = output_paths(name, args)
    # Every text quoted: pandas leaves a lone "\r" unquoted, and readers then split the row there.
    write_atomic(csv_path, pd.DataFrame(rows).to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC))
    metadata = {**settings, **about, "rows": len(rows), "settings_hash": settings_hash(settings)}
    write_atomic(meta_path, json.dumps(metadata, indent=2))
    return csv_path


def generate_alone(name: str, prompts: list[str], args: GenerateArguments) -> list[Path]:
    """Load one model (full or adapter) and write its files."""
    policy = load_policy(name, args.device)
    (rows,) = sample_rows(policy.model, policy.tokenizer, prompts, args, blocks=1, desc=model_tag(name))
    settings = generation_settings(name, prompts, args, stacked=False)
    eos = policy.tokenizer.eos_token_id
    about = {"base_model": policy.base, "is_adapter": policy.is_adapter, "eos_token_id": eos}
    return [write_generations(name, settings, rows, args, **about)]


def generate_stacked(names: list[str], prompts: list[str], args: GenerateArguments) -> list[Path]:
    """Load adapters as one stacked policy, sample all of them batch by batch, write each one's files."""
    policy = load_stacked_policy(names, args.device)
    desc = f"{model_tag(names[0])} and {len(names) - 1} more" if len(names) > 1 else model_tag(names[0])
    with policy.stack.routed():
        rows = sample_rows(policy.model, policy.tokenizer, prompts, args, blocks=len(names), desc=desc)
    # `stack`: the adapters sampled in the same generate calls, in block order (which draws each one got).
    about = {"base_model": policy.base, "is_adapter": True, "eos_token_id": policy.tokenizer.eos_token_id,
             "stack": names}  # fmt: skip
    return [
        write_generations(name, generation_settings(name, prompts, args, stacked=True), block, args, **about)
        for name, block in zip(names, rows, strict=True)
    ]


def due_jobs(prompts: list[str], args: GenerateArguments) -> list[tuple[list[str], bool]]:
    """The models not yet up to date, as (names, stacked) jobs in the order given.

    With `--stack_size` > 1 every stackable adapter is sampled stacked, in stacks of up to `--stack_size`
    adapters of one `stack_key` (a stack of one if no other is due); anything else is sampled alone.
    """
    jobs, open_stacks = [], {}
    for name in dict.fromkeys(args.models):
        config = stackable_adapter(name) if args.stack_size > 1 else None
        if up_to_date(name, generation_settings(name, prompts, args, stacked=config is not None), args):
            logger.info("%s: up to date, skipped", output_paths(name, args)[0])
        elif config is None:
            jobs.append(([name], False))
        else:
            key = stack_key(name, config)
            if key not in open_stacks or len(open_stacks[key]) == args.stack_size:
                open_stacks[key] = []
                jobs.append((open_stacks[key], True))
            open_stacks[key].append(name)
    return jobs


def parse_args(argv: list[str] | None = None) -> GenerateArguments:
    """Flags and YAML (`--config`) merged into GenerateArguments; a bad value raises InputError."""
    (args,) = parse_with_presets(GenerateArguments, None, argv)
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)  # checked before anything loads
    for name in args.models:
        check_policy_source(name)
    prompts = load_prompts(args.prompts)[: args.num_prompts]
    with output_lock(args.out_dir):  # one writer per folder: what is due is decided and written under it
        for names, stacked in due_jobs(prompts, args):
            paths = (
                generate_stacked(names, prompts, args) if stacked else generate_alone(names[0], prompts, args)
            )
            for path in paths:
                logger.info("wrote %s", path)


cli = exits_cleanly(main)

if __name__ == "__main__":
    cli()
