"""The statistics a referee asked for: ECE's finite-sample floor and temperature-scaled ECE against hand
computations and a known temperature, preference accuracy from held-out pairs, the small-sample seed
interval's coverage against a known truth, Holm's adjustment, and the corrected verdict rule
(analysis/frontier.py) on constructed tables."""

import numpy as np
import pandas as pd
import pytest
from scipy import special

from analysis.calibration import (
    ece_floor,
    expected_calibration_error,
    fit_half,
    fit_temperature,
    preference_correct,
)
from analysis.frontier import Calibration, claim_verdict, matched
from analysis.intervals import holm, seeds_and_prompts
from analysis.report import verdict

# --- the finite-sample floor of ECE


def test_the_floor_of_one_pair_is_its_expected_miss():
    """Right with probability 0.8 at confidence 0.8: |1 - 0.8| w.p. 0.8, |0 - 0.8| w.p. 0.2."""
    assert ece_floor([0.8]) == pytest.approx(0.8 * 0.2 + 0.2 * 0.8, abs=1e-12)


def test_the_floor_of_two_pairs_in_one_bin_matches_a_hand_computation():
    """0.82 and 0.84 share the bin (0.80, 0.85]: S right of 2, E|S - 1.66| over P(S) = 0.0288, 0.2824,
    0.6888. A tie (0.5) is always half right, so it adds nothing but counts in N."""
    by_hand = 0.0288 * 1.66 + 0.2824 * 0.66 + 0.6888 * 0.34
    assert ece_floor([0.82, 0.84]) == pytest.approx(by_hand / 2, abs=1e-12)
    assert ece_floor([0.82, 0.84, 0.5]) == pytest.approx(by_hand / 3, abs=1e-12)
    assert np.isnan(ece_floor([]))


def test_the_floor_is_the_mean_ece_of_simulated_calibrated_runs():
    """An independent check of the definition: the ECE that expected_calibration_error gives perfectly
    calibrated runs (each pair right with its own confidence), averaged over many runs."""
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 30)
    eces = []
    for _ in range(800):
        right = rng.uniform(size=confidence.size) < confidence
        eces.append(expected_calibration_error(np.where(right, confidence, 1 - confidence)))
    standard_error = np.std(eces) / np.sqrt(len(eces))
    assert ece_floor(confidence) == pytest.approx(np.mean(eces), abs=4 * standard_error)


def test_the_debiased_ece_is_the_ece_minus_the_runs_own_floor():
    probs = np.array([0.92, 0.83, 0.28, 0.62, 0.61, 0.97, 0.12])
    pairs = pd.DataFrame({"model": "run", "prompt": ["a"] * 4 + ["b"] * 3, "prob_chosen": probs})
    debiased = Calibration(pairs, ["run"], statistic="ece_debiased").ece()[0]
    floor = ece_floor(np.maximum(probs, 1 - probs))
    assert debiased == pytest.approx(expected_calibration_error(probs) - floor, abs=1e-12)
    # A bootstrap replicate reweights the ECE and keeps the run's floor.
    first_four = Calibration(pairs.iloc[:4], ["run"]).ece()[0]
    assert Calibration(pairs, ["run"], statistic="ece_debiased").ece(np.array([1.0, 0.0]))[
        0
    ] == pytest.approx(first_four - floor, abs=1e-12)


# --- temperature scaling


def overconfident_pairs(rng, n: int, temperature: float, prompts: int = 200) -> pd.DataFrame:
    """Pairs whose chosen answer won with probability sigma(z), reported at logit temperature * z."""
    z = rng.normal(0, 1.5, n)
    won = rng.uniform(size=n) < special.expit(z)  # the first answer won: it is the chosen one
    margin = np.where(won, temperature * z, -temperature * z)
    return pd.DataFrame({"model": "run", "prompt": [f"prompt {i % prompts}" for i in range(n)],
                         "margin": margin, "prob_chosen": special.expit(margin)})  # fmt: skip


def test_the_fitted_temperature_recovers_a_known_one():
    pairs = overconfident_pairs(np.random.default_rng(0), 20000, temperature=2.5)
    assert fit_temperature(pairs["margin"]) == pytest.approx(2.5, rel=0.05)
    assert fit_temperature(pairs["margin"] / 2.5) == pytest.approx(1.0, rel=0.05)


def test_temperature_scaled_ece_is_fitted_on_one_half_of_the_prompts_and_scored_on_the_other():
    pairs = overconfident_pairs(np.random.default_rng(1), 8000, temperature=3.0)
    half = fit_half(pairs["prompt"])
    assert 0.35 < half.mean() < 0.65  # about half the prompts fit
    assert (fit_half(pairs["prompt"]) == half).all()  # fixed by the text alone
    scaled = Calibration(pairs, ["run"], statistic="ece_temperature")
    assert scaled.temperatures["run"] == pytest.approx(fit_temperature(pairs.loc[half, "margin"]))
    assert scaled.temperatures["run"] == pytest.approx(3.0, rel=0.1)
    # Scored on the other half only: the same ECE as the other half's pairs rescaled by hand.
    other = pairs.loc[~half, "margin"] / scaled.temperatures["run"]
    assert scaled.ece()[0] == pytest.approx(expected_calibration_error(special.expit(other)), abs=1e-12)
    raw = expected_calibration_error(pairs.loc[~half, "prob_chosen"])
    assert raw > 0.1 and scaled.ece()[0] < 0.03


def test_preference_accuracy_counts_the_margins_side_for_hinge_runs_too():
    pairs = pd.DataFrame({"model": ["run"] * 3 + ["hinge run"] * 3, "prompt": ["a", "a", "b"] * 2,
                          "margin": [1.0, -2.0, 0.0, 3.0, 0.5, -1.0],
                          "prob_chosen": [*special.expit([1.0, -2.0, 0.0]), np.nan, np.nan, np.nan]})  # fmt: skip
    accuracy = Calibration(pairs, ["run", "hinge run"], statistic="pref_accuracy").ece()
    np.testing.assert_allclose(accuracy, [(1 + 0 + 0.5) / 3, 2 / 3])
    assert preference_correct([0.7, 0.2, 0.5]).tolist() == [1.0, 0.0, 0.5]


def test_each_pair_statistic_comes_at_matched_kl_with_intervals():
    rng = np.random.default_rng(2)
    rows, samples, pairs = [], [], []
    for name in ("reverse_kl", "jsd"):
        for beta in (1.0, 0.3, 0.1):
            for seed in range(3):
                model = f"{name}-{beta}-{seed}"
                rows.append({"model": model, "family": name, "beta": beta, "seed": seed})
                samples += [{"model": model, "prompt": f"q{i}", "kl": 1 / beta + rng.normal(0, 0.1)}
                            for i in range(10)]  # fmt: skip
                one = overconfident_pairs(rng, 80, 1.0 if name == "reverse_kl" else 3.0, prompts=20)
                pairs.append(one.assign(model=model))
    samples, runs, pairs = pd.DataFrame(samples), pd.DataFrame(rows), pd.concat(pairs)
    for statistic in ("ece_debiased", "ece_temperature", "pref_accuracy"):
        result = matched(samples, runs, "kl", statistic, n_boot=50, pairs=pairs)
        jsd = result[result["family"] == "jsd"]
        assert len(jsd) == 5 and jsd[statistic].notna().all()
        assert {f"{statistic}_lo", f"{statistic}_t_lo", "diff_t_lo", "diff_t_hi", "p", "seeds"} <= set(result)
        assert (jsd["seeds"] == 3).all()
    debiased = matched(samples, runs, "kl", "ece_debiased", n_boot=50, pairs=pairs)
    assert (debiased.loc[debiased["family"] == "jsd", "diff"] > 0.05).all()  # jsd overconfident by 3x


# --- seeds as a small sample


def test_the_small_sample_interval_covers_a_known_truth_where_a_seed_bootstrap_falls_short():
    """Synthetic curve values at one target: 5 seeds (a seed effect each) answering the same 40 prompts
    (a prompt effect shared by every seed, and each seed's own sampling noise). The truth is the mean over
    seeds and prompts of the population. Over 400 draws, 95% t intervals must cover it >= 90% of the time;
    a percentile bootstrap that resamples the 5 seeds and the prompts covers it less often."""
    rng = np.random.default_rng(0)
    draws, seeds, prompts, resamples, truth = 400, 5, 40, 300, 0.3
    per_prompt = rng.normal(0, 0.4, (draws, 1, prompts)) + rng.normal(0, 0.3, (draws, seeds, prompts))
    values = truth + rng.normal(0, 0.15, (draws, seeds, 1)) + per_prompt  # (draw, seed, prompt)
    weights = rng.multinomial(prompts, np.full(prompts, 1 / prompts), size=resamples)  # (resample, prompt)
    per_seed = values.mean(axis=2)
    kept = values.mean(axis=1) @ weights.T / prompts  # every seed kept, prompts resampled
    t_lo, t_hi = np.array(
        [seeds_and_prompts(per_seed[d].mean(), [per_seed[d]], kept[d].var(ddof=1))[:2] for d in range(draws)]
    ).T
    t_coverage = np.mean((t_lo <= truth) & (truth <= t_hi))
    resampled = np.einsum("dsp,bp->dbs", values, weights) / prompts  # (draw, resample, seed)
    chosen = rng.integers(0, seeds, (resamples, seeds))
    boot = resampled[:, np.arange(resamples)[:, None], chosen].mean(axis=2)
    b_lo, b_hi = np.percentile(boot, [2.5, 97.5], axis=1)
    boot_coverage = np.mean((b_lo <= truth) & (truth <= b_hi))
    assert t_coverage >= 0.90
    assert boot_coverage < t_coverage


def test_the_small_sample_difference_covers_a_known_difference():
    """Two families on the same prompts (a shared prompt effect cancels in the difference), 5 seeds each."""
    rng = np.random.default_rng(1)
    draws, seeds, prompts, resamples, difference = 300, 5, 30, 200, -0.1
    shared = rng.normal(0, 0.5, (draws, 1, prompts))
    family = (
        difference
        + rng.normal(0, 0.1, (draws, seeds, 1))
        + shared
        + rng.normal(0, 0.3, (draws, seeds, prompts))
    )
    reference = rng.normal(0, 0.1, (draws, seeds, 1)) + shared + rng.normal(0, 0.3, (draws, seeds, prompts))
    weights = rng.multinomial(prompts, np.full(prompts, 1 / prompts), size=resamples)
    kept = (family.mean(axis=1) - reference.mean(axis=1)) @ weights.T / prompts
    f_seed, r_seed = family.mean(axis=2), reference.mean(axis=2)
    found = [seeds_and_prompts(f_seed[d].mean() - r_seed[d].mean(), [f_seed[d], r_seed[d]], kept[d].var(ddof=1))
             for d in range(draws)]  # fmt: skip
    assert np.mean([f.lo <= difference <= f.hi for f in found]) >= 0.90
    assert all(4 <= f.df <= 8 for f in found)  # Welch-Satterthwaite between n - 1 and 2n - 2


def test_the_small_sample_interval_against_a_hand_computation():
    """One group of three seeds (1, 2, 3): s^2 / n = 1 / 3; with V_prompt = 1 / 6, se = sqrt(1 / 2), df = 2,
    t_{2, 0.975} = 4.302653; the p-value of mean 2 is 2 P(T_2 > 2 sqrt 2) = 0.105573."""
    found = seeds_and_prompts(2.0, [np.array([1.0, 2.0, 3.0])], 1 / 6)
    half = 4.302652729911275 * np.sqrt(0.5)
    assert (found.lo, found.hi) == pytest.approx((2 - half, 2 + half), abs=1e-9)
    assert found.df == pytest.approx(2.0) and found.p == pytest.approx(0.105573, abs=1e-6)
    assert np.isnan(seeds_and_prompts(2.0, [np.array([1.0])], 0.1).lo)  # one seed: no interval


# --- many comparisons


def test_holm_against_a_hand_computation():
    """Sorted 0.01, 0.03, 0.04 of m = 3: x3, x2, x1 = 0.03, 0.06, 0.04, made non-decreasing: 0.06."""
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])


FAMILIES = ["reverse_kl", "jsd", "forward_kl", "alpha=0.5", "RLOO"]


def claim_table(
    reference: str, per_family: dict[str, tuple[float, float, float]], targets: int = 5
) -> pd.DataFrame:
    """A `matched` table: per family (diff, p, half-width of both intervals) at every target."""
    rows = [{"family": reference, "kl": k, "diff": 0.0, "diff_lo": 0.0, "diff_hi": 0.0, "diff_t_lo": np.nan,
             "diff_t_hi": np.nan, "p": np.nan} for k in range(targets)]  # fmt: skip
    for name, (diff, p, half) in per_family.items():
        rows += [{"family": name, "kl": k, "diff": diff, "diff_lo": diff - half, "diff_hi": diff + half,
                  "diff_t_lo": diff - half, "diff_t_hi": diff + half, "p": p} for k in range(targets)]  # fmt: skip
    return pd.DataFrame(rows)


def test_a_verdict_the_uncorrected_rule_supports_is_undecided_once_corrected():
    """jsd is above reverse KL at all 5 entropies, each interval alone excluding 0 (p = 0.02); with the
    other two families that is 15 tests, and Holm's smallest threshold is 0.05 / 15."""
    table = claim_table("reverse_kl", {"jsd": (0.05, 0.02, 0.04), "forward_kl": (0.0, 0.6, 0.1),
                                       "alpha=0.5": (-0.01, 0.4, 0.1)})  # fmt: skip
    assert claim_verdict(1, table, FAMILIES, corrected=False)[0] == "supported"
    said, standings = claim_verdict(1, table, FAMILIES)
    assert said == "undecided" and "mixed: jsd, forward_kl, alpha=0.5" in standings
    # A difference that survives the correction (p * 15 <= 0.05 at every target) still supports it.
    table.loc[table["family"] == "jsd", "p"] = 0.05 / 15
    assert claim_verdict(1, table, FAMILIES)[0] == "supported"


def test_the_corrected_rule_for_claims_2_and_3():
    # Claim 2, against RLOO: two of three families lower, Holm-significant; the third not compared.
    online = claim_table("RLOO", {"reverse_kl": (-0.1, 1e-6, 0.05), "jsd": (-0.2, 1e-5, 0.05),
                                  "alpha=0.5": (0.0, np.nan, np.nan)})  # fmt: skip
    said, standings = claim_verdict(2, online, FAMILIES)
    assert said == "contradicted" and "not compared: forward_kl, alpha=0.5" in standings
    # Claim 3 on the debiased ECE: every t interval inside +-0.02 -> contradicted (equivalence); one
    # family lower beyond the correction -> supported.
    small = claim_table("reverse_kl", {"jsd": (0.0, 0.9, 0.015), "alpha=0.5": (0.005, 0.6, 0.01)})
    assert claim_verdict(3, small, FAMILIES)[0] == "contradicted"
    lower = claim_table("reverse_kl", {"jsd": (-0.1, 1e-4, 0.03), "alpha=0.5": (0.005, 0.6, 0.01)})
    assert claim_verdict(3, lower, FAMILIES)[0] == "supported"
    with pytest.raises(ValueError, match="p column"):
        claim_verdict(3, lower.drop(columns="p"), FAMILIES)


def test_the_report_says_which_verdicts_the_correction_changed():
    entropy = claim_table("reverse_kl", {"jsd": (0.05, 0.02, 0.04), "forward_kl": (0.0, 0.6, 0.1)})
    shown = verdict({"entropy_reward": entropy}, FAMILIES).set_index("claim")
    assert shown.loc[1, "uncorrected_verdict"] == "supported" and shown.loc[1, "verdict"] == "undecided"
    assert shown.loc[1, "changed"] and not shown.loc[2, "changed"]
    assert shown.loc[3, "standings"] == "not measured (no kl_ece_debiased table)"
