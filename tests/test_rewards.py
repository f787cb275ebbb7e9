"""The reward-model interface: VADER and a sequence classifier, batched and order-preserving."""

import math
from pathlib import Path

import pytest
import torch

from common import rewards
from common.errors import InputError
from common.rewards import ClassifierReward, load_reward, native_bf16

TEXTS = ["A wonderful, moving film.", "Dull and awful.", "It is a film.", "Great " * 40, "Bad."]


def test_vader_ranks_sentiment():
    scores = load_reward("vader").score(TEXTS)
    assert scores[0] > 0.5 and scores[1] < -0.5 and scores[2] == 0.0
    assert all(-1.0 <= s <= 1.0 for s in scores)


def test_classifier_logit_and_probability(tiny_classifier_dir):
    exact = {"batch_size": 2, "device": "cpu", "dtype": "float32"}
    logit = load_reward(str(tiny_classifier_dir), output="logit", **exact)
    prob = load_reward(str(tiny_classifier_dir), output="prob", **exact)
    assert logit.positive == 1  # from id2label
    # Computed by hand, one text at a time, without the length-sorted batching.
    model, tokenizer = logit.model, logit.tokenizer
    for text, got_logit, got_prob in zip(TEXTS, logit.score(TEXTS), prob.score(TEXTS), strict=True):
        with torch.no_grad():
            logits = model(**tokenizer(text, return_tensors="pt")).logits[0]
        assert got_logit == pytest.approx(logits[1].item(), abs=1e-4)
        assert got_prob == pytest.approx(logits.softmax(-1)[1].item(), abs=1e-4)


def test_classifier_errors(tmp_path, tiny_classifier_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        ClassifierReward(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="'logit' or 'prob'"):
        ClassifierReward(str(tiny_classifier_dir), output="softmax")
    with pytest.raises(
        InputError, match="--reward_dtype must be 'auto', 'float32' or 'bfloat16', got 'float16'"
    ):
        ClassifierReward(str(tiny_classifier_dir), dtype="float16")


def test_bfloat16_scores_stay_close_and_are_named_apart(tiny_classifier_dir):
    fp32 = ClassifierReward(str(tiny_classifier_dir), device="cpu", dtype="float32")
    bf16 = ClassifierReward(str(tiny_classifier_dir), device="cpu", dtype="bfloat16")
    assert fp32.batch_size == 8  # the CPU default (docs/performance.md)
    assert bf16.name == fp32.name + ":bfloat16"  # a score manifest tells them apart
    exact, rounded = fp32.score(TEXTS), bf16.score(TEXTS)
    assert exact != rounded
    assert max(abs(a - b) for a, b in zip(exact, rounded, strict=True)) < 0.05


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_hardware_has_it(tiny_classifier_dir, monkeypatch, native):
    monkeypatch.setattr(rewards, "native_bf16", lambda device: native)
    auto = ClassifierReward(str(tiny_classifier_dir), device="cpu")
    same = ClassifierReward(str(tiny_classifier_dir), device="cpu", dtype="bfloat16" if native else "float32")
    assert auto.autocast is native and auto.name == same.name
    assert auto.score(TEXTS) == same.score(TEXTS)


def test_native_bf16_reads_the_hardware(monkeypatch):
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # Linux names the CPU's bf16 units among its flags
        flags = set(cpuinfo.read_text().split())
        assert native_bf16("cpu") == bool({"amx_bf16", "avx512_bf16"} & flags)
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert native_bf16("cuda") is supported and native_bf16("cuda:1") is supported
    assert native_bf16("mps") is False


def test_empty_continuations_are_scored(tiny_classifier_dir):
    # The tiny BPE tokenizer adds no special tokens: an empty text would be a zero-length input.
    reward = ClassifierReward(str(tiny_classifier_dir), batch_size=1, device="cpu")
    scores = reward.score(["", "Fine."])
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)
    assert scores == reward.score([" ", "Fine."])  # an empty text is scored as a single space
