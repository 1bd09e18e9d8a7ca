"""Transfer sets and held-out slices: class filters, a held-out tail, a fixed class-balanced subset."""

from __future__ import annotations

from typing import Sequence

import torch

from kdverify.data.splits import Split


def filter_classes(split: Split, keep: Sequence[int] | None = None, drop: Sequence[int] | None = None) -> Split:
    """Transfer-set filters: keep only some classes (7s and 8s) or drop some (no 3s)."""
    mask = torch.ones_like(split.labels, dtype=torch.bool)
    if keep:
        mask &= torch.isin(split.labels, torch.tensor(list(keep), device=split.labels.device))
    if drop:
        mask &= ~torch.isin(split.labels, torch.tensor(list(drop), device=split.labels.device))
    return split.take(mask.nonzero().squeeze(1))


def split_holdout(split: Split, size: int) -> tuple[Split, Split]:
    """The last `size` examples become a held-out slice (for tuning without touching test)."""
    if size <= 0:
        return split, split.take(torch.arange(0, device=split.labels.device))
    if size >= len(split):
        raise ValueError(f"holdout = {size:,} leaves nothing to train on: the training split has {len(split):,} "
                         "examples (after the transfer-set filters)")
    n = len(split) - size
    return split.take(torch.arange(n, device=split.labels.device)), \
        split.take(torch.arange(n, len(split), device=split.labels.device))


def balanced_subset(split: Split, size: int, num_classes: int, seed: int = 0) -> Split:
    """A fixed, class-balanced subset: `size // num_classes` examples of each class, in split order.

    `seed` alone picks which examples (same seed, same subset, on any device). A size that does not
    split evenly, or a class with too few examples, is an error rather than a silently unbalanced subset.
    """
    if num_classes < 1 or size < num_classes or size % num_classes:
        raise ValueError(f"a balanced subset of {size} examples over {num_classes} classes needs a positive "
                         f"multiple of {num_classes}")
    per_class = size // num_classes
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed)).to(split.labels.device)
    labels = split.labels[order]
    picked = [order[labels == c][:per_class] for c in range(num_classes)]
    short = [f"{c} has {len(p)}" for c, p in enumerate(picked) if len(p) < per_class]
    if short:
        raise ValueError(f"a balanced subset of {size} needs {per_class} examples of each class, but class "
                         f"{', '.join(short)}")
    return split.take(torch.cat(picked).sort().values)
