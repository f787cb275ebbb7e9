"""Train a base policy from scratch with TRL's SFTTrainer on IMDb text (the tiny preset's SFT model).

    poetry run python train_dpo/sft.py                # models/tiny-gpt2-sft-<hash>, ~2 min on 2 CPU cores
    poetry run python train_dpo/sft.py --epochs 3 --out_dir models/my-sft

The study started from `lvwerra/gpt2-imdb` (GPT-2 fine-tuned on IMDb). On a CPU, this stage makes the
analogue: the tiny GPT-2 of `common/tiny.py` (locally trained BPE tokenizer, random init) trained on
IMDb review text (the Hub's `stanfordnlp/imdb`, or the study's local files under FDPO_DATA_DIR). The
result is cached: a finished model with the same settings is not retrained.

A finished model folder is never replaced. The dataset, training and sampling stages of every sweep read
it by path for as long as they run, and take no lock to do so (`from_pretrained` cannot), so a folder
rewritten under them would give one sweep two base policies. Each setting therefore has its own folder,
`models/tiny-gpt2-sft-<settings hash>` (`sft_model_dir`): it is built in a scratch folder beside it,
under a lock that a second builder of the same setting is refused by, and renamed into place once. An
explicit `--out_dir` that already holds a model made with other settings is refused too, not replaced:
only its owner knows that nothing reads it, and removing it is theirs to do.
"""

from __future__ import annotations

import common.help  # noqa: F401  (first: answers --help before the heavy imports below)

# isort: split
import argparse
import json
import logging
from pathlib import Path

import config
from common import imdb
from common.appendlog import describe_changes, settings_hash
from common.atomic import check_replaceable, replace_dir, staging_dir
from common.cli import ArgParser
from common.errors import InputError, exits_cleanly, writing
from common.lock import output_lock

logger = logging.getLogger("sft")

MANIFEST = "sft_manifest.json"
NAME = "tiny-gpt2-sft"  # the default folders: models/tiny-gpt2-sft-<first 12 hex digits of the settings hash>


def sft_settings(
    epochs: float = 2.0,
    data_dir: Path | str | None = None,
    learning_rate: float = 2e-3,
    max_length: int = 128,
    batch_size: int = 32,
    seed: int = 0,
) -> dict:
    """Everything the SFT model depends on, as its manifest records it; `train_sft` documents the args."""
    # float(): `--epochs 2` and epochs=2.0 are one model, so they get one hash and one folder.
    return {"epochs": float(epochs), "learning_rate": float(learning_rate), "max_length": max_length,
            "batch_size": batch_size, "seed": seed, "data": imdb.text_fingerprint(data_dir)}  # fmt: skip


def sft_model_dir(epochs: float = 2.0, data_dir: Path | str | None = None, **settings) -> Path:
    """The default folder of the SFT model with these settings (`sft_settings`' args), built or not.

    Needs no training library: reproduce.py names the base policy with it while planning and in a dry run.
    """
    return settings_folder(sft_settings(epochs, data_dir, **settings))


def settings_folder(settings: dict) -> Path:
    return config.MODELS_DIR / f"{NAME}-{settings_hash(settings)[:12]}"


def lock_dir(out_dir: Path) -> Path:
    """The folder whose lock guards the building of `out_dir`: beside it, since `out_dir` itself only ever
    appears by the final rename (a lock file inside it would be renamed away with the folder it is in)."""
    return out_dir.with_name(f".{out_dir.name}.lock")


def finished(out_dir: Path, settings: dict) -> bool:
    """Whether `out_dir` holds the model made with `settings`.

    Raises:
        InputError: it holds a model made with other settings, which is left alone (module docstring).
    """
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    if manifest.get("settings_hash") == settings_hash(settings):
        return True
    raise InputError(
        f"{out_dir}: holds an SFT model made with other settings "
        f"({describe_changes(manifest.get('settings', {}), settings)}); it is not replaced, since other "
        "runs may be reading it: leave out --out_dir for a folder per setting, or remove it first"
    )


def train_sft(
    out_dir: Path | str | None = None,
    data_dir: Path | str | None = None,
    epochs: float = 2.0,
    learning_rate: float = 2e-3,
    max_length: int = 128,
    batch_size: int = 32,
    seed: int = 0,
) -> Path:
    """The SFT'd tiny GPT-2 with these settings, trained unless a finished one is already there.

    Args:
        out_dir: its folder; default `sft_model_dir(...)` of the same settings, one folder per setting.
        data_dir: folder of the study's IMDb files (default: FDPO_DATA_DIR, else the Hub's IMDb).
        epochs, learning_rate, max_length, batch_size, seed: SFTTrainer's settings.

    Returns:
        The model's folder, never rewritten once there.

    Raises:
        InputError: `out_dir` holds a model made with other settings, or another process is building it.
    """
    settings = sft_settings(epochs, data_dir, learning_rate, max_length, batch_size, seed)
    out_dir = Path(out_dir or settings_folder(settings))
    if finished(out_dir, settings):  # no lock to read it: a finished folder never changes
        logger.info("SFT model %s is up to date", out_dir)
        return out_dir
    texts = imdb.texts(data_dir)  # a damaged IMDb file stops here, in one line, before the lock's folder
    with output_lock(lock_dir(out_dir), wait=True):  # a second sweep needing it waits, then reads it
        if finished(out_dir, settings):  # another builder finished it between our look and our lock
            logger.info("SFT model %s is up to date", out_dir)
            return out_dir
        check_replaceable(out_dir, MANIFEST)
        build(out_dir, settings, data_dir, texts)
    return out_dir


def build(out_dir: Path, settings: dict, data_dir: Path | str | None, texts: list[str]) -> None:
    """Train the model in a scratch folder beside `out_dir`, then rename it to `out_dir` (caller locks)."""
    # The training stack is imported here, not above: `sft_model_dir` is used by plans without it.
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from common.tiny import build_tiny_gpt2

    epochs, learning_rate, seed = settings["epochs"], settings["learning_rate"], settings["seed"]
    with staging_dir(out_dir) as work:
        init_dir = build_tiny_gpt2(Path(work) / "init", data_dir, seed=seed)
        tokenizer = AutoTokenizer.from_pretrained(init_dir)
        args = SFTConfig(
            output_dir=str(Path(work) / "trainer"),
            num_train_epochs=epochs,
            learning_rate=learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,  # a float below 1: a share of the steps (transformers 5)
            per_device_train_batch_size=settings["batch_size"],
            max_length=settings["max_length"],
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
        with writing(out_dir):  # a full disk names the model directory, which stays as it was: absent
            trainer.save_model(str(final))
            tokenizer.save_pretrained(final)
            (final / MANIFEST).write_text(json.dumps(manifest, indent=2))
            replace_dir(final, out_dir, MANIFEST)  # onto nothing or an empty folder, never a model
    logger.info("SFT model saved to %s (train loss %.3f)", out_dir, manifest["train_loss"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, checked: InputError on a malformed one, or on a non-positive rate or count."""
    parser = ArgParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out_dir",
        default=None,
        help="the model's folder (default: models/tiny-gpt2-sft-<settings hash>); one with another model "
        "in it is refused, not replaced",
    )
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
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    train_sft(args.out_dir, args.data_dir, args.epochs, args.learning_rate, seed=args.seed)


cli = exits_cleanly(main)

if __name__ == "__main__":
    cli()
