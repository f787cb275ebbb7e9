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
# A second sentiment scorer that training never sees (the official f-DPO code's reward): over-optimisation.
GOLD_REWARD_MODEL = os.environ.get("FDPO_GOLD_REWARD_MODEL", "siebert/sentiment-roberta-large-english")
IMDB_DATASET = os.environ.get("FDPO_IMDB_DATASET", "stanfordnlp/imdb")

# A local copy of the study's reference data (prompts and scored generations), read in place. Unset by
# default: IMDb text then comes from IMDB_DATASET on the Hub. Set it for offline runs and for the tests
# that compare with the study's own files.
DATA_DIR_ENV = "FDPO_DATA_DIR"
DATA_DIR = Path(os.environ[DATA_DIR_ENV]).expanduser() if os.environ.get(DATA_DIR_ENV) else None
PROMPTS_FILE = "positive_reviews_first_sent.json"  # 12,500 first sentences of positive reviews
SCORED_FILE = "scored_gpt_dataset.json"  # 602 prompts x 6 continuations with distilbert-imdb scores

# Everything the project writes; all git-ignored.
MODELS_DIR = Path(os.environ.get("FDPO_MODELS_DIR", REPO_ROOT / "models"))  # tiny base models, tokenizers
RESULTS_DIR = Path(os.environ.get("FDPO_RESULTS_DIR", REPO_ROOT / "results"))  # one folder per training run
DATASETS_DIR = Path(os.environ.get("FDPO_DATASETS_DIR", REPO_ROOT / "data"))  # built preference datasets
DATASET_DIR = DATASETS_DIR / "imdb"  # dataset/main.py's default --out_dir; train.py reads its dataset/hf
TINY_DATASET_DIR = DATASETS_DIR / "imdb_tiny"  # the same for --preset tiny

# The study's training set-up (its README and trainer): fp32, batch 8, LoRA on GPT-2's attention.
MAX_LENGTH = 256  # prompt + completion tokens
MAX_PROMPT_LENGTH = 128
BATCH_SIZE = 8
LORA_R = 8
LORA_ALPHA = 32
LORA_TARGET_MODULES = ("c_attn", "c_proj")
