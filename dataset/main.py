"""Build the IMDb preference dataset: prompts -> generate -> score -> pair, split and save.

    poetry run python dataset/main.py --preset tiny                  # offline: tiny GPT-2 + VADER, < 2 min
    poetry run python dataset/main.py                                # the study: gpt2-imdb, distilbert-imdb
    poetry run python dataset/main.py --decoding sample --top_k 50   # the paper's sampling instead
    poetry run python dataset/main.py --stages pair --scored_file $FDPO_DATA_DIR/scored_gpt_dataset.json
    poetry run python dataset/main.py --push_to_hub you/imdb-fdpo-pairs    # needs HF_TOKEN

Each stage writes a file the next one reads (all under --out_dir) and can run alone via --stages.
Generation and scoring append batch by batch with a progress manifest: kill and rerun to resume.
"""

from __future__ import annotations

import common.help  # noqa: F401  (first: answers --help before the heavy imports below)

# isort: split
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import config
from common.appendlog import AppendLog, read_complete, settings_hash
from common.atomic import check_replaceable, write_atomic
from common.cli import check_field_types, parse_with_presets, presets
from common.errors import InputError, check_model_source, exits_cleanly, first_line
from common.generation import Decoding
from common.imdb import default_prompt_source
from common.lock import output_lock
from common.models import check_device
from common.pairing import STUDY_PAIRS, check_pairs, load_scored_json
from common.prompts import load_prompts, sample_prompts
from common.readers import read_json_object
from common.rewards import RewardArguments, load_reward
from dataset.build import MANIFEST, build_dataset
from dataset.generate import generation_settings, run_generate
from dataset.score import run_score

logger = logging.getLogger("dataset")

STAGES = ("prompts", "generate", "score", "pair")


@dataclass
class DatasetArguments(RewardArguments):
    preset: str | None = field(
        default=None,
        metadata={"help": "Defaults from recipes/<preset>/dataset.yaml.", "choices": presets("dataset")},
    )
    stages: str = field(default=",".join(STAGES), metadata={"help": f"Comma-separated subset of {STAGES}."})
    out_dir: str = field(default=str(config.DATASET_DIR), metadata={"help": "Where every stage writes."})
    overwrite: bool = field(
        default=False, metadata={"help": "Discard earlier output instead of resuming it."}
    )
    prompts: str = field(
        default_factory=default_prompt_source,
        metadata={
            "help": "Prompt source: .json/.jsonl/.csv/.parquet file, or a Hub dataset id or local datasets "
            "folder of reviews (first sentences). Default: FDPO_DATA_DIR's prompt file, else "
            "stanfordnlp/imdb."
        },
    )
    num_prompts: int = field(default=602, metadata={"help": "Prompts to generate for (the study: 602)."})
    num_eval_prompts: int = field(default=500, metadata={"help": "Disjoint held-out prompts for evaluation."})
    max_prompt_tokens: int = field(
        default=config.MAX_PROMPT_LENGTH,
        metadata={"help": "Drop prompts longer than this (SFT tokenizer tokens)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of prompt sampling, generation and the split."})
    sft_model: str = field(default=config.SFT_MODEL, metadata={"help": "Hub id, local dir, or 'tiny'."})
    device: str | None = field(default=None, metadata={"help": "cpu / cuda; default: cuda when available."})
    batch_size: int = field(default=32, metadata={"help": "Prompts per generation batch."})
    decoding: str = field(default="diverse_beam", metadata={"help": "diverse_beam (the study) or sample."})
    k: int = field(default=6, metadata={"help": "Continuations per prompt."})
    max_new_tokens: int = field(default=256, metadata={"help": "Tokens per continuation at most."})
    top_k: int = field(default=0, metadata={"help": "Sampling: top-k (0 = off)."})
    top_p: float = field(default=1.0, metadata={"help": "Sampling: nucleus mass (1 = off)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    diversity_penalty: float = field(default=50.0, metadata={"help": "Diverse beam: Hamming penalty."})
    no_repeat_ngram_size: int = field(default=2, metadata={"help": "Ban repeated n-grams (0 = off)."})
    word_bias: float = field(default=1.5, metadata={"help": "+/- bias on sentiment words (0 = off)."})
    ban_markup: bool = field(default=True, metadata={"help": "Ban <br />, ** runs and URLs."})
    # A built dataset is an artifact: bf16 rounding swapped close ranks, and so pairs, in 1.35 % of the
    # study's prompts (docs/performance.md), so its scores default to float32, unlike evaluation's.
    reward_dtype: str = field(
        default="float32",
        metadata={
            "help": "float32, bfloat16 (faster, but close scores may swap ranks and so pairs; "
            "docs/performance.md) or auto (bfloat16 where the hardware multiplies it natively)."
        },
    )
    scored_file: str | None = field(
        default=None,
        metadata={"help": "Pair this scored file (the study's JSON format) instead of --out_dir's."},
    )
    pairs: str = field(
        default=",".join(f"{a}-{b}" for a, b in STUDY_PAIRS),
        metadata={"help": "Rank pairs (chosen-rejected, 0 = best), comma-separated."},
    )
    keep_degenerate_pairs: bool = field(
        default=False, metadata={"help": "Keep tied pairs and empty continuations (the study kept them)."}
    )
    test_size: float = field(default=0.2, metadata={"help": "Share of prompts in the test split."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub repo id to push the dataset to."})

    def __post_init__(self):
        check_field_types(self)  # a YAML value reaches the dataclass unconverted
        super().__post_init__()  # the reward flags
        check_device(self.device)
        unknown = [stage for stage in self.stage_list() if stage not in STAGES]
        if not self.stage_list():  # else nothing would run, and the run would still succeed
            raise ValueError(f"--stages: no stage given; choose from {', '.join(STAGES)}")
        if unknown:
            raise ValueError(
                f"--stages: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}"
            )
        if not 0.0 <= self.test_size < 1.0:
            raise ValueError(f"--test_size must lie in [0, 1), got {self.test_size}")
        if self.k < 2:
            raise ValueError(f"--k must be >= 2 (pairs need two answers per prompt), got {self.k}")
        if self.num_eval_prompts < 0:
            raise ValueError(f"--num_eval_prompts must be >= 0, got {self.num_eval_prompts}")
        self.pair_list()

    def stage_list(self) -> list[str]:
        return [stage.strip() for stage in self.stages.split(",") if stage.strip()]

    def pair_list(self) -> list[tuple[int, int]]:
        try:
            return [tuple(int(i) for i in item.split("-")) for item in self.pairs.split(",")]
        except ValueError:
            raise ValueError(f"--pairs must look like '0-3,0-4', got '{self.pairs}'") from None

    def decoding_config(self) -> Decoding:
        return Decoding.from_flags(self, method=self.decoding)


def parse_args(argv: list[str] | None = None) -> DatasetArguments:
    (args,) = parse_with_presets(DatasetArguments, "dataset", argv)
    return args


def select_prompts(args: DatasetArguments) -> dict:
    """The prompts stage's record (`prompts.json`), computed without writing it."""
    from transformers import AutoTokenizer

    prompts = load_prompts(args.prompts)
    try:
        tokenizer = AutoTokenizer.from_pretrained(sft_model_path(args.sft_model), trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise InputError(f"--sft_model {args.sft_model}: no tokenizer ({first_line(error)})") from None
    lengths = tokenizer(prompts, add_special_tokens=False).input_ids
    kept = [
        prompt for prompt, ids in zip(prompts, lengths, strict=True) if len(ids) <= args.max_prompt_tokens
    ]
    logger.info("prompts: %d of %d within %d tokens", len(kept), len(prompts), args.max_prompt_tokens)
    train, held_out = sample_prompts(kept, args.num_prompts, args.num_eval_prompts, args.seed)
    logger.info("prompts: %d to generate for, %d held out for evaluation", len(train), len(held_out))
    return {"source": args.prompts, "seed": args.seed, "max_prompt_tokens": args.max_prompt_tokens,
            "train": train, "eval": held_out}  # fmt: skip


def check_generations(args: DatasetArguments, out: Path, prompts: list[str], decoding: Decoding) -> None:
    """Refuse, before anything is written, generations made from other prompts or settings (unless
    --overwrite): else prompts.json would already name the new prompts when the generate stage refuses."""
    settings = generation_settings(
        prompts, sft_model_path(args.sft_model), decoding, args.seed, args.batch_size
    )
    AppendLog(out / "generations.jsonl", settings).check(args.overwrite)


def read_prompts(out: Path) -> dict:
    """The prompts stage's record; InputError naming it if missing, damaged or without its prompt lists."""
    path = out / "prompts.json"
    if not path.is_file():
        raise InputError(f"{path}: missing (run the prompts stage first)")
    record = read_json_object(path)
    for split in ("train", "eval"):
        prompts = record.get(split)
        if not isinstance(prompts, list) or not all(isinstance(prompt, str) for prompt in prompts):
            raise InputError(f"{path}: '{split}' is not a list of prompts (rerun the prompts stage)")
    return record


def sft_model_path(name: str) -> str:
    if name == "tiny":
        from common.tiny import ensure_tiny_gpt2

        return str(ensure_tiny_gpt2())
    return name


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    prompts = check_build(args)
    with output_lock(args.out_dir):
        write_stages(args, Path(args.out_dir), args.decoding_config(), prompts)


def check_build(args: DatasetArguments) -> dict | None:
    """Everything a build checks before it writes (inputs, and that earlier output may be resumed), so that
    a refusal leaves nothing behind, and a dry run can predict it; returns the prompts stage's record."""
    decoding = args.decoding_config()
    out = Path(args.out_dir)
    stages = args.stage_list()
    if {"prompts", "generate"} & set(stages) and args.sft_model != "tiny":
        check_model_source(args.sft_model, "--sft_model")
    if "score" in stages and args.reward_model != "vader":
        check_model_source(args.reward_model, "--reward_model")
    if "pair" in stages and not args.scored_file:
        try:
            check_pairs(args.pair_list(), args.k)
        except ValueError as error:
            raise InputError(f"--pairs: {error}") from None
    if "pair" in stages:
        check_replaceable(out / "dataset", MANIFEST)  # before any stage writes beside it
    if "pair" in stages and args.scored_file:
        load_scored_json(Path(args.scored_file))  # a damaged file stops here, before the lock's folder
    prompts = select_prompts(args) if "prompts" in stages else None
    if "generate" in stages:
        check_generations(args, out, (prompts or read_prompts(out))["train"], decoding)
    return prompts


def write_stages(args: DatasetArguments, out: Path, decoding: Decoding, prompts: dict | None) -> None:
    """Run the stages that write, under `out`'s lock: a second builder of the same folder is refused."""
    stages = args.stage_list()
    if prompts is not None:
        write_atomic(out / "prompts.json", json.dumps(prompts, indent=1, ensure_ascii=False))
    if "generate" in stages:
        run_generate(
            read_prompts(out)["train"],
            out / "generations.jsonl",
            sft_model_path(args.sft_model),
            decoding,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            overwrite=args.overwrite,
        )
    if "score" in stages:
        reward = load_reward(
            args.reward_model, output=args.reward_output, device=args.device, dtype=args.reward_dtype
        )
        run_score(out / "generations.jsonl", out / "scored.jsonl", reward, overwrite=args.overwrite)
    if "pair" in stages:
        if args.scored_file:
            records, eval_prompts = load_scored_json(Path(args.scored_file)), []
            provenance = {"scored_file": args.scored_file}
        else:
            records = read_complete(out / "scored.jsonl", "score")
            eval_prompts = read_prompts(out)["eval"]
            provenance = {
                "sft_model": args.sft_model,
                "reward_model": args.reward_model,
                "reward_output": None if args.reward_model == "vader" else args.reward_output,
                "scored_text": "continuation",
                "decoding": asdict(decoding),
                "prompt_source": args.prompts,
                "seed": args.seed,
            }
        provenance["settings_hash"] = settings_hash(provenance)
        manifest = build_dataset(
            records,
            out / "dataset",
            args.pair_list(),
            args.test_size,
            args.seed,
            eval_prompts,
            provenance,
            keep_degenerate=args.keep_degenerate_pairs,
        )
        logger.info("dataset: %s -> %s", manifest["counts"], out / "dataset")
        if args.push_to_hub:
            from datasets import load_from_disk

            load_from_disk(str(out / "dataset" / "hf")).push_to_hub(
                args.push_to_hub, token=os.environ.get("HF_TOKEN")
            )


cli = exits_cleanly(main)

if __name__ == "__main__":
    cli()
