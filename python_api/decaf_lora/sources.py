"""Where texts come from: the built-in WordNet task, CSV / JSON-lines files and Hugging Face datasets.

Each loader returns a :class:`~decaf_lora.texts.TextDataset` and names the file and line (or row) of any
malformed input.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import torch

from ._checks import is_int, shown
from .names import DEFAULT_WORDNET_NOUNS
from .texts import TextDataset, check_label_names

__all__ = ["DEFAULT_WORDNET_NOUNS", "NOUN_SUPERSENSES", "from_hf", "load_text_file", "load_wordnet_supersenses"]

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

_FIRST_NOUN_LEX = 3  # noun.Tops
_LAST_NOUN_LEX = 28  # noun.time
_INT_LITERAL = re.compile(r"^[+-]?\d+$")


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
