"""ECE as a result: its value against a hand computation, pooled reliability bins against a direct count,
ECE at matched KL, and the verdict rule of the three claims (analysis/frontier.py)."""

import numpy as np
import pandas as pd
import pytest

from analysis.calibration import expected_calibration_error
from analysis.frontier import Calibration, claim_verdict, matched
from analysis.report import closest_configurations, pooled_reliability

# Seven pairs, no confidence on a bin edge (bins of 0.05 from 0.5). By hand, confidence max(p, 1 - p),
# right when p > 0.5, and each bin's |sum of (right - confidence)|:
#   0.92 -> (0.90, 0.95]  right   0.08      0.83 -> (0.80, 0.85]  right  0.17
#   0.28 -> 0.72 (0.70, 0.75]  wrong  0.72  0.62, 0.61 -> (0.60, 0.65]  right  0.38 + 0.39 = 0.77
#   0.97 -> (0.95, 1]     right   0.03      0.12 -> 0.88 (0.85, 0.90]  wrong  0.88
# ECE = (0.08 + 0.17 + 0.72 + 0.77 + 0.03 + 0.88) / 7
PROBS = [0.92, 0.83, 0.28, 0.62, 0.61, 0.97, 0.12]
HAND_ECE = 2.65 / 7
# The first four pairs alone: (0.08 + 0.17 + 0.72 + 0.38) / 4, each in its own bin.
HAND_ECE_FIRST_FOUR = 1.35 / 4


def test_ece_matches_a_hand_computation():
    assert expected_calibration_error(PROBS) == pytest.approx(HAND_ECE, abs=1e-12)


def test_the_bootstrap_ece_reweights_prompts_as_a_hand_computation_does():
    pairs = pd.DataFrame({"model": "run", "prompt": ["a"] * 4 + ["b"] * 3, "prob_chosen": PROBS})
    calibration = Calibration(pairs, ["run", "hinge run"])
    assert calibration.ece()[0] == pytest.approx(HAND_ECE, abs=1e-12)
    assert np.isnan(calibration.ece()[1])  # no probabilities: no ECE, not 0
    # Prompt "a" drawn twice and "b" never: the ECE of a's four pairs (a weight scales every bin alike).
    assert calibration.ece(np.array([2.0, 0.0]))[0] == pytest.approx(HAND_ECE_FIRST_FOUR, abs=1e-12)


def results_and_pairs(rng, seeds=3, per_run=40):
    """results.csv-like rows of two probabilistic families and a hinge one, and their pairs.csv."""
    rows, pairs = [], []
    for name, loss in (("reverse_kl", "sigmoid"), ("jsd", "sigmoid"), ("reverse_kl (hinge)", "hinge")):
        for beta in (1.0, 0.1):
            for seed in range(seeds):
                model = f"{name}-{beta}-{seed}"
                rows.append(
                    {"model": model, "family": name, "beta": beta, "seed": seed, "kl": 2 / beta + seed}
                )
                prob = rng.uniform(0, 1, per_run) if loss == "sigmoid" else np.full(per_run, np.nan)
                pairs += [
                    {"model": model, "prompt": f"p{i % 10}", "prob_chosen": p} for i, p in enumerate(prob)
                ]
    return pd.DataFrame(rows), pd.DataFrame(pairs)


def test_pooled_reliability_bins_match_a_direct_count():
    rng = np.random.default_rng(0)
    table, pairs = results_and_pairs(rng)
    pooled = pooled_reliability(table, pairs)
    assert set(pooled["family"]) == {"reverse_kl", "jsd"}  # the hinge runs imply no probability
    for (name, beta), shown in pooled.groupby(["family", "beta"]):
        models = table.loc[(table["family"] == name) & (table["beta"] == beta), "model"]
        probs = pairs.loc[pairs["model"].isin(models), "prob_chosen"].to_numpy()
        assert shown["pairs"].iloc[0] == len(probs) == 3 * 40 and shown["seeds"].iloc[0] == 3
        for row in shown.itertuples():  # one bin: count and accuracy by a plain loop over the pairs
            inside = [
                p
                for p in probs
                if (row.lo < max(p, 1 - p) <= row.hi) or (row.bin == 0 and max(p, 1 - p) == 0.5)
            ]
            assert row.count == len(inside)
            if inside:
                assert row.accuracy == pytest.approx(np.mean([p > 0.5 for p in inside]))
                assert row.confidence == pytest.approx(np.mean([max(p, 1 - p) for p in inside]))
        assert shown["ece"].iloc[0] == pytest.approx(expected_calibration_error(probs))


def test_each_family_gets_the_configuration_nearest_a_shared_kl():
    table, _ = results_and_pairs(np.random.default_rng(0))
    picks = closest_configurations(table, kl=4.0).set_index("family")
    assert picks.loc["jsd", "beta"] == 1.0 and picks.loc["jsd", "kl"] == pytest.approx(
        3.0
    )  # 2, 3, 4 vs 20, 21, 22


def test_ece_at_matched_kl_finds_a_planted_miscalibration():
    """A family whose probabilities are all pushed to the wrong side has a larger ECE at every KL."""
    rng = np.random.default_rng(1)
    rows, pairs, samples = [], [], []
    for name in ("reverse_kl", "jsd"):
        for beta in (1.0, 0.3, 0.1):
            for seed in range(3):
                model = f"{name}-{beta}-{seed}"
                rows.append({"model": model, "family": name, "beta": beta, "seed": seed})
                kl = 1 / beta + rng.normal(0, 0.05)
                samples += [
                    {"model": model, "prompt": f"q{i}", "kl": kl + rng.normal(0, 0.1)} for i in range(12)
                ]
                right = rng.uniform(0, 1, 60) < 0.8  # the chosen answer is preferred 80% of the time ...
                calibrated = np.where(right, 0.8, 0.2)  # ... and a calibrated run says so
                prob = calibrated if name == "reverse_kl" else 1 - calibrated
                pairs += [
                    {"model": model, "prompt": f"t{i % 15}", "prob_chosen": p} for i, p in enumerate(prob)
                ]
    result = matched(
        pd.DataFrame(samples), pd.DataFrame(rows), "kl", "ece", n_boot=200, pairs=pd.DataFrame(pairs)
    )
    jsd = result[result["family"] == "jsd"]
    defined = jsd.dropna(subset=["diff_lo"])  # at the range's very end most draws fall off a curve
    assert len(jsd) == 5 and len(defined) >= 3
    assert (defined["diff_lo"] > 0.3).all()  # ECE about 0.6 (right 20% at confidence 0.8) against about 0
    assert claim_verdict(3, result, ["reverse_kl", "jsd"])[0] == "supported"


def matched_rows(diffs: dict[str, list[tuple[float, float]]], reference: str) -> pd.DataFrame:
    """A `matched` table whose families have these (diff_lo, diff_hi) at their targets."""
    rows = [{"family": reference, "diff": 0.0, "diff_lo": 0.0, "diff_hi": 0.0}]
    for name, intervals in diffs.items():
        rows += [
            {"family": name, "diff": (lo + hi) / 2, "diff_lo": lo, "diff_hi": hi} for lo, hi in intervals
        ]
    return pd.DataFrame(rows)


FAMILIES = ["reverse_kl", "reverse_kl (hinge)", "jsd", "forward_kl", "alpha=0.5", "RLOO"]


@pytest.mark.parametrize(
    ("claim", "diffs", "verdict"),
    [
        # Claim 1: any f-divergence above reverse KL at every entropy -> supported; all below -> contradicted.
        (1, {"jsd": [(0.01, 0.1), (0.02, 0.2)], "alpha=0.5": [(-0.2, -0.1)]}, "supported"),
        (
            1,
            {"jsd": [(-0.3, -0.1)], "alpha=0.5": [(-0.2, -0.01)], "forward_kl": [(-0.2, -0.1)]},
            "contradicted",
        ),
        (1, {"jsd": [(-0.3, -0.1)], "alpha=0.5": [(-0.2, 0.01)]}, "undecided"),
        (1, {"jsd": [(0.1, 0.2), (-0.1, 0.1)]}, "undecided"),  # higher at one point only: mixed
        (1, {"reverse_kl (hinge)": [(0.1, 0.2)]}, "undecided"),  # the hinge loss is not an f-divergence
        # Claim 2: against RLOO, every f-DPO family counts, reverse KL included.
        (2, {"reverse_kl": [(0.1, 0.2)], "jsd": [(0.01, 0.3)], "alpha=0.5": [(-0.1, 0.2)]}, "supported"),
        (2, {"reverse_kl": [(0.1, 0.2)], "jsd": [(0.01, 0.3)], "alpha=0.5": [(-0.3, -0.2)]}, "undecided"),
        (2, {"reverse_kl": [(-0.3, -0.1)], "jsd": [(-0.2, -0.01)]}, "contradicted"),
        # Claim 3: any difference either way supports; all inside +-0.02 contradicts.
        (3, {"jsd": [(-0.05, -0.03)], "alpha=0.5": [(-0.01, 0.01)]}, "supported"),
        (3, {"jsd": [(-0.015, 0.01)], "alpha=0.5": [(-0.01, 0.019)]}, "contradicted"),
        (3, {"jsd": [(-0.05, 0.01)]}, "undecided"),
        (3, {}, "undecided"),  # nothing compared
    ],
)
def test_the_claims_verdict_follows_the_rule_written_before_the_runs(claim, diffs, verdict):
    """The first grid's rule, kept as `corrected=False`: each percentile interval alone."""
    reference = "RLOO" if claim == 2 else "reverse_kl"
    said, standings = claim_verdict(claim, matched_rows(diffs, reference), FAMILIES, corrected=False)
    assert said == verdict
    # Every eligible family is named, a missing one as not compared; claims 1 and 3 are about f-divergences.
    eligible = [
        f for f in FAMILIES if f != reference and (claim == 2 or f in ("jsd", "forward_kl", "alpha=0.5"))
    ]
    assert all(name in standings for name in eligible)
    assert "RLOO" not in standings and ("hinge" in standings) == (claim == 2)


def test_endpoints_give_each_familys_range_and_its_difference_at_both_ends():
    from analysis.report import endpoints

    result = pd.DataFrame(
        {"family": ["reverse_kl", "reverse_kl", "jsd", "jsd"], "kl": [2.0, 4.0, 2.0, 4.0],
         "reward": [0.5, 0.6, 0.4, 0.45], "diff": [0.0, 0.0, -0.1, -0.15],
         "diff_lo": [0.0, 0.0, -0.2, np.nan], "diff_hi": [0.0, 0.0, -0.05, np.nan]}
    )  # fmt: skip
    row = endpoints(result, "kl", "reward").set_index("family").loc["jsd"]
    assert row["kl range"] == "2.00–4.00" and row["reward at the low end"] == "0.400"
    assert row["diff at the low end"] == "-0.100 [-0.200, -0.050]"
    assert row["diff at the high end"] == "-0.150 [interval undefined]"
