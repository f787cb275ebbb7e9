"""Evaluation metrics against hand-computed values."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import entropy
from transformers import AutoTokenizer

from analysis import intervals
from analysis.calibration import expected_calibration_error, reliability_bins
from analysis.intervals import between_seeds, cluster_bootstrap_means, mean_ci, seed_interval
from train_dpo.divergences import get_divergence
from train_dpo.metrics import (
    distinct_n,
    effective_sample_size,
    f_divergence_is_terms,
    f_divergence_ref_terms,
    preference_probability,
    unigram_entropy,
)
from train_dpo.sequences import completion_stats


def test_unigram_entropy_of_known_distributions():
    assert unigram_entropy([[0, 0], [1, 1]]) == pytest.approx(math.log(2))
    assert unigram_entropy([[7, 7, 7]]) == 0.0
    p = np.array([0.5, 0.25, 0.25])
    assert unigram_entropy([[0, 0, 1], [2]]) == pytest.approx(-(p * np.log(p)).sum())


def test_distinct_n():
    assert distinct_n([[1, 2, 1, 2]], 1) == 2 / 4
    assert distinct_n([[1, 2, 1, 2]], 2) == 2 / 3  # (1,2), (2,1), (1,2)
    assert math.isnan(distinct_n([[1]], 2))


def test_ece_on_a_hand_made_set():
    # Confidences 0.9, 0.9 (both right) and 0.6, 0.6 (one right): |1 - .9| / 2 + |.5 - .6| / 2 = 0.1.
    assert expected_calibration_error([0.9, 0.9, 0.6, 0.4]) == pytest.approx(0.1)
    assert expected_calibration_error([0.5, 0.5]) == 0.0  # ties are coin flips, confidence 0.5
    assert expected_calibration_error([0.99] * 4) == pytest.approx(0.01)


def test_preference_probability_is_bradley_terry_on_f_prime():
    assert preference_probability(np.array([1.0]), np.array([0.0]), beta=2.0)[0] == pytest.approx(
        1 / (1 + math.exp(-2))
    )


def test_mean_ci_covers_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 50), rng.normal(1.0, 1.0, 5000)
    m, lo, hi, nonfinite = mean_ci(small)
    assert lo < m < hi and lo < 1.0 < hi and nonfinite == 0
    _, lo_l, hi_l, _ = mean_ci(large)
    assert hi_l - lo_l < (hi - lo) / 5
    assert mean_ci([2.0, 2.0], clusters=["a", "b"]) == (2.0, 2.0, 2.0, 0)  # two prompts, one value


@pytest.mark.parametrize("values, clusters", [([2.0], None), ([2.0, 2.0], ["a", "a"]), ([1.0, 3.0], [0, 0])])
def test_one_prompt_gives_a_mean_and_no_interval(values, clusters):
    """A bootstrap over one cluster only redraws it: its zero width is no 95% interval."""
    mean, lo, hi, _ = mean_ci(values, clusters)
    assert mean == np.mean(values) and math.isnan(lo) and math.isnan(hi)


class UniformLM(torch.nn.Module):
    """Every next token equally likely: entropy log V per token, log-prob -log V per token."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=64)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


def test_completion_stats_on_a_known_distribution(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    vocab = len(tokenizer)
    prompts, completions = ["A good film", "Bad"], [" indeed, truly.", " and long and dull"]
    stats = completion_stats(UniformLM(vocab), tokenizer, prompts, completions, batch_size=1)
    n = torch.tensor(
        [len(tokenizer(c, add_special_tokens=False).input_ids) for c in completions], dtype=torch.float64
    )
    torch.testing.assert_close(stats["tokens"], n)
    # Each token's log-softmax is float32 (as the model computes it); only the sums are float64.
    torch.testing.assert_close(stats["entropy"], n * math.log(vocab), rtol=1e-6, atol=0)
    torch.testing.assert_close(stats["logps"], -n * math.log(vocab), rtol=1e-6, atol=0)


# --- intervals over prompts and seeds

# A tiny table: prompts a (2 completions), b (1), c (3). Clusters are numbered in sorted label order.
PROMPTS_OF = ["c", "a", "b", "c", "a", "c"]
VALUES = [0.0, 1.0, 5.0, 2.0, 3.0, 4.0]  # a: 1 + 3, b: 5, c: 0 + 2 + 4


def test_cluster_bootstrap_against_a_hand_computed_resample(monkeypatch):
    """Each resample keeps every completion of each drawn prompt; its mean is over all kept completions."""
    drawn = np.array([[2, 2, 0], [1, 1, 1], [0, 1, 2]])  # (c, c, a), (b, b, b), (a, b, c)
    monkeypatch.setattr(intervals, "cluster_resample_indices", lambda k, n, seed: drawn[:n])
    by_hand = [(0 + 2 + 4 + 0 + 2 + 4 + 1 + 3) / 8, 5.0, (1 + 3 + 5 + 0 + 2 + 4) / 6]
    np.testing.assert_allclose(cluster_bootstrap_means(VALUES, PROMPTS_OF, n_resamples=3), by_hand)
    # Percentile interval of [2.0, 2.5, 5.0] at 95%: linear interpolation at ranks 0.05 and 1.95.
    interval = mean_ci(VALUES, clusters=PROMPTS_OF, n_resamples=3)
    assert interval.mean == pytest.approx(15 / 6)
    assert (interval.lo, interval.hi) == pytest.approx((2.0 + 0.05 * 0.5, 2.5 + 0.95 * 2.5))


def test_cluster_bootstrap_same_seed_same_resamples():
    drawn = np.random.default_rng(5).integers(0, 3, size=(40, 3))  # the documented draw
    sums, counts = np.array([4.0, 5.0, 6.0]), np.array([2, 1, 3])  # a, b, c
    by_hand = [sums[row].sum() / counts[row].sum() for row in drawn]
    np.testing.assert_allclose(cluster_bootstrap_means(VALUES, PROMPTS_OF, n_resamples=40, seed=5), by_hand)
    assert mean_ci(VALUES, PROMPTS_OF, seed=5) == mean_ci(VALUES, PROMPTS_OF, seed=5)
    other = cluster_bootstrap_means(VALUES, PROMPTS_OF, n_resamples=40, seed=6)
    assert not np.allclose(other, by_hand)


def test_cluster_bootstrap_is_wider_than_the_plain_one_when_prompts_cluster():
    """Completions that share a prompt are not independent: resampling them alone overstates precision."""
    rng = np.random.default_rng(0)
    prompt_effect = rng.normal(0.0, 1.0, 40)
    values = np.repeat(prompt_effect, 8) + rng.normal(0.0, 0.1, 320)
    prompts = np.repeat(np.arange(40), 8)
    clustered, plain = mean_ci(values, prompts), mean_ci(values)
    assert clustered.hi - clustered.lo > 2 * (plain.hi - plain.lo)


def test_non_finite_values_are_counted_not_hidden():
    interval = mean_ci([1.0, np.nan, np.inf, 3.0, -np.inf], clusters=[0, 0, 1, 1, 2])
    assert interval.mean == 2.0 and interval.nonfinite == 3
    assert mean_ci([np.nan]).nonfinite == 1 and math.isnan(mean_ci([np.nan]).mean)
    assert math.isnan(mean_ci([1.0, 2.0], clusters=["a", "a"]).lo)  # one prompt: no interval to give


def test_seed_interval_is_students_t():
    interval = seed_interval([1.0, 2.0, 3.0])  # mean 2, s = 1, t_{0.975, 2} = 4.302652729911275
    half = 4.302652729911275 / math.sqrt(3)
    assert (interval.mean, interval.lo, interval.hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert math.isnan(seed_interval([2.0]).lo)


def test_between_seeds_pools_runs_of_one_configuration():
    table = pd.DataFrame({"model": ["j0", "j1", "j2", "s0"], "loss": "sigmoid",
                          "divergence": ["jsd", "jsd", "jsd", "reverse_kl"], "alpha": np.nan,
                          "beta": 0.1, "seed": [0, 1, 2, 0], "reward": [1.0, 2.0, 3.0, 5.0]})  # fmt: skip
    by_config = between_seeds(table, ["reward"]).set_index("divergence")
    assert list(by_config["n_seeds"]) == [3, 1]
    assert by_config.loc["jsd", "reward_seed_mean"] == 2.0
    assert by_config.loc["jsd", "reward_seed_hi"] == pytest.approx(2.0 + 4.302652729911275 / math.sqrt(3))
    assert math.isnan(by_config.loc["reverse_kl", "reward_seed_lo"])


# --- estimators on two categorical "policies" whose divergences are known in closed form

PI = np.array([0.5, 0.3, 0.15, 0.05])
REF = np.array([0.2, 0.3, 0.3, 0.2])


def draws(probs, seed, prompts=500, per_prompt=4):
    """Samples of a categorical distribution, grouped as completions of prompts; their log u, prompts."""
    tokens = np.random.default_rng(seed).choice(len(probs), size=prompts * per_prompt, p=probs)
    return np.log(PI[tokens]) - np.log(REF[tokens]), np.repeat(np.arange(prompts), per_prompt)


def test_kl_estimators_cover_the_closed_form():
    on_policy, prompts = draws(PI, seed=1)
    on_reference, ref_prompts = draws(REF, seed=2)
    kl = mean_ci(on_policy, prompts)  # the `kl` column: E_pi[log u]
    kl_forward = mean_ci(-on_reference, ref_prompts)  # the `kl_forward` column: E_ref[-log u]
    assert kl.lo <= entropy(PI, REF) <= kl.hi
    assert kl_forward.lo <= entropy(REF, PI) <= kl_forward.hi
    # D_f for reverse / forward KL from reference samples is the same quantity again.
    reverse = mean_ci(f_divergence_ref_terms(get_divergence("reverse_kl"), on_reference), ref_prompts)
    forward = mean_ci(f_divergence_ref_terms(get_divergence("forward_kl"), on_reference), ref_prompts)
    assert reverse.lo <= entropy(PI, REF) <= reverse.hi and forward.lo <= entropy(REF, PI) <= forward.hi


def test_f_divergence_estimators_cover_the_closed_form():
    """JSD's f gives D_f = KL(pi || m) + KL(ref || m), m the mixture; both estimators cover it."""
    on_policy, prompts = draws(PI, seed=3)
    on_reference, ref_prompts = draws(REF, seed=4)
    jsd = get_divergence("jsd")
    m = (PI + REF) / 2
    exact = entropy(PI, m) + entropy(REF, m)
    from_ref = mean_ci(f_divergence_ref_terms(jsd, on_reference), ref_prompts)
    importance = mean_ci(f_divergence_is_terms(jsd, on_policy), prompts)
    assert from_ref.lo <= exact <= from_ref.hi and importance.lo <= exact <= importance.hi


def test_effective_sample_size_flags_a_sum_carried_by_one_sample():
    assert effective_sample_size([2.0, -2.0, 2.0, 2.0]) == pytest.approx(4.0)
    assert effective_sample_size([1e300, 1.0, 1.0, 1.0]) == pytest.approx(1.0)
    # forward KL's f(u)/u = -log(u)/u: samples the reference rarely draws carry weight e^{-log u}.
    terms = f_divergence_is_terms(get_divergence("forward_kl"), [-40.0, 0.1, 0.2, -0.1])
    assert effective_sample_size(terms) < 1.01


def test_reliability_bins_and_ece_on_a_hand_made_set():
    bins = reliability_bins([0.9, 0.9, 0.6, 0.4, 0.5])
    assert list(bins["count"]) == [1, 2, 0, 0, 0, 0, 0, 2, 0, 0]  # 0.5 | 0.6, 0.6 (0.4 -> 0.6) | 0.9, 0.9
    assert bins.loc[1, "accuracy"] == 0.5 and bins.loc[7, "accuracy"] == 1.0
    assert expected_calibration_error([0.9, 0.9, 0.6, 0.4, 0.5]) == pytest.approx((2 * 0.1 + 2 * 0.1 + 0) / 5)
