"""Data for decentralized LoRA fine-tuning of a text classifier.

This module provides everything between a text source and the per-agent minibatches of a training run:

* :func:`load_wordnet_supersenses`: the built-in task, WordNet 3.0 noun supersense classification (the
  definition of every noun synset, labelled with its lexicographer file: 26 classes);
* :func:`load_text_file` and :func:`from_hf`: user data from CSV / JSON-lines files or a Hugging Face
  ``datasets.Dataset``;
* :func:`balanced_split` and :func:`train_test_split`: fixed, seeded train/test splits;
* :func:`partition` and :func:`partition_summary`: split the training set among agents (IID, Dirichlet label
  skew or label shards);
* :class:`TokenizedDataset`: tokenize once, then gather dynamically padded batches;
* :class:`AgentSampler`: an independent, resumable stream of minibatches per agent.

Everything is deterministic given its ``seed``; nothing touches torch's global random state.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = [
    "DEFAULT_WORDNET_NOUNS",
    "NOUN_SUPERSENSES",
    "PARTITIONS",
    "AgentSampler",
    "TextDataset",
    "TokenizedDataset",
    "balanced_split",
    "from_hf",
    "load_text_file",
    "load_wordnet_supersenses",
    "partition",
    "partition_summary",
    "train_test_split",
]

NOUN_SUPERSENSES: tuple[str, ...] = (
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
)
"""The 26 WordNet noun lexicographer files; the index is the class label (``lex_filenum - 3``)."""

DEFAULT_WORDNET_NOUNS = "/usr/share/wordnet/data.noun"
"""Where Debian's ``wordnet-base`` package installs the WordNet 3.0 noun data file."""

PARTITIONS = ("iid", "dirichlet", "shards")
"""The partition schemes understood by :func:`partition`."""

_FIRST_NOUN_LEX = 3  # noun.Tops
_LAST_NOUN_LEX = 28  # noun.time
_INT_LITERAL = re.compile(r"^[+-]?\d+$")


# ------------------------------------------------------------------------------------------------ helpers


def _check_int(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={value}")
    return value


def _check_seed(seed: Any) -> int:
    return _check_int("seed", seed, 0)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) % (2**63))


def _as_index_tensor(name: str, value: Any) -> torch.Tensor:
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


def _check_label_names(label_names: Any) -> list[str]:
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


# ------------------------------------------------------------------------------------------------ dataset


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
        self.labels = _as_index_tensor("labels", self.labels)
        self.label_names = _check_label_names(self.label_names)
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
        idx = _as_index_tensor("indices", indices)
        if idx.numel() > 0:
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= len(self):
                raise ValueError(f"indices must be in [0, {len(self)}), got index {lo if lo < 0 else hi}")
        texts = self.texts
        return TextDataset([texts[i] for i in idx.tolist()], self.labels[idx].clone(), list(self.label_names))


# ------------------------------------------------------------------------------------------------ WordNet


def load_wordnet_supersenses(path: str | os.PathLike = DEFAULT_WORDNET_NOUNS) -> TextDataset:
    """Load WordNet 3.0 noun supersense classification from a ``data.noun`` file.

    Every noun synset is one example, in file order. The text is the synset's definition: its gloss cut before
    the first example sentence (``; "``), with a trailing ``;`` and whitespace removed. Should a gloss hold no
    definition (only examples, or nothing), the synset's words are used instead (``_`` read as a space). The
    label is the lexicographer file, ``lex_filenum - 3``, an index into :data:`NOUN_SUPERSENSES`.

    Args:
        path: A WordNet 3.0 ``data.noun`` file (default: Debian's ``wordnet-base`` location).

    Returns:
        A :class:`TextDataset` with 26 classes (about 82k examples for WordNet 3.0).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: A line is malformed (bad ``lex_filenum`` or ``w_cnt``, no `` | `` gloss separator, or a
            ``lex_filenum`` outside the noun files 03..28); the message names the file and line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"WordNet noun data file {str(path)!r} not found: install Debian's wordnet-base "
            f"(`apt-get install wordnet-base`) or pass the path of a WordNet 3.0 data.noun file"
        )
    texts: list[str] = []
    labels: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith("  "):  # license header
                continue
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            head, sep, gloss = line.partition(" | ")
            if not sep:
                raise ValueError(f"{path}:{lineno}: malformed synset line, no ' | ' before the gloss: {line[:80]!r}")
            fields = head.split(" ", 4)
            if len(fields) < 5:
                raise ValueError(
                    f"{path}:{lineno}: malformed synset line, expected 'offset lex_filenum ss_type w_cnt words...', "
                    f"got {head[:80]!r}"
                )
            lex_field = fields[1]
            if not lex_field.isdigit():
                raise ValueError(f"{path}:{lineno}: lex_filenum must be a 2-digit decimal number, got {lex_field!r}")
            lex = int(lex_field)
            if not _FIRST_NOUN_LEX <= lex <= _LAST_NOUN_LEX:
                raise ValueError(
                    f"{path}:{lineno}: lex_filenum {lex_field} is not a noun lexicographer file "
                    f"(expected 03..28); is this a data.noun file?"
                )
            cut = gloss.find('; "')
            text = (gloss if cut < 0 else gloss[:cut]).strip().rstrip(";").strip()
            if not text or text.startswith('"'):
                text = _synset_words(fields, path, lineno)
            texts.append(text)
            labels.append(lex - _FIRST_NOUN_LEX)
    return TextDataset(texts, torch.tensor(labels, dtype=torch.int64), list(NOUN_SUPERSENSES))


def _synset_words(fields: list[str], path: Path, lineno: int) -> str:
    """The synset's words (``w_cnt`` is hexadecimal) joined by ', ', for synsets without a definition."""
    try:
        w_cnt = int(fields[3], 16)
    except ValueError:
        raise ValueError(f"{path}:{lineno}: w_cnt must be a 2-digit hexadecimal number, got {fields[3]!r}") from None
    rest = fields[4].split(" ")
    if w_cnt < 1 or len(rest) < 2 * w_cnt:
        raise ValueError(f"{path}:{lineno}: w_cnt is {fields[3]!r} ({w_cnt}) but the line has fewer words")
    return ", ".join(rest[2 * i].replace("_", " ") for i in range(w_cnt))


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
    n_train = _check_int("n_train", n_train, 1)
    n_test = _check_int("n_test", n_test, 1)
    seed = _check_seed(seed)
    total = n_train + n_test
    if total > len(ds):
        raise ValueError(
            f"n_train + n_test must be <= len(ds) = {len(ds)}, got n_train={n_train} + n_test={n_test} = {total}"
        )
    per_class = _class_indices(ds.labels, _generator(seed))
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


def train_test_split(ds: TextDataset, test_fraction: float, *, seed: int = 0) -> tuple[TextDataset, TextDataset]:
    """A stratified, seeded train/test split.

    The test set holds ``round(test_fraction * len(ds))`` examples (at least 1), shared among the classes in
    proportion to their sizes (largest-remainder rounding). Every class keeps at least one example in train,
    so a class with a single example is never in the test set.

    Args:
        ds: The dataset to split.
        test_fraction: Fraction of the examples that go to the test set, ``0 < test_fraction < 1``.
        seed: Non-negative seed; the split is a function of ``(ds.labels, test_fraction, seed)``.

    Returns:
        ``(train, test)``, disjoint, together all of ``ds``, each in ascending order of the original index.

    Raises:
        ValueError: ``test_fraction`` outside (0, 1), or too few examples to hold out any while keeping one
            per class in train.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.floating, np.integer)):
        raise TypeError(f"test_fraction must be a float, got {type(test_fraction).__name__}")
    test_fraction = float(test_fraction)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must satisfy 0 < test_fraction < 1, got test_fraction={test_fraction}")
    seed = _check_seed(seed)
    per_class = _class_indices(ds.labels, _generator(seed))
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


# ------------------------------------------------------------------------------------------------ user data


def _resolve_labels(
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
        names = _check_label_names(label_names)
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
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{where(i)}: label must be a str or an int, got {type(v).__name__} ({v!r})")
            if not 0 <= int(v) < len(names):
                raise ValueError(f"{where(i)}: label {int(v)} is out of range for {len(names)} label_names")
            out.append(int(v))
        return out, names

    values = []
    for i, v in enumerate(raw):
        if numeric_strings and isinstance(v, str) and _INT_LITERAL.match(v.strip()):
            values.append(int(v))
        elif isinstance(v, str) or (isinstance(v, (int, np.integer)) and not isinstance(v, bool)):
            values.append(v if isinstance(v, str) else int(v))
        else:
            raise TypeError(f"{where(i)}: label must be a str or an int, got {type(v).__name__} ({v!r})")
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


def _check_text(value: Any, where: str, column: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{where}: text column {column!r} must hold a string, got {type(value).__name__} ({value!r})")
    if not value.strip():
        raise ValueError(f"{where}: empty text in column {column!r}")
    return value


def load_text_file(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
) -> TextDataset:
    """Load a labelled text classification set from a CSV or JSON-lines file.

    ``.csv`` files are read with :mod:`csv` and need a header row. ``.jsonl`` / ``.json`` files hold one JSON
    object per line (blank lines are skipped). Labels may be strings or ints (in CSV, integer literals count
    as ints). With ``label_names``, string labels map through it and int labels must index into it; without,
    string labels map to their sorted unique names and int labels keep their values, with names
    ``str(i) for i in range(max + 1)``.

    Args:
        path: The file; its extension selects the format.
        text_column: Name of the column / key holding the text.
        label_column: Name of the column / key holding the label.
        label_names: Optional class names; the index is the label.

    Returns:
        A :class:`TextDataset` in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Unknown extension, a missing column, an empty text, an unknown or out-of-range label,
            invalid JSON, or no examples; the message names the file and line.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in (".csv", ".jsonl", ".json"):
        raise ValueError(
            f"unsupported file extension {path.suffix!r} for {str(path)!r}: expected .csv, .jsonl or .json"
        )
    if not path.is_file():
        raise FileNotFoundError(f"text data file {str(path)!r} not found")
    try:
        texts, raw, lines = _read_text_file(path, ext, text_column, label_column)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text ({_first_bad_line(path)}); save the file as UTF-8") from None
    if not texts:
        raise ValueError(f"{path}: no examples found")
    labels, names = _resolve_labels(
        raw, lambda i: f"{path}:{lines[i]}", label_names, numeric_strings=(ext == ".csv")
    )
    return TextDataset(texts, torch.tensor(labels, dtype=torch.int64), names)


def _first_bad_line(path: Path) -> str:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return f"line {lineno}, byte {e.start + 1} of that line is {line[e.start:e.start + 1]!r}"
    return "an invalid byte sequence"  # pragma: no cover - a sequence split across lines


def _read_text_file(path: Path, ext: str, text_column: str, label_column: str) -> tuple[list, list, list]:
    texts: list[str] = []
    raw: list[Any] = []
    lines: list[int] = []
    if ext == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: empty CSV file, expected a header row naming the columns")
            header = [h.strip() for h in header]
            for col in (text_column, label_column):
                if col not in header:
                    raise ValueError(f"{path}: column {col!r} not found in the CSV header; columns found: {header}")
            ti, li = header.index(text_column), header.index(label_column)
            for row in reader:
                lineno = reader.line_num
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) <= max(ti, li):
                    raise ValueError(
                        f"{path}:{lineno}: row has {len(row)} fields, expected {len(header)} (columns {header})"
                    )
                texts.append(_check_text(row[ti], f"{path}:{lineno}", text_column))
                label = row[li].strip()
                if not label:
                    raise ValueError(f"{path}:{lineno}: empty label in column {label_column!r}")
                raw.append(label)
                lines.append(lineno)
    else:
        with open(path, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(
                        f"{path}:{lineno}: invalid JSON ({e.msg}); expected one JSON object per line"
                    ) from None
                if not isinstance(obj, dict):
                    raise TypeError(f"{path}:{lineno}: expected one JSON object per line, got a {type(obj).__name__}")
                for col in (text_column, label_column):
                    if col not in obj:
                        raise ValueError(
                            f"{path}:{lineno}: column {col!r} not found; columns found: {sorted(obj)}"
                        )
                texts.append(_check_text(obj[text_column], f"{path}:{lineno}", text_column))
                raw.append(obj[label_column])
                lines.append(lineno)
    return texts, raw, lines


def from_hf(
    dataset: Any,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
) -> TextDataset:
    """Convert a Hugging Face ``datasets.Dataset`` (duck-typed; ``datasets`` is not imported).

    Columns are read as ``dataset[column]`` and their names from ``dataset.column_names``. Label names come
    from ``label_names`` when given, else from ``dataset.features[label_column].names`` when the label column
    is a ``ClassLabel``, else by the rules of :func:`load_text_file`.

    Args:
        dataset: An object with ``column_names`` and ``__getitem__(column) -> list`` (and optionally
            ``features``), e.g. one split of a ``datasets.DatasetDict``.
        text_column: Name of the text column.
        label_column: Name of the label column.
        label_names: Optional class names; the index is the label.

    Returns:
        A :class:`TextDataset` in dataset order.

    Raises:
        TypeError: ``dataset`` has no ``column_names``.
        ValueError: A missing column, an empty text, an unknown or out-of-range label (e.g. the ``-1`` of an
            unlabelled split), or no rows; the message names the row.
    """
    columns = getattr(dataset, "column_names", None)
    if columns is None:
        raise TypeError(
            f"dataset must look like a datasets.Dataset (with column_names), got {type(dataset).__name__}; "
            f"for a DatasetDict pick a split, e.g. dataset['train']"
        )
    columns = list(columns)
    for col in (text_column, label_column):
        if col not in columns:
            raise ValueError(f"column {col!r} not found in the dataset; columns found: {columns}")
    text_values = list(dataset[text_column])
    raw = list(dataset[label_column])
    if len(text_values) != len(raw):
        raise ValueError(
            f"columns {text_column!r} and {label_column!r} differ in length: {len(text_values)} vs {len(raw)}"
        )
    if not text_values:
        raise ValueError("the dataset has no rows")
    texts = [_check_text(v, f"row {i}", text_column) for i, v in enumerate(text_values)]
    if label_names is None:
        features = getattr(dataset, "features", None)
        feature = None
        if features is not None:
            try:
                feature = features[label_column]
            except (KeyError, TypeError, IndexError):
                feature = None
        names = getattr(feature, "names", None)
        if names is not None:
            label_names = list(names)
    labels, names = _resolve_labels(raw, lambda i: f"row {i}", label_names, numeric_strings=False)
    return TextDataset(texts, torch.tensor(labels, dtype=torch.int64), names)


# ------------------------------------------------------------------------------------------------ partitions


def partition(
    labels: torch.Tensor,
    n_agents: int,
    scheme: str = "iid",
    *,
    alpha: float = 0.5,
    shards_per_agent: int = 2,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Split the examples among ``n_agents`` agents.

    Schemes:

    * ``"iid"``: a seeded permutation cut into ``n_agents`` parts whose sizes differ by at most one.
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
        labels: 1-D integer tensor of class labels, one per example.
        n_agents: Number of agents, >= 1 and <= ``len(labels)``.
        scheme: One of :data:`PARTITIONS`.
        alpha: Dirichlet concentration (``"dirichlet"`` only), > 0.
        shards_per_agent: Shards per agent (``"shards"`` only), >= 1.
        seed: Non-negative seed.

    Returns:
        ``n_agents`` int64 tensors of example indices, each sorted ascending and non-empty; disjoint, together
        every index in ``range(len(labels))`` exactly once.

    Raises:
        TypeError: ``labels`` is not an integer tensor/sequence, or an int argument is not an int.
        ValueError: ``n_agents`` < 1 or > ``len(labels)``, ``alpha`` <= 0, ``shards_per_agent`` < 1, fewer
            examples than shards, an unknown ``scheme``, or no Dirichlet draw without empty agents.
    """
    labels = _as_index_tensor("labels", labels)
    n_agents = _check_int("n_agents", n_agents, 1)
    seed = _check_seed(seed)
    n = labels.numel()
    if n < n_agents:
        raise ValueError(f"need at least one example per agent: got {n} examples for n_agents={n_agents}")
    if scheme not in PARTITIONS:
        raise ValueError(f"unknown partition scheme {scheme!r}; expected one of {PARTITIONS}")

    if scheme == "iid":
        perm = torch.randperm(n, generator=_generator(seed))
        parts = list(torch.tensor_split(perm, n_agents))

    elif scheme == "dirichlet":
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)):
            raise TypeError(f"alpha must be a float, got {type(alpha).__name__}")
        alpha = float(alpha)
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
        shards_per_agent = _check_int("shards_per_agent", shards_per_agent, 1)
        n_shards = n_agents * shards_per_agent
        if n < n_shards:
            raise ValueError(
                f"shards partition needs at least n_agents * shards_per_agent = {n_shards} examples, got {n}; "
                f"use fewer shards_per_agent or fewer agents"
            )
        g = _generator(seed)
        perm = torch.randperm(n, generator=g)
        order = perm[torch.sort(labels[perm], stable=True).indices]
        shards = torch.tensor_split(order, n_shards)
        pick = torch.randperm(n_shards, generator=g).tolist()
        parts = [
            torch.cat([shards[s] for s in pick[a * shards_per_agent : (a + 1) * shards_per_agent]])
            for a in range(n_agents)
        ]

    return [torch.sort(p.to(torch.int64)).values for p in parts]


def partition_summary(labels: torch.Tensor, parts: Sequence[torch.Tensor], num_classes: int) -> dict:
    """Describe a partition, JSON-serialisable (plain ints and lists).

    Args:
        labels: 1-D integer tensor of class labels, one per example.
        parts: Each agent's example indices, as returned by :func:`partition`.
        num_classes: Number of classes (labels must be in ``[0, num_classes)``).

    Returns:
        ``{"sizes": [n_agent...], "classes_per_agent": [distinct labels per agent...],
        "label_counts": [[count per class] per agent]}``.
    """
    labels = _as_index_tensor("labels", labels)
    num_classes = _check_int("num_classes", num_classes, 1)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, num_classes={num_classes}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    counts = []
    for a, p in enumerate(parts):
        idx = _as_index_tensor(f"parts[{a}]", p)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= labels.numel()):
            raise ValueError(f"parts[{a}] holds indices outside [0, {labels.numel()})")
        counts.append(torch.bincount(labels[idx], minlength=num_classes).tolist())
    return {
        "sizes": [int(sum(c)) for c in counts],
        "classes_per_agent": [int(sum(1 for x in c if x > 0)) for c in counts],
        "label_counts": [[int(x) for x in c] for c in counts],
    }


# ------------------------------------------------------------------------------------------------ tokens


class TokenizedDataset:
    """A :class:`TextDataset` tokenized once, serving dynamically padded batches.

    Attributes:
        input_ids: int64 ``(n, T)``, padded to the longest (truncated) text.
        attention_mask: int64 ``(n, T)``.
        labels: int64 ``(n,)``.
        lengths: int64 ``(n,)``, the number of real tokens of each text.
        label_names: The class names.
    """

    def __init__(self, ds: TextDataset, tokenizer: Any, *, max_length: int = 64) -> None:
        """Tokenize every text of ``ds``.

        Args:
            ds: The dataset.
            tokenizer: A Hugging Face tokenizer (callable with ``padding``, ``truncation``, ``max_length`` and
                ``return_tensors``); ``token_type_ids`` are ignored.
            max_length: Longest sequence kept, in tokens (special tokens included), >= 1.
        """
        if not isinstance(ds, TextDataset):
            raise TypeError(f"ds must be a TextDataset, got {type(ds).__name__}")
        max_length = _check_int("max_length", max_length, 1)
        if len(ds) == 0:
            raise ValueError("ds is empty: nothing to tokenize")
        if not callable(tokenizer):
            raise TypeError(f"tokenizer must be a callable Hugging Face tokenizer, got {type(tokenizer).__name__}")
        enc = tokenizer(
            list(ds.texts), padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
        )
        self.input_ids = torch.as_tensor(enc["input_ids"]).to(torch.int64)
        if "attention_mask" in enc:
            self.attention_mask = torch.as_tensor(enc["attention_mask"]).to(torch.int64)
        else:
            pad_id = getattr(tokenizer, "pad_token_id", None)
            self.attention_mask = (
                torch.ones_like(self.input_ids) if pad_id is None else (self.input_ids != pad_id).to(torch.int64)
            )
        self.labels = ds.labels.clone()
        self.lengths = self.attention_mask.sum(dim=1)
        self.label_names = list(ds.label_names)
        self.max_length = max_length
        self.left_padded = getattr(tokenizer, "padding_side", "right") == "left"

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_classes(self) -> int:
        """The number of classes."""
        return len(self.label_names)

    def batch(self, indices: Any, device: Any = None) -> dict[str, torch.Tensor]:
        """The rows at ``indices``, trimmed to their longest sequence (dynamic padding).

        Args:
            indices: 1-D integer tensor or sequence of row positions, non-empty.
            device: Optional device to move the tensors to.

        Returns:
            ``{"input_ids": (b, t), "attention_mask": (b, t), "labels": (b,)}``, int64, where ``t`` is the
            largest length among the rows (padding columns beyond it are dropped; on the left for
            left-padding tokenizers).
        """
        idx = _as_index_tensor("indices", indices)
        if idx.numel() == 0:
            raise ValueError("indices must not be empty")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= len(self):
            raise ValueError(f"indices must be in [0, {len(self)}), got index {lo if lo < 0 else hi}")
        t = max(int(self.lengths[idx].max()), 1)
        cols = slice(self.input_ids.shape[1] - t, None) if self.left_padded else slice(0, t)
        out = {
            "input_ids": self.input_ids[idx][:, cols].contiguous(),
            "attention_mask": self.attention_mask[idx][:, cols].contiguous(),
            "labels": self.labels[idx],
        }
        if device is not None:
            out = {k: v.to(device) for k, v in out.items()}
        return out


# ------------------------------------------------------------------------------------------------ sampler


class AgentSampler:
    """Independent, resumable minibatch streams, one per agent.

    Agent ``a``'s stream is a sequence of epochs, each a fresh permutation of ``parts[a]`` drawn from the
    agent's own ``torch.Generator`` (seeded with ``seed * 1_000_003 + a``), served ``batch_size`` at a time. A
    batch never spans two epochs: the last batch of an epoch may be shorter, and an agent with fewer than
    ``batch_size`` examples gets its whole set, in a fresh order, every time. Drawing for one agent never
    changes another agent's stream.
    """

    _SEED_STRIDE = 1_000_003

    def __init__(self, parts: Sequence[torch.Tensor], batch_size: int, *, seed: int = 0,
                 lengths: torch.Tensor | None = None, length_grouping: int = 0) -> None:
        """Set up the streams.

        Args:
            parts: Each agent's dataset indices (non-empty 1-D integer tensors), e.g. from :func:`partition`.
            batch_size: Examples per batch, >= 1.
            seed: Non-negative seed.
            lengths: Sequence length of every dataset example (indexed by dataset index), for length grouping.
            length_grouping: With ``lengths``, g >= 2 groups each run of ``g * batch_size`` consecutive examples of
                an epoch's permutation by length and serves that run's batches in a random order, so a batch pads
                to less (batches stay random draws of the agent's data; only their composition within a run is
                sorted). 0 or 1: off.
        """
        if isinstance(parts, torch.Tensor) or not isinstance(parts, Sequence) or len(parts) == 0:
            raise TypeError("parts must be a non-empty list of 1-D integer tensors, one per agent")
        self.parts = [_as_index_tensor(f"parts[{a}]", p) for a, p in enumerate(parts)]
        for a, p in enumerate(self.parts):
            if p.numel() == 0:
                raise ValueError(f"parts[{a}] is empty: every agent needs at least one example")
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.seed = _check_seed(seed)
        self.length_grouping = _check_int("length_grouping", length_grouping, 0)
        self.lengths = None
        if lengths is not None and self.length_grouping > 1:
            self.lengths = torch.as_tensor(lengths).reshape(-1)
            top = max(int(p.max()) for p in self.parts)
            if self.lengths.numel() <= top:
                raise ValueError(f"lengths has {self.lengths.numel()} entries but parts index example {top}")
        self._gens = [_generator(self.seed * self._SEED_STRIDE + a) for a in range(len(self.parts))]
        self._perms: list[torch.Tensor | None] = [None] * len(self.parts)
        self._pos = [0] * len(self.parts)
        self._epochs = [0] * len(self.parts)

    @property
    def n_agents(self) -> int:
        """The number of agents."""
        return len(self.parts)

    def _agent(self, agent: Any) -> int:
        agent = _check_int("agent", agent)
        if not 0 <= agent < len(self.parts):
            raise ValueError(f"agent must be in [0, {len(self.parts)}), got agent={agent}")
        return agent

    def next_batch(self, agent: int) -> torch.Tensor:
        """The next batch of ``agent``'s stream.

        Args:
            agent: The agent, in ``[0, n_agents)``.

        Returns:
            int64 tensor of up to ``batch_size`` dataset indices, all from ``parts[agent]``.
        """
        a = self._agent(agent)
        part = self.parts[a]
        perm = self._perms[a]
        if perm is None or self._pos[a] >= perm.numel():
            perm = self._epoch_order(a)
            self._perms[a] = perm
            self._pos[a] = 0
        start = self._pos[a]
        stop = min(start + self.batch_size, perm.numel())
        self._pos[a] = stop
        if stop >= perm.numel():
            self._epochs[a] += 1
        return part[perm[start:stop]]

    def _epoch_order(self, a: int) -> torch.Tensor:
        gen = self._gens[a]
        perm = torch.randperm(self.parts[a].numel(), generator=gen)
        if self.lengths is None:
            return perm
        span = self.length_grouping * self.batch_size
        out = []
        for s in range(0, perm.numel(), span):
            run = perm[s:s + span]
            run = run[torch.argsort(self.lengths[self.parts[a][run]], descending=True, stable=True)]
            batches = list(torch.split(run, self.batch_size))
            full = [b for b in batches if b.numel() == self.batch_size]
            short = [b for b in batches if b.numel() < self.batch_size]  # only the epoch's last batch can be short
            out.extend(full[k] for k in torch.randperm(len(full), generator=gen).tolist())
            out.extend(short)
        return torch.cat(out)

    def epochs(self, agent: int) -> int:
        """The number of epochs ``agent`` has completed (its last batch served)."""
        return self._epochs[self._agent(agent)]

    def state_dict(self) -> dict:
        """Everything needed to continue every stream bit-for-bit; ``torch.save``-able.

        Returns:
            A dict of plain Python values and CPU tensors (copies).
        """
        return {
            "version": 1,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "length_grouping": self.length_grouping if self.lengths is not None else 0,
            "part_sizes": [int(p.numel()) for p in self.parts],
            "generator_states": [g.get_state().clone() for g in self._gens],
            "permutations": [None if p is None else p.clone() for p in self._perms],
            "positions": list(self._pos),
            "epochs": list(self._epochs),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the streams saved by :meth:`state_dict`.

        Args:
            state: A dict from :meth:`state_dict` of a sampler with the same agent count, part sizes and batch
                size.

        Raises:
            ValueError: ``state`` does not match this sampler, or is incomplete or inconsistent.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from AgentSampler.state_dict(), got {type(state).__name__}")
        keys = ("batch_size", "part_sizes", "generator_states", "permutations", "positions", "epochs")
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"state is missing {missing}; expected a dict from AgentSampler.state_dict()")
        sizes = [int(p.numel()) for p in self.parts]
        saved_sizes = [int(s) for s in state["part_sizes"]]
        if len(saved_sizes) != len(sizes):
            raise ValueError(f"state is for {len(saved_sizes)} agents, this sampler has {len(sizes)}")
        if saved_sizes != sizes:
            bad = next(a for a in range(len(sizes)) if saved_sizes[a] != sizes[a])
            raise ValueError(
                f"state part sizes do not match: agent {bad} has {saved_sizes[bad]} examples in state, "
                f"{sizes[bad]} here"
            )
        if int(state["batch_size"]) != self.batch_size:
            raise ValueError(f"state has batch_size={state['batch_size']}, this sampler has {self.batch_size}")
        grouping = self.length_grouping if self.lengths is not None else 0
        if int(state.get("length_grouping", 0)) != grouping:
            raise ValueError(f"state has length_grouping={state.get('length_grouping', 0)}, this sampler has {grouping}")
        n = len(sizes)
        for k in ("generator_states", "permutations", "positions", "epochs"):
            if len(state[k]) != n:
                raise ValueError(f"state[{k!r}] has {len(state[k])} entries, expected {n}")
        perms: list[torch.Tensor | None] = []
        for a, p in enumerate(state["permutations"]):
            if p is None:
                perms.append(None)
                continue
            p = _as_index_tensor(f"state['permutations'][{a}]", p)
            if p.numel() != sizes[a] or not torch.equal(torch.sort(p).values, torch.arange(sizes[a])):
                raise ValueError(f"state['permutations'][{a}] is not a permutation of {sizes[a]} positions")
            perms.append(p.clone())
        positions = [int(x) for x in state["positions"]]
        for a, pos in enumerate(positions):
            if not 0 <= pos <= sizes[a]:
                raise ValueError(f"state['positions'][{a}] = {pos} is outside [0, {sizes[a]}]")
        gens = []
        for a, gs in enumerate(state["generator_states"]):
            g = torch.Generator()
            try:
                g.set_state(torch.as_tensor(gs, dtype=torch.uint8).cpu())
            except (RuntimeError, TypeError, ValueError) as e:
                raise ValueError(f"state['generator_states'][{a}] is not a CPU generator state: {e}") from None
            gens.append(g)
        self._gens = gens
        self._perms = perms
        self._pos = positions
        self._epochs = [int(e) for e in state["epochs"]]
        if "seed" in state:
            self.seed = int(state["seed"])
