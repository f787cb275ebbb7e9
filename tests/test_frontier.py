"""Reward at matched KL against curves whose answer is known in closed form."""

import numpy as np
import pandas as pd

from analysis.frontier import family, matched
from train_dpo.sweep import FRONTIER_BETAS, FRONTIER_FAMILIES, frontier_grid


def runs_and_samples(offset: float, noise: float, prompts: int = 40) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two families, 3 seeds, 3 betas; KL = 2/beta, reward = 0.1 * KL (+ `offset` for jsd) plus prompt noise."""
    rng = np.random.default_rng(0)
    runs, samples = [], []
    for name, shift in (("reverse_kl", 0.0), ("jsd", offset)):
        for seed in range(3):
            for beta in (1.0, 0.5, 0.25):
                model = f"{name}_{beta}_{seed}"
                runs.append({"model": model, "family": name, "beta": beta, "seed": seed})
                for p in range(prompts):
                    for _ in range(2):
                        kl = 2 / beta + rng.normal(0, noise)
                        samples.append(
                            {
                                "model": model,
                                "prompt": f"p{p}",
                                "kl": kl,
                                "reward": 0.1 * (2 / beta) + shift + rng.normal(0, noise),
                            }
                        )
    return pd.DataFrame(runs), pd.DataFrame(samples)


def test_matched_reward_recovers_a_known_offset_and_its_interval_covers_it():
    runs, samples = runs_and_samples(offset=0.3, noise=0.05)
    table = matched(samples, runs, targets=np.array([3.0, 5.0, 7.0]), n_boot=300)
    jsd = table[table["family"] == "jsd"]
    assert np.allclose(jsd["diff"], 0.3, atol=0.03)
    assert ((jsd["diff_lo"] <= 0.3) & (jsd["diff_hi"] >= 0.3)).all() and jsd["differs"].all()
    rkl = table[table["family"] == "reverse_kl"]
    assert np.allclose(rkl["reward"], [0.3, 0.5, 0.7], atol=0.03) and np.allclose(rkl["diff"], 0.0)


def test_no_difference_is_not_called_one_and_nothing_is_extrapolated():
    runs, samples = runs_and_samples(offset=0.0, noise=0.3)
    table = matched(samples, runs, targets=np.array([4.0, 100.0]), n_boot=300)
    jsd = table[table["family"] == "jsd"].set_index("kl")
    assert not jsd.loc[4.0, "differs"] and jsd.loc[4.0, "diff_lo"] < 0 < jsd.loc[4.0, "diff_hi"]
    assert np.isnan(jsd.loc[100.0, "reward"])  # beyond every curve: no value, rather than a guess
    default = matched(samples, runs, n_boot=50)  # jsd against reverse KL where every seed of both reaches
    jsd = default[default["family"] == "jsd"]
    assert len(jsd) == 5 and 2.0 < jsd["kl"].min() < jsd["kl"].max() < 8.0 and jsd["reward"].notna().all()


def test_the_frontier_grid_runs_every_family_at_every_beta_for_every_seed():
    grid = frontier_grid(seeds=3)
    assert len(grid) == 3 * len(FRONTIER_FAMILIES) * len(FRONTIER_BETAS)
    assert len({spec.name(with_seed=True) for spec in grid}) == len(grid)
    names = {family(spec.loss_type, spec.divergence, spec.alpha) for spec in grid}
    assert names == {
        "reverse_kl",
        "reverse_kl (hinge)",
        "jsd",
        "forward_kl",
        "alpha=0.3",
        "alpha=0.5",
        "alpha=0.7",
    }


def test_the_rank_correlation_interval_covers_the_closed_form_value():
    """For a bivariate normal with correlation r, Spearman's rho is (6 / pi) * arcsin(r / 2) (Pearson, 1907).

    The study-vs-ours comparison reports rho with an interval over models; over 100 draws of 19 pairs, that
    interval must cover the exact value about 95% of the time, and the point must equal the rank formula.
    """
    from analysis.report import rank_correlation

    rng = np.random.default_rng(0)
    r = 0.7
    exact = 6 / np.pi * np.arcsin(r / 2)
    covered = 0
    for draw in range(100):
        x, y = rng.multivariate_normal([0, 0], [[1, r], [r, 1]], size=19).T
        rho, lo, hi = rank_correlation(x, y, seed=draw)
        ranks_x, ranks_y = x.argsort().argsort(), y.argsort().argsort()
        assert np.isclose(rho, np.corrcoef(ranks_x, ranks_y)[0, 1])
        assert lo <= rho <= hi
        covered += lo <= exact <= hi
    assert covered >= 85  # 95% nominal; percentile intervals at n = 19 run a little short
    assert all(np.isnan(rank_correlation([1, 2], [2, 1])))


def test_a_family_with_no_shared_kl_is_named_as_not_compared_never_left_out():
    from analysis.report import conclusion

    table = pd.DataFrame(
        {"family": ["alpha=0.3", "alpha=0.3"], "kl": [4.0, 5.0], "diff": [-0.1, -0.2],
         "diff_lo": [-0.15, -0.25], "diff_hi": [-0.05, -0.15], "differs": [True, True]}
    )  # fmt: skip
    families = ["SFT", "reverse_kl", "alpha=0.3", "jsd"]

    text = conclusion(table, "kl", "reward", families)

    lines = text.splitlines()
    assert lines[0].startswith("- alpha=0.3: reward lower than reverse KL beyond the interval at kl = 4.00")
    assert lines[1] == "- jsd: not compared; no kl value is reached by every seed of it and of reverse KL."
    assert len(lines) == 2  # neither SFT nor reverse KL itself is listed
    empty = conclusion(table.iloc[:0], "kl", "reward", families)
    assert (
        empty.startswith("No kl value")
        and "- alpha=0.3: not compared" in empty
        and "- jsd: not compared" in empty
    )
