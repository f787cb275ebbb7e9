"""Batches of pairs of similar length, drawn so that every run of a stack draws from the same bucket.

A stack pads every run's batch to the widest pair of any run (`train_dpo/stack.py`), and a lone run pads to
the widest of its own batch; with uniformly shuffled pairs of unequal length both waste compute on
padding (`bench/padding.py`). With `--length_buckets N`, the pairs are sorted by padded width and cut into
N buckets of equal size. Each epoch, a shared schedule, seeded by the epoch alone, says which bucket each
step draws from; each run draws its batch from that bucket in an order of its own (its data seed), as
its lone Trainer does with the same flag. So a stacked run still sees exactly the batches it sees alone,
and all runs of a step share one bucket, so one width.

Remainders (a bucket's pairs that fill no whole batch) make mixed batches, shuffled into the schedule
like the rest; a last partial batch, if any, comes last, as the Trainer's batching expects. This changes
which pairs share a step, so it is off by default: the study drew batches uniformly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from common.errors import InputError

SCHEDULE_SEED = 1234  # the buckets' order each epoch: one for every run, whatever their seeds


def check_buckets(pairs: int, batch_size: int, buckets: int) -> None:
    """Refuse buckets of at most one batch each: the schedule, which no seed changes, would then fix every
    batch, so runs of different seeds would see the same batches in the same order."""
    if buckets and pairs // buckets <= batch_size:
        most = pairs // (2 * batch_size)
        raise InputError(
            f"--length_buckets {buckets}: {pairs} training pairs in batches of {batch_size} leave at most "
            "one "
            f"batch per bucket, so every seed would draw the same batches; use "
            + (f"at most {most}" if most else "0 (off)")
        )


def pair_widths(dataset) -> list[int]:
    """A pair's padded width in a DPO batch: its prompt plus the longer of its two completions."""
    columns = [dataset[f"{key}_ids"] for key in ("prompt", "chosen", "rejected")]
    return [len(p) + max(len(c), len(r)) for p, c, r in zip(*columns, strict=True)]


def bucket_batches(
    widths: Sequence[int], batch_size: int, buckets: int, seed: int, epoch: int, drop_last: bool = False
) -> list[list[int]]:
    """One epoch's batches (indices into `widths`), each drawn from one length bucket.

    Runs with equally many pairs get the same bucket at every step whatever their `seed`: the schedule
    depends only on the buckets' sizes and the epoch; the pairs inside each bucket, on `seed` and the epoch.
    """
    check_buckets(len(widths), batch_size, buckets)
    order = np.argsort(np.asarray(widths), kind="stable")
    own = torch.Generator().manual_seed(seed + epoch)
    shared = torch.Generator().manual_seed(SCHEDULE_SEED + epoch)
    labelled, leftover = [], []
    for bucket, members in enumerate(np.array_split(order, buckets)):
        drawn = members[torch.randperm(len(members), generator=own).numpy()].tolist()
        whole = len(drawn) // batch_size * batch_size
        labelled += [(bucket, drawn[start : start + batch_size]) for start in range(0, whole, batch_size)]
        leftover += drawn[whole:]
    whole = len(leftover) // batch_size * batch_size
    labelled += [(buckets, leftover[start : start + batch_size]) for start in range(0, whole, batch_size)]
    # The permutation depends only on how many batches there are: position i holds one bucket for every run.
    batches = [labelled[i][1] for i in torch.randperm(len(labelled), generator=shared).tolist()]
    if whole < len(leftover) and not drop_last:
        batches.append(leftover[whole:])
    return batches


class LengthBucketSampler(Sampler[int]):
    """A lone run's order under `--length_buckets`: `bucket_batches` laid end to end, which the Trainer's
    loader cuts back into the same batches (every batch but the last is whole)."""

    def __init__(self, widths: Sequence[int], batch_size: int, buckets: int, seed: int):
        self.widths, self.batch_size, self.buckets, self.seed = list(widths), batch_size, buckets, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        for batch in bucket_batches(self.widths, self.batch_size, self.buckets, self.seed, self.epoch):
            yield from batch

    def __len__(self) -> int:
        return len(self.widths)
