"""Train a base policy from scratch with TRL's SFTTrainer on IMDb text (the tiny preset's SFT model).

    poetry run python train_dpo/sft.py                # models/tiny-gpt2-sft, ~2 min on 2 CPU cores
    poetry run python train_dpo/sft.py --epochs 3 --out_dir models/my-sft

The study started from `lvwerra/gpt2-imdb` (GPT-2 fine-tuned on IMDb). On a CPU, this stage makes the
analogue: the tiny GPT-2 of `common/tiny.py` (locally trained BPE tokenizer, random init) trained on
IMDb review text (the Hub's `stanfordnlp/imdb`, or the study's local files under FDPO_DATA_DIR). The
result is cached: a finished model with the same settings is not retrained.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

import config
from common import imdb
from common.appendlog import settings_hash
from common.atomic import check_replaceable, replace_dir, staging_dir
from common.errors import InputError, exits_cleanly, writing
from common.tiny import build_tiny_gpt2

logger = logging.getLogger("sft")

MANIFEST = "sft_manifest.json"


def train_sft(
    out_dir: Path | str | None = None,
    data_dir: Path | str | None = None,
    epochs: float = 2.0,
    learning_rate: float = 2e-3,
    max_length: int = 128,
    batch_size: int = 32,
    seed: int = 0,
) -> Path:
    """The SFT'd tiny GPT-2 at `out_dir` (default models/tiny-gpt2-sft), trained unless already there."""
    out_dir = Path(out_dir or config.MODELS_DIR / "tiny-gpt2-sft")
    settings = {"epochs": epochs, "learning_rate": learning_rate, "max_length": max_length,
                "batch_size": batch_size, "seed": seed, "data": imdb.text_source(data_dir)}  # fmt: skip
    manifest_path = out_dir / MANIFEST
    done = manifest_path.is_file() and json.loads(manifest_path.read_text()).get("settings_hash")
    if done == settings_hash(settings):
        logger.info("SFT model %s is up to date", out_dir)
        return out_dir
    check_replaceable(out_dir, MANIFEST)
    texts = imdb.texts(data_dir)
    with staging_dir(out_dir) as work:
        init_dir = build_tiny_gpt2(Path(work) / "init", data_dir, seed=seed)
        tokenizer = AutoTokenizer.from_pretrained(init_dir)
        args = SFTConfig(
            output_dir=str(Path(work) / "trainer"),
            num_train_epochs=epochs,
            learning_rate=learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,  # a float below 1: a share of the steps (transformers 5)
            per_device_train_batch_size=batch_size,
            max_length=max_length,
            packing=True,  # reviews are short: pack them into full 128-token rows
            packing_strategy="wrapped",  # "bfd" implies padding-free attention, meant for GPU kernels
            bf16=False,
            activation_checkpointing=False,
            logging_steps=50,
            save_strategy="no",
            report_to="none",
            seed=seed,
        )
        trainer = SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(init_dir),
            args=args,
            train_dataset=Dataset.from_dict({"text": [text + tokenizer.eos_token for text in texts]}),
            processing_class=tokenizer,
        )
        result = trainer.train()
        final = Path(work) / "final"
        manifest = {
            "settings": settings,
            "settings_hash": settings_hash(settings),
            "texts": len(texts),
            "train_loss": result.training_loss,
            "runtime_s": result.metrics["train_runtime"],
        }
        with writing(out_dir):  # a full disk names the model directory, which keeps its previous model
            trainer.save_model(str(final))
            tokenizer.save_pretrained(final)
            (final / MANIFEST).write_text(json.dumps(manifest, indent=2))
            replace_dir(final, out_dir, MANIFEST)
    logger.info("SFT model saved to %s (train loss %.3f)", out_dir, manifest["train_loss"])
    return out_dir


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default=str(config.MODELS_DIR / "tiny-gpt2-sft"))
    parser.add_argument(
        "--data_dir",
        default=None,
        help="folder of the study's IMDb files (default: FDPO_DATA_DIR, else the Hub's IMDb)",
    )
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs <= 0 or args.learning_rate <= 0:
        raise InputError("--epochs and --learning_rate must be > 0")
    train_sft(args.out_dir, args.data_dir, args.epochs, args.learning_rate, seed=args.seed)


cli = exits_cleanly(main)

if __name__ == "__main__":
    cli()
