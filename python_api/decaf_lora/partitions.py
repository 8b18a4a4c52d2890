"""Which examples go where: fixed train/test splits, and the partition of a training set among agents.

Every function returns example indices (or subsets) that are a function of the labels, the sizes and ``seed``.
Data without class labels (causal-LM examples) have one scheme, ``"iid"``, and unstratified splits.

The run configuration's default, ``partition="auto"``, is resolved by :mod:`decaf_lora.config` before it gets
here: ``"dirichlet"`` (label skew) for the built-in WordNet task, ``"iid"`` for user data. :func:`partition` itself
defaults to ``"iid"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._checks import check_choice, check_float, check_int, check_seed
from ._rng import generator
from .names import PARTITIONS
from .texts import TextDataset, as_index_tensor

__all__ = ["PARTITIONS", "balanced_split", "partition", "partition_summary", "train_test_split"]


def _largest_remainder(quotas: Sequence[float], total: int, caps: Sequence[int]) -> list[int]:
    """Integers close to ``quotas`` (each <= its cap) summing exactly to ``total``.

    Floors first, then hands the remaining units one at a time to the largest fractional remainders (ties by
    position), skipping entries at their cap and cycling until ``total`` is reached. Requires
    ``sum(min(floor(q), cap)) <= total <= sum(caps)``.
    """
    base = [min(int(np.floor(q)), c) for q, c in zip(quotas, caps)]
    rest = total - sum(base)
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - np.floor(quotas[i])), i))
    while rest > 0:
        progressed = False
        for i in order:
            if rest == 0:
                break
            if base[i] < caps[i]:
                base[i] += 1
                rest -= 1
                progressed = True
        if not progressed:  # pragma: no cover - guarded by the callers
            raise ValueError(f"cannot place {total} items under caps {list(caps)}")
    return base


# ------------------------------------------------------------------------------------------------ splits


def _class_indices(labels: torch.Tensor, g: torch.Generator) -> dict[int, torch.Tensor]:
    """For every label present (ascending): its example indices in a seeded random order."""
    out: dict[int, torch.Tensor] = {}
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c, as_tuple=False).flatten()
        out[int(c)] = idx[torch.randperm(idx.numel(), generator=g)]
    return out


def balanced_split(ds: TextDataset, n_train: int, n_test: int, *, seed: int = 0) -> tuple[TextDataset, TextDataset]:
    """A fixed, seeded train/test split that is as class-balanced as the data allows.

    Each class's examples are shuffled (one ``torch.Generator`` seeded by ``seed``, classes in label order).
    ``n_train + n_test`` examples are then picked round-robin over the classes in label order, classes that
    run out leaving the rotation: small classes contribute all they have, large ones fill the rest equally.
    The picked examples are split per class into test and train so that the test set is stratified: each
    class gets ``n_test * picked_c / picked`` test examples, rounded by largest remainder so that the totals
    are exactly ``n_test`` and ``n_train``.

    Args:
        ds: The dataset to split.
        n_train: Size of the training set, >= 1.
        n_test: Size of the test set, >= 1.
        seed: Non-negative seed; the split is a function of ``(ds.labels, n_train, n_test, seed)``.

    Returns:
        ``(train, test)``, disjoint, each in ascending order of the original index.

    Raises:
        ValueError: ``n_train`` or ``n_test`` < 1, or ``n_train + n_test > len(ds)``.
    """
    n_train = check_int("n_train", n_train, 1)
    n_test = check_int("n_test", n_test, 1)
    seed = check_seed(seed)
    total = n_train + n_test
    if total > len(ds):
        raise ValueError(
            f"n_train + n_test must be <= len(ds) = {len(ds)}, got n_train={n_train} + n_test={n_test} = {total}"
        )
    per_class = _class_indices(ds.labels, generator(seed))
    classes = list(per_class)
    sizes = [per_class[c].numel() for c in classes]

    # Round-robin picking == water filling: every class gets min(size, t) for the largest level t that fits,
    # then one more for the first classes (label order) still holding examples, until the total is reached.
    lo, hi = 0, max(sizes)
    while lo < hi:  # largest t with sum(min(size, t)) <= total
        mid = (lo + hi + 1) // 2
        if sum(min(s, mid) for s in sizes) <= total:
            lo = mid
        else:
            hi = mid - 1
    picks = [min(s, lo) for s in sizes]
    rest = total - sum(picks)
    for i, s in enumerate(sizes):
        if rest == 0:
            break
        if s > picks[i]:
            picks[i] += 1
            rest -= 1

    test_counts = _largest_remainder([n_test * p / total for p in picks], n_test, picks)
    train_idx, test_idx = [], []
    for c, p, t in zip(classes, picks, test_counts):
        chosen = per_class[c][:p]
        test_idx.append(chosen[:t])
        train_idx.append(chosen[t:])
    train = torch.sort(torch.cat(train_idx)).values
    test = torch.sort(torch.cat(test_idx)).values
    return ds.subset(train), ds.subset(test)


def train_test_split(ds: Any, test_fraction: float, *, seed: int = 0) -> tuple[Any, Any]:
    """A seeded train/test split, stratified by class for labelled data.

    A :class:`TextDataset`: the test set holds ``round(test_fraction * len(ds))`` examples (at least 1), shared
    among the classes in proportion to their sizes (largest-remainder rounding). Every class keeps at least one
    example in train, so a class with a single example is never in the test set.

    Any other dataset with ``len`` and ``subset(indices)`` (e.g. :class:`~decaf_lora.lm_data.LMDataset`, which has
    no classes): ``round(test_fraction * len(ds))`` examples (at least 1, at most ``len(ds) - 1``) picked by a
    seeded permutation.

    Args:
        ds: The dataset to split.
        test_fraction: Fraction of the examples that go to the test set, ``0 < test_fraction < 1``.
        seed: Non-negative seed; the split is a function of ``(ds.labels, test_fraction, seed)`` (of
            ``(len(ds), test_fraction, seed)`` without labels).

    Returns:
        ``(train, test)``, disjoint, together all of ``ds``, each in ascending order of the original index.

    Raises:
        ValueError: ``test_fraction`` outside (0, 1), or too few examples to hold out any while keeping one
            per class (or one in all) in train.
    """
    test_fraction = check_float("test_fraction", test_fraction)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must satisfy 0 < test_fraction < 1, got test_fraction={test_fraction}")
    seed = check_seed(seed)
    if not isinstance(ds, TextDataset):
        return _unlabelled_split(ds, test_fraction, seed)
    per_class = _class_indices(ds.labels, generator(seed))
    classes = list(per_class)
    sizes = [per_class[c].numel() for c in classes]
    n = len(ds)
    room = n - len(classes)  # one example per class stays in train
    n_test = min(max(1, round(test_fraction * n)), room)
    if n_test < 1:
        raise ValueError(
            f"cannot split {n} examples of {len(classes)} classes: every class needs one example in train and "
            f"the test set needs at least one (test_fraction={test_fraction})"
        )
    test_counts = _largest_remainder([test_fraction * s for s in sizes], n_test, [s - 1 for s in sizes])
    train_idx, test_idx = [], []
    for c, t in zip(classes, test_counts):
        test_idx.append(per_class[c][:t])
        train_idx.append(per_class[c][t:])
    train = torch.sort(torch.cat(train_idx)).values
    test = torch.sort(torch.cat(test_idx)).values
    return ds.subset(train), ds.subset(test)


def _unlabelled_split(ds: Any, test_fraction: float, seed: int) -> tuple[Any, Any]:
    if not hasattr(ds, "subset") or not hasattr(ds, "__len__"):
        raise TypeError(f"ds must be a TextDataset or a dataset with len() and subset(), got {type(ds).__name__}")
    n = len(ds)
    if n < 2:
        raise ValueError(f"cannot split {n} example(s): train and test need at least one each")
    n_test = min(max(1, round(test_fraction * n)), n - 1)
    perm = torch.randperm(n, generator=generator(seed))
    return ds.subset(torch.sort(perm[n_test:]).values), ds.subset(torch.sort(perm[:n_test]).values)


# ------------------------------------------------------------------------------------------------ partitions


def partition(
    labels: torch.Tensor | None,
    n_agents: int,
    scheme: str = "iid",
    *,
    n: int | None = None,
    alpha: float = 0.5,
    shards_per_agent: int = 2,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Split the examples among ``n_agents`` agents.

    Schemes:

    * ``"iid"``: a seeded permutation cut into ``n_agents`` parts whose sizes differ by at most one. The only
      scheme for data without class labels (``labels=None`` with ``n`` examples); it gives the same parts as for
      labelled data of the same size and seed.
    * ``"dirichlet"``: label skew. For each class (ascending), proportions ~ Dirichlet(``alpha`` * 1) are drawn
      (as normalised Gamma(``alpha``, 1) variates of ``np.random.default_rng(seed)``) and the class's shuffled
      examples are cut by them (cumulative rounding). Small ``alpha`` gives each agent few classes; large
      ``alpha`` approaches IID. Draws leaving an agent empty are redrawn, up to 100 attempts.
    * ``"shards"``: the examples are sorted by label (ties in seeded random order), cut into
      ``n_agents * shards_per_agent`` contiguous shards of near-equal size, and each agent gets
      ``shards_per_agent`` of them, chosen by a seeded permutation. A shard no larger than the smallest class
      spans at most two labels, so each agent sees at most ``2 * shards_per_agent`` labels (exactly
      ``shards_per_agent`` or fewer when the shards align with the class boundaries).

    Args:
        labels: 1-D integer tensor of class labels, one per example; None for data without class labels
            (then ``n`` is required and ``scheme`` must be ``"iid"``).
        n_agents: Number of agents, >= 1 and <= the number of examples.
        scheme: One of :data:`PARTITIONS` (the run configuration resolves its ``"auto"`` before calling).
        n: The number of examples; required with ``labels=None``, else optional and checked against
            ``len(labels)``.
        alpha: Dirichlet concentration (``"dirichlet"`` only), > 0.
        shards_per_agent: Shards per agent (``"shards"`` only), >= 1.
        seed: Non-negative seed.

    Returns:
        ``n_agents`` int64 tensors of example indices, each sorted ascending and non-empty; disjoint, together
        every index in ``range(n)`` exactly once.

    Raises:
        TypeError: ``labels`` is not an integer tensor/sequence, an int argument is not an int, or neither
            ``labels`` nor ``n`` is given.
        ValueError: ``n_agents`` < 1 or > the number of examples, ``n`` differs from ``len(labels)``, ``alpha``
            <= 0, ``shards_per_agent`` < 1, fewer examples than shards, an unknown ``scheme``, a scheme by
            class label for data without labels, or no Dirichlet draw without empty agents.
    """
    n_agents = check_int("n_agents", n_agents, 1)
    seed = check_seed(seed)
    check_choice("partition scheme", scheme, PARTITIONS)
    if labels is None:
        if n is None:
            raise TypeError("partition without class labels (labels=None) needs n=<the number of examples>")
        n = check_int("n", n, 0)
        if scheme != "iid":
            raise ValueError(
                f"partition scheme {scheme!r} splits the examples by class label, and these data have none "
                f"(labels=None, e.g. causal-LM examples); use partition 'iid'"
            )
    else:
        labels = as_index_tensor("labels", labels)
        if n is not None and check_int("n", n, 0) != labels.numel():
            raise ValueError(f"n={n} differs from the number of labels, {labels.numel()}")
        n = labels.numel()
    if n < n_agents:
        raise ValueError(f"need at least one example per agent: got {n} examples for n_agents={n_agents}")

    if scheme == "iid":
        perm = torch.randperm(n, generator=generator(seed))
        parts = list(torch.tensor_split(perm, n_agents))

    elif scheme == "dirichlet":
        alpha = check_float("alpha", alpha)
        if not alpha > 0 or not np.isfinite(alpha):
            raise ValueError(f"alpha must be a finite number > 0, got alpha={alpha}")
        rng = np.random.default_rng(seed)
        labels_np = labels.numpy()
        classes = np.unique(labels_np)
        class_idx = [np.flatnonzero(labels_np == c) for c in classes]
        attempts = 100
        for _ in range(attempts):
            buckets: list[list[np.ndarray]] = [[] for _ in range(n_agents)]
            for idx in class_idx:
                shuffled = idx[rng.permutation(idx.size)]
                g = rng.gamma(alpha, 1.0, size=n_agents)
                total = g.sum()
                if not total > 0:  # every variate underflowed (tiny alpha): give the class to one agent
                    g = np.zeros(n_agents)
                    g[rng.integers(n_agents)] = 1.0
                    total = 1.0
                cuts = np.round(np.cumsum(g / total) * idx.size).astype(np.int64)
                cuts = np.clip(cuts, 0, idx.size)
                for a, chunk in enumerate(np.split(shuffled, cuts[:-1])):
                    buckets[a].append(chunk)
            sizes = [sum(c.size for c in b) for b in buckets]
            if min(sizes) > 0:
                parts = [torch.from_numpy(np.concatenate(b).astype(np.int64)) for b in buckets]
                break
        else:
            raise ValueError(
                f"dirichlet partition left some agent without examples in {attempts} draws "
                f"(n={n}, n_agents={n_agents}, alpha={alpha}); use a larger alpha or fewer agents"
            )

    else:  # shards
        shards_per_agent = check_int("shards_per_agent", shards_per_agent, 1)
        n_shards = n_agents * shards_per_agent
        if n < n_shards:
            raise ValueError(
                f"shards partition needs at least n_agents * shards_per_agent = {n_shards} examples, got {n}; "
                f"use fewer shards_per_agent or fewer agents"
            )
        g = generator(seed)
        perm = torch.randperm(n, generator=g)
        order = perm[torch.sort(labels[perm], stable=True).indices]
        shards = torch.tensor_split(order, n_shards)
        pick = torch.randperm(n_shards, generator=g).tolist()
        parts = [
            torch.cat([shards[s] for s in pick[a * shards_per_agent : (a + 1) * shards_per_agent]])
            for a in range(n_agents)
        ]

    return [torch.sort(p.to(torch.int64)).values for p in parts]


def partition_summary(labels: torch.Tensor | None, parts: Sequence[torch.Tensor],
                      num_classes: int | None = None) -> dict:
    """Describe a partition, JSON-serialisable (plain ints and lists).

    Args:
        labels: 1-D integer tensor of class labels, one per example; None for data without class labels.
        parts: Each agent's example indices, as returned by :func:`partition`.
        num_classes: Number of classes (labels must be in ``[0, num_classes)``); unused without labels.

    Returns:
        ``{"sizes": [n_agent...], "classes_per_agent": [distinct labels per agent...],
        "label_counts": [[count per class] per agent]}``; without labels ``{"sizes": [n_agent...]}``.
    """
    if labels is None:
        return {"sizes": [int(as_index_tensor(f"parts[{a}]", p).numel()) for a, p in enumerate(parts)]}
    if num_classes is None:
        raise TypeError("partition_summary with labels needs num_classes")
    labels = as_index_tensor("labels", labels)
    num_classes = check_int("num_classes", num_classes, 1)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, num_classes={num_classes}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    counts = []
    for a, p in enumerate(parts):
        idx = as_index_tensor(f"parts[{a}]", p)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= labels.numel()):
            raise ValueError(f"parts[{a}] holds indices outside [0, {labels.numel()})")
        counts.append(torch.bincount(labels[idx], minlength=num_classes).tolist())
    return {
        "sizes": [int(sum(c)) for c in counts],
        "classes_per_agent": [int(sum(1 for x in c if x > 0)) for c in counts],
        "label_counts": [[int(x) for x in c] for c in counts],
    }
