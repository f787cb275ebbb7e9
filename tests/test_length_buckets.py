"""Length buckets: every pair once an epoch, each step's batches from one bucket whatever a run's seed."""

import numpy as np
import pytest

from common.errors import InputError
from train_dpo.fingerprint import run_settings
from train_dpo.length_buckets import bucket_batches
from train_dpo.train import parse_args

WIDTHS = [int(w) for w in np.random.default_rng(0).integers(20, 256, size=101)]  # 101 pairs: remainders


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_pair_is_drawn_once_an_epoch_and_only_the_last_batch_is_partial(drop_last):
    for epoch in range(3):
        batches = bucket_batches(WIDTHS, 8, 4, seed=5, epoch=epoch, drop_last=drop_last)
        drawn = [index for batch in batches for index in batch]
        assert len(drawn) == len(set(drawn)) == (96 if drop_last else 101)
        assert all(len(batch) == 8 for batch in batches[:-1]) and len(batches[-1]) == (8 if drop_last else 5)


def test_runs_of_any_seed_draw_each_step_from_one_bucket():
    """The step's bucket is shared: seeds change which pairs, not which bucket; epochs change both."""
    # The 4 buckets, by rank of width (26, 25, 25 and 25 pairs), as an independent count sees them.
    ranks = sorted(range(len(WIDTHS)), key=lambda i: (WIDTHS[i], i))
    bucket = {index: 0 if rank < 26 else (rank - 26) // 25 + 1 for rank, index in enumerate(ranks)}

    def buckets_of(seed: int, epoch: int) -> list[set[int]]:
        return [{bucket[i] for i in batch} for batch in bucket_batches(WIDTHS, 8, 4, seed=seed, epoch=epoch)]

    first, second = buckets_of(0, 0), buckets_of(7, 0)
    pure = [step for step, found in enumerate(first) if len(found) == 1]
    assert len(pure) == 12  # 3 whole batches from each bucket; the 5 remainders, one last partial batch
    assert [first[step] for step in pure] == [second[step] for step in pure]
    assert [step for step, found in enumerate(second) if len(found) == 1] == pure
    assert bucket_batches(WIDTHS, 8, 4, seed=0, epoch=0) != bucket_batches(WIDTHS, 8, 4, seed=7, epoch=0)
    assert buckets_of(0, 1) != first


def test_a_bucketed_batch_is_narrower_than_a_uniform_one():
    uniform = np.random.default_rng(1).permutation(len(WIDTHS))[:96].reshape(12, 8)
    bucketed = bucket_batches(WIDTHS, 8, 4, seed=0, epoch=0, drop_last=True)
    widest = lambda batches: np.mean([max(WIDTHS[i] for i in batch) for batch in batches])  # noqa: E731
    assert widest(bucketed) < 0.85 * widest(uniform)


def test_buckets_are_fingerprinted_only_when_on(tiny_model_dir, tmp_path):
    """Runs recorded before the setting existed drew uniformly: their fingerprints must not change."""
    flags = ["--model", str(tiny_model_dir), "--dataset", "x", "--output_dir", str(tmp_path)]
    assert "length_buckets" not in run_settings(*parse_args(flags))
    assert run_settings(*parse_args([*flags, "--length_buckets", "4"]))["length_buckets"] == 4


def test_buckets_and_length_grouping_are_one_choice(tiny_model_dir, tmp_path):
    from common.errors import InputError

    flags = ["--model", str(tiny_model_dir), "--dataset", "x", "--output_dir", str(tmp_path)]
    with pytest.raises(InputError, match="--length_buckets and --group_by_length"):
        parse_args([*flags, "--length_buckets", "4", "--group_by_length", "true"])
    with pytest.raises(InputError, match="--length_buckets must be >= 0"):
        parse_args([*flags, "--length_buckets", "-1"])


@pytest.mark.parametrize("buckets", [13, 20, 101])
def test_buckets_of_at_most_one_batch_are_refused_since_every_seed_would_draw_the_same_batches(buckets):
    """101 pairs in batches of 8: 13 buckets hold 7 or 8 pairs, one batch each, so the seed-free schedule
    alone would fix every batch (the same for seeds 0 and 7, as the last assertion shows at 12)."""
    with pytest.raises(InputError, match=rf"--length_buckets {buckets}: 101 training pairs in batches of 8 "):
        bucket_batches(WIDTHS, 8, buckets, seed=0, epoch=0)
    assert bucket_batches(WIDTHS, 8, 6, seed=0, epoch=0) != bucket_batches(WIDTHS, 8, 6, seed=7, epoch=0)


def test_train_py_refuses_such_buckets_before_writing_anything(tiny_model_dir, tmp_path, error_line):
    from synthetic import scored_file

    from train_dpo.train import cli

    out = tmp_path / "run"
    line = error_line(cli, ["--model", str(tiny_model_dir), "--dataset", scored_file(), "--output_dir", str(out),
                            "--length_buckets", "1000", "--max_length", "64"])  # fmt: skip
    assert "--length_buckets 1000" in line and "every seed would draw the same batches" in line
    assert not out.exists()
