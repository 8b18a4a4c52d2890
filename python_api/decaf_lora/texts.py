"""The labelled-text container every classification source returns, and the checks of texts, labels and
indices.

:class:`TextDataset` holds texts with integer class labels and their names; :func:`resolve_labels` is the one
rule that maps a source's raw labels (strings, ints, ``ClassLabel`` indices) to them; :func:`as_index_tensor` is
the one reading of "a 1-D tensor or sequence of indices" that the splits, partitions and batches accept too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ._checks import is_int, shown

__all__ = ["TextDataset"]

_INT_LITERAL = re.compile(r"^[+-]?\d+$")


def as_index_tensor(name: str, value: Any) -> torch.Tensor:
    """A 1-D int64 CPU tensor from a tensor, array or sequence of ints."""
    if isinstance(value, torch.Tensor):
        t = value
    else:
        try:
            t = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"{name} must be a 1-D integer tensor or sequence of ints, got {type(value).__name__}"
            ) from e
    if t.numel() == 0 and t.dim() == 1:
        return t.detach().to(device="cpu", dtype=torch.int64)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t.detach().to(device="cpu", dtype=torch.int64)


def check_label_names(label_names: Any) -> list[str]:
    """``label_names`` as a list of unique str."""
    if isinstance(label_names, str) or not isinstance(label_names, Sequence):
        raise TypeError(f"label_names must be a sequence of str, got {type(label_names).__name__}")
    names = list(label_names)
    for i, n in enumerate(names):
        if not isinstance(n, str):
            raise TypeError(f"label_names[{i}] must be a str, got {type(n).__name__} ({n!r})")
    if len(set(names)) != len(names):
        dups = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"label_names must be unique, got duplicates {dups}")
    return names


def resolve_labels(
    raw: list[Any],
    where: Callable[[int], str],
    label_names: Sequence[str] | None,
    *,
    numeric_strings: bool,
) -> tuple[list[int], list[str]]:
    """Map raw label values (str or int) to class indices and names.

    ``numeric_strings``: strings that are integer literals count as ints (CSV, where every value is a string),
    except where they are one of the given ``label_names``.
    """
    if label_names is not None:
        names = check_label_names(label_names)
        if not names:
            raise ValueError("label_names must not be empty")
        lookup = {n: i for i, n in enumerate(names)}
        out = []
        for i, v in enumerate(raw):
            if isinstance(v, str):
                if v in lookup:
                    out.append(lookup[v])
                    continue
                if numeric_strings and _INT_LITERAL.match(v.strip()):
                    v = int(v)
                else:
                    raise ValueError(f"{where(i)}: unknown label {v!r}; label_names are {names}")
            if not is_int(v):
                raise TypeError(f"{where(i)}: label must be a str or an int, got {shown(v)}")
            if not 0 <= int(v) < len(names):
                raise ValueError(f"{where(i)}: label {int(v)} is out of range for {len(names)} label_names")
            out.append(int(v))
        return out, names

    values = []
    for i, v in enumerate(raw):
        if numeric_strings and isinstance(v, str) and _INT_LITERAL.match(v.strip()):
            values.append(int(v))
        elif isinstance(v, str) or is_int(v):
            values.append(v if isinstance(v, str) else int(v))
        else:
            raise TypeError(f"{where(i)}: label must be a str or an int, got {shown(v)}")
    kinds = {isinstance(v, str) for v in values}
    if kinds == {True, False}:
        first_str = next(i for i, v in enumerate(values) if isinstance(v, str))
        first_int = next(i for i, v in enumerate(values) if not isinstance(v, str))
        raise ValueError(
            f"labels mix strings and ints ({where(first_str)}: {values[first_str]!r}, {where(first_int)}: "
            f"{values[first_int]!r}); pass label_names to map them"
        )
    if kinds == {True}:
        names = sorted(set(values))
        lookup = {n: i for i, n in enumerate(names)}
        return [lookup[v] for v in values], names
    for i, v in enumerate(values):
        if v < 0:
            raise ValueError(f"{where(i)}: integer labels must be >= 0, got {v}")
    top = max(values) if values else -1
    return values, [str(i) for i in range(top + 1)]


def check_text(value: Any, where: str, column: str) -> str:
    """``value`` if it is a string with some non-blank character; else an error naming ``where`` and ``column``."""
    if not isinstance(value, str):
        raise TypeError(f"{where}: text column {column!r} must hold a string, got {type(value).__name__} ({value!r})")
    if not value.strip():
        raise ValueError(f"{where}: empty text in column {column!r}")
    return value



@dataclass(eq=False)
class TextDataset:
    """Texts with integer class labels.

    Attributes:
        texts: The examples, one string each.
        labels: int64 tensor of shape ``(n,)``; ``labels[i]`` is the class of ``texts[i]``, in
            ``[0, len(label_names))``.
        label_names: The class names; the index is the label.
    """

    texts: list[str]
    labels: torch.Tensor
    label_names: list[str]

    def __post_init__(self) -> None:
        if isinstance(self.texts, str) or not isinstance(self.texts, Sequence):
            raise TypeError(f"texts must be a list of str, got {type(self.texts).__name__}")
        self.texts = list(self.texts)
        for i, t in enumerate(self.texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__} ({t!r})")
        self.labels = as_index_tensor("labels", self.labels)
        self.label_names = check_label_names(self.label_names)
        if len(self.texts) != self.labels.shape[0]:
            raise ValueError(
                f"texts and labels must have the same length, got {len(self.texts)} texts and "
                f"{self.labels.shape[0]} labels"
            )
        if self.labels.numel() > 0:
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= len(self.label_names):
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"labels must be in [0, {len(self.label_names)}) (one per label name), got label {bad}"
                )

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        return f"TextDataset(n={len(self)}, num_classes={self.num_classes})"

    @property
    def num_classes(self) -> int:
        """The number of classes, ``len(label_names)`` (some may have no examples)."""
        return len(self.label_names)

    def subset(self, indices: Any) -> TextDataset:
        """The examples at ``indices``, in that order.

        Args:
            indices: 1-D integer tensor or sequence of positions in ``[0, len(self))``.

        Returns:
            A new :class:`TextDataset` with the same ``label_names``.
        """
        idx = as_index_tensor("indices", indices)
        if idx.numel() > 0:
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= len(self):
                raise ValueError(f"indices must be in [0, {len(self)}), got index {lo if lo < 0 else hi}")
        texts = self.texts
        return TextDataset([texts[i] for i in idx.tolist()], self.labels[idx].clone(), list(self.label_names))

