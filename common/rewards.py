"""One reward-model interface for the dataset and for evaluation.

Rewards score the continuation alone, never the prompt: the prompt is shared by all answers and, being a
positive review's opening, would pull every score up. (The study scored prompt + continuation.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol

import torch
from tqdm.auto import tqdm

import config
from common.errors import InputError, check_model_source
from common.weights import LOAD_ERRORS, load_error, load_kwargs


@dataclass
class RewardArguments:
    """The reward flags of every command that scores text, declared once (`load_reward` takes them)."""

    reward_model: str = field(
        default=config.REWARD_MODEL, metadata={"help": "Classifier id/dir, 'vader' or 'textblob'."}
    )
    reward_output: str = field(
        default="logit", metadata={"help": "Classifier rewards: logit (the study) or prob (the paper)."}
    )
    reward_dtype: str = field(
        default="auto",
        metadata={
            "help": "auto (bfloat16 on GPUs and CPUs that multiply it natively, float32 elsewhere; mean "
            "rewards move by bf16 rounding only, docs/performance.md), float32 or bfloat16."
        },
    )

    def __post_init__(self):
        """Refuse `--reward_output` and `--reward_dtype` away from their defaults with a lexicon reward.

        VADER and TextBlob have neither logits nor weights: such a flag would be silently ignored, and,
        being recorded with a run's settings, would still change its fingerprint and retrain it. Held at
        their defaults, the two are what every lexicon run has always recorded.
        """
        if self.reward_model not in LEXICONS:
            return
        defaults = {item.name: item.default for item in fields(self)}
        for name in ("reward_output", "reward_dtype"):
            if getattr(self, name) != defaults[name]:
                raise ValueError(
                    f"--{name} {getattr(self, name)}: applies to a classifier reward only; --reward_model "
                    f"{self.reward_model} is a lexicon (leave --{name} at its default, {defaults[name]})"
                )


class RewardModel(Protocol):
    name: str

    def score(self, texts: Sequence[str]) -> list[float]:
        """One reward per text; higher means more positive."""


class VaderReward:
    """VADER's compound sentiment in [-1, 1]: lexicon-based, offline, no model weights."""

    name = "vader"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, texts: Sequence[str]) -> list[float]:
        return [
            self._analyzer.polarity_scores(text)["compound"]
            for text in tqdm(texts, desc="vader", leave=False)
        ]


class TextBlobReward:
    """TextBlob's pattern-lexicon polarity in [-1, 1]: a second offline scorer, independent of VADER.

    Its lexicon (adjectives rated by hand, with intensifiers and negation) ships inside the package, so it
    works offline. Training never sees it, which makes it the tiny preset's gold reward: a model that
    games VADER's word list gains VADER reward without gaining as much of this one.
    """

    name = "textblob"

    def __init__(self) -> None:
        from textblob.en.sentiments import PatternAnalyzer

        self._analyzer = PatternAnalyzer()

    def score(self, texts: Sequence[str]) -> list[float]:
        return [self._analyzer.analyze(text).polarity for text in tqdm(texts, desc="textblob", leave=False)]


class ClassifierReward:
    """A sentiment classifier's positive-class logit (the study's reward) or probability (the paper's)."""

    def __init__(
        self,
        model: str,
        output: str = "logit",
        batch_size: int | None = None,
        device: str | None = None,
        dtype: str = "auto",
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if output not in ("logit", "prob"):
            raise InputError(f"--reward_output must be 'logit' or 'prob', got '{output}'")
        if dtype not in ("auto", "float32", "bfloat16"):
            raise InputError(f"--reward_dtype must be 'auto', 'float32' or 'bfloat16', got '{dtype}'")
        check_model_source(model, "--reward_model")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
            self.model = AutoModelForSequenceClassification.from_pretrained(model, **load_kwargs())
        except LOAD_ERRORS as error:
            raise load_error(f"--reward_model {model}", error) from None
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        # On CPU small batches win: attention over 64 long texts at once outgrows the caches
        # (docs/performance.md).
        self.batch_size = batch_size or (64 if self.device.startswith("cuda") else 8)
        # bf16 autocast: rewards within bf16 rounding, several times faster where the hardware multiplies
        # bf16 natively (docs/performance.md), which `auto` asks; elsewhere bf16 is emulated, and slower.
        self.autocast = dtype == "bfloat16" or (dtype == "auto" and native_bf16(self.device))
        self.name = f"{model}:{output}" + (":bfloat16" if self.autocast else "")
        self.output = output
        self.positive = self._positive_index()

    def _positive_index(self) -> int:
        labels = {int(i): str(label).lower() for i, label in self.model.config.id2label.items()}
        for index, label in labels.items():
            if label in ("positive", "pos"):
                return index
        return 1 if len(labels) == 2 else 0  # LABEL_1 is positive in IMDb classifiers such as distilbert-imdb

    @torch.no_grad()
    def score(self, texts: Sequence[str]) -> list[float]:
        # Longest first, so each batch pads to similar lengths; results go back to input order.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        scores = [0.0] * len(texts)
        # One autocast region for all batches, so that each weight is cast to bf16 once, not once per batch.
        with torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.autocast):
            for start in tqdm(range(0, len(order), self.batch_size), desc="reward", leave=False):
                batch = order[start : start + self.batch_size]
                # An empty continuation is scored as a single space: some tokenizers add no special tokens,
                # and a zero-length input has no position to classify.
                inputs = [texts[i] or " " for i in batch]
                encoded = self.tokenizer(
                    inputs, padding=True, truncation=True, max_length=512, return_tensors="pt"
                ).to(self.device)
                logits = self.model(**encoded).logits.float()
                values = logits.softmax(-1) if self.output == "prob" else logits
                for i, value in zip(batch, values[:, self.positive].tolist(), strict=True):
                    scores[i] = value
        return scores


def native_bf16(device: str) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware: a CUDA GPU that supports bf16, or a CPU with
    AMX or AVX-512 BF16. Other CPUs emulate bf16 and run it slower than float32."""
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    if device == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu, since PyTorch 2.3
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return False


LEXICONS = {"vader": VaderReward, "textblob": TextBlobReward}  # scorers that ship inside their package


def load_reward(spec: str = config.REWARD_MODEL, output: str = "logit", **kwargs) -> RewardModel:
    """`vader`, `textblob`, or a sequence classifier by Hub id / local directory."""
    return LEXICONS[spec]() if spec in LEXICONS else ClassifierReward(spec, output=output, **kwargs)
