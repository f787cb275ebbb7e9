"""Paths and defaults shared by every entry point.

Every Hub id below is the original study's choice and can be replaced by a local path, either on the
command line or through the environment variable named beside it. Secrets never live here: they
come from `.env` (see `.env.example`).
"""

import os
from pathlib import Path

from dotenv import load_dotenv

REPO_ROOT = Path(__file__).resolve().parent

# `.env` fills in what the shell did not set (HF_TOKEN, WANDB_*, HF_HUB_OFFLINE ...); it never overrides.
load_dotenv(REPO_ROOT / ".env", override=False)

# The original study's models and data on the Hugging Face Hub.
SFT_MODEL = os.environ.get("FDPO_SFT_MODEL", "lvwerra/gpt2-imdb")  # policy and reference, GPT-2 124M
REWARD_MODEL = os.environ.get("FDPO_REWARD_MODEL", "lvwerra/distilbert-imdb")  # positive-class logit
IMDB_DATASET = os.environ.get("FDPO_IMDB_DATASET", "stanfordnlp/imdb")

# The study's reference data (prompts and scored generations). Read in place, never copied.
DATA_DIR = Path(os.environ.get("FDPO_DATA_DIR", REPO_ROOT.parent / "shared" / "data" / "imdb"))
PROMPTS_FILE = "positive_reviews_first_sent.json"  # 12,500 first sentences of positive reviews
SCORED_FILE = "scored_gpt_dataset.json"  # 602 prompts x 6 continuations with distilbert-imdb scores

# Everything the project writes; all git-ignored.
MODELS_DIR = Path(os.environ.get("FDPO_MODELS_DIR", REPO_ROOT / "models"))  # tiny base models, tokenizers
RESULTS_DIR = Path(os.environ.get("FDPO_RESULTS_DIR", REPO_ROOT / "results"))  # one folder per training run
DATASETS_DIR = Path(os.environ.get("FDPO_DATASETS_DIR", REPO_ROOT / "data"))  # built preference datasets

# The study's training set-up (its README and trainer): fp32, batch 8, LoRA on GPT-2's attention.
MAX_LENGTH = 256  # prompt + completion tokens
MAX_PROMPT_LENGTH = 128
BATCH_SIZE = 8
LORA_R = 8
LORA_ALPHA = 32
LORA_TARGET_MODULES = ("c_attn", "c_proj")


def data_file(name: str, data_dir: Path | str | None = None) -> Path:
    """Path of one of the study's reference files, under `data_dir` or `DATA_DIR`."""
    return Path(data_dir or DATA_DIR) / name
