"""Where data come from: the built-in WordNet task, files (CSV, JSON lines, Parquet), ``save_to_disk`` folders
and Hugging Face ``datasets`` objects.

:func:`load_table` reads the columns of any such source into a :class:`Table` that knows where each row came
from; the classification loaders (:func:`load_text_file`, :func:`from_hf`, :func:`load_classification`) turn one
into a :class:`~decaf_lora.texts.TextDataset`, and :mod:`decaf_lora.lm_data` into causal-LM examples. Every
error about the data names the file and line (or row).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .names import DEFAULT_WORDNET_NOUNS
from .texts import TextDataset, check_text, resolve_labels

__all__ = [
    "DEFAULT_WORDNET_NOUNS",
    "FILE_TYPES",
    "NOUN_SUPERSENSES",
    "Table",
    "dataset_splits",
    "from_hf",
    "load_classification",
    "load_table",
    "load_text_file",
    "load_wordnet_supersenses",
    "train_test_sources",
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

_FIRST_NOUN_LEX = 3  # noun.Tops
_LAST_NOUN_LEX = 28  # noun.time


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


# ------------------------------------------------------------------------------------------------ tables

FILE_TYPES = (".csv", ".jsonl", ".json", ".parquet")
"""The file extensions :func:`load_table` reads (besides folders written by ``save_to_disk``)."""


@dataclass(eq=False)
class Table:
    """Some columns of one data source as Python lists, and where each row came from.

    Attributes:
        name: The source as messages show it: the file, the file and split, or ``""`` for an in-memory dataset.
        columns: The requested columns, each a list with one value per row.
        lines: For the line-based readers (CSV, JSON lines): each row's line number in the file; else None.
        features: A ``datasets`` source's ``features`` (where ``ClassLabel`` names live), else None.
        all_strings: Every value is a string (CSV has no types).
    """

    name: str
    columns: dict[str, list]
    lines: list[int] | None = None
    features: Any = None
    all_strings: bool = False

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def where(self, i: int) -> str:
        """Row ``i`` as messages name it: ``file:line``, ``file, row i`` or ``row i`` (``i`` 0-based, as in
        ``dataset[i]``)."""
        if self.lines is not None:
            return f"{self.name}:{self.lines[i]}"
        return f"{self.name}, row {i}" if self.name else f"row {i}"


def load_table(source: Any, columns: Sequence[str], *, split: str | None = None) -> Table:
    """Read ``columns`` of a data source, every one required.

    Sources:

    * ``.csv`` (a header row naming the columns; every value a string) and ``.jsonl`` / ``.json`` (one JSON
      object per line, blank lines skipped): read by the small readers here, which need no extra package and
      name the file and line of any problem. (``datasets``' own readers would infer column types, turning the
      label rules of :func:`load_text_file` into pandas' guesses, and report problems without the line.)
    * ``.parquet``: ``datasets.load_dataset("parquet", data_files=...)``, which keeps the ``ClassLabel`` names
      that ``datasets`` stores in the file.
    * A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``: ``datasets.load_from_disk``.
    * A ``datasets.Dataset`` or ``DatasetDict`` (duck-typed: ``column_names`` and ``dataset[column]``; a
      ``DatasetDict`` is a mapping of such).

    Args:
        source: A path (str or ``os.PathLike``) or a ``datasets`` object.
        columns: The column names to read.
        split: For a ``DatasetDict``: the split to read (default: ``"train"``, or its only split). Must be None
            for a source with one table.

    Returns:
        A :class:`Table`, its rows in source order.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        ImportError: Parquet or a ``save_to_disk`` folder without the ``datasets`` package.
        TypeError: ``source`` is neither a path nor a ``datasets`` object.
        ValueError: An unknown extension, a folder that ``save_to_disk`` did not write, an unknown split, a
            missing column, malformed CSV/JSON, text that is not UTF-8, or no rows; naming the file and line or
            row.
    """
    name, obj = _open(source)
    if isinstance(obj, Path):
        if split is not None:
            raise ValueError(f"split={split!r} given, but {name} is a single table, not a DatasetDict")
        table = _read_lines(obj, list(columns))
    else:
        if _is_dataset_dict(obj):
            splits = list(obj)
            split = pick_train_split(splits, name) if split is None else split
            if split not in splits:
                raise ValueError(f"{name or 'the DatasetDict'} has no split {split!r}; splits found: {splits}")
            name, obj = f"{name} [split {split!r}]" if name else f"split {split!r}", obj[split]
        elif split is not None:
            raise ValueError(f"split={split!r} given, but {name or 'the dataset'} is a single table, not a "
                             f"DatasetDict")
        table = _table_from_hf(obj, list(columns), name)
    if len(table) == 0:
        raise ValueError(f"{table.name or 'the dataset'}: no examples found")
    return table


def dataset_splits(source: Any) -> list[str] | None:
    """The split names of a ``DatasetDict`` source (object or ``save_to_disk`` folder); None for one table."""
    _, obj = _open(source)
    return list(obj) if not isinstance(obj, Path) and _is_dataset_dict(obj) else None


def pick_train_split(splits: Sequence[str], name: str = "") -> str:
    """The split a ``DatasetDict`` trains on: ``"train"``, else its only split."""
    if "train" in splits:
        return "train"
    if len(splits) == 1:
        return splits[0]
    raise ValueError(f"{name or 'the DatasetDict'} has splits {list(splits)} and none is named 'train'; "
                     f"pass a single split (e.g. dataset_dict['{splits[0]}'])")


def pick_test_split(splits: Sequence[str], train: str | None = None) -> str | None:
    """The split a ``DatasetDict`` tests on: ``"test"``, else ``"validation"``, else None (none besides
    ``train``)."""
    for s in ("test", "validation"):
        if s in splits and s != train:
            return s
    return None


Source = tuple[Any, "str | None"]  # a source and the split to read from it (None: it has one table)


def train_test_sources(data: Any, test_data: Any = None) -> tuple[Source, Source | None]:
    """Where the training and test sets of a run come from: ``((source, split), (source, split) or None)``.

    The training set is ``data`` (its ``"train"`` split, or only split, if it is a ``DatasetDict``). The test set
    is ``test_data`` when given (its ``"test"``, else ``"validation"``, else only split); else ``data``'s
    ``"test"`` or ``"validation"`` split if it has one; else None (hold out part of the training set).
    """
    splits = dataset_splits(data)
    train = (data, pick_train_split(splits, _shown_source(data)) if splits else None)
    if test_data is not None:
        tsplits = dataset_splits(test_data)
        if not tsplits:
            return train, (test_data, None)
        ts = pick_test_split(tsplits) or (tsplits[0] if len(tsplits) == 1 else None)
        if ts is None:
            raise ValueError(f"{_shown_source(test_data) or 'test_data'} has splits {tsplits} and none is named "
                             f"'test' or 'validation'; pass a single split")
        return train, (test_data, ts)
    ts = pick_test_split(splits, train[1]) if splits else None
    return train, (None if ts is None else (data, ts))


def _shown_source(source: Any) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else ""


def _is_dataset_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(hasattr(v, "column_names") for v in obj.values()))


def _datasets(what: str) -> Any:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(f"reading {what} needs the datasets package: pip install datasets") from e
    return datasets


def _open(source: Any) -> tuple[str, Any]:
    """``(name, handle)``: a Path for the line-based files, else a ``datasets`` object."""
    if not isinstance(source, (str, os.PathLike)):
        if hasattr(source, "column_names") or _is_dataset_dict(source):
            return "", source
        raise TypeError(
            f"data must be a file path or a datasets.Dataset / DatasetDict (with column_names), got "
            f"{type(source).__name__}"
        )
    path = Path(source)
    if path.is_dir():
        ds_mod = _datasets(f"the dataset folder {str(path)!r}")
        if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            raise ValueError(
                f"folder {str(path)!r} is not a dataset written by Dataset.save_to_disk or DatasetDict.save_to_disk "
                f"(no state.json or dataset_dict.json); data files must end in {', '.join(FILE_TYPES)}"
            )
        return str(path), ds_mod.load_from_disk(str(path))
    ext = path.suffix.lower()
    if ext not in FILE_TYPES:
        raise ValueError(
            f"unsupported file extension {path.suffix!r} for {str(path)!r}: expected .csv, .jsonl, .json or "
            f".parquet, or a folder written by datasets' save_to_disk"
        )
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} not found")
    if ext == ".parquet":
        ds_mod = _datasets(f"the Parquet file {str(path)!r}")
        try:
            return str(path), ds_mod.load_dataset("parquet", data_files=str(path), split="train")
        except Exception as e:  # arrow's own error types; the message says what was wrong
            raise ValueError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from e
    return str(path), path


def _table_from_hf(ds: Any, columns: list[str], name: str) -> Table:
    found = getattr(ds, "column_names", None)
    if found is None:
        raise TypeError(
            f"dataset must look like a datasets.Dataset (with column_names), got {type(ds).__name__}; "
            f"for a DatasetDict pick a split, e.g. dataset['train']"
        )
    found = list(found)
    for col in columns:
        if col not in found:
            raise ValueError(f"column {col!r} not found in {name or 'the dataset'}; columns found: {found}")
    values = {col: list(ds[col]) for col in columns}
    sizes = {col: len(v) for col, v in values.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"columns of {name or 'the dataset'} differ in length: {sizes}")
    return Table(name, values, None, getattr(ds, "features", None))


def _read_lines(path: Path, columns: list[str]) -> Table:
    try:
        if path.suffix.lower() == ".csv":
            return _read_csv(path, columns)
        return _read_jsonl(path, columns)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text ({_first_bad_line(path)}); save the file as UTF-8") from None


def _first_bad_line(path: Path) -> str:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return f"line {lineno}, byte {e.start + 1} of that line is {line[e.start:e.start + 1]!r}"
    return "an invalid byte sequence"  # pragma: no cover - a sequence split across lines


def _read_csv(path: Path, columns: list[str]) -> Table:
    values: dict[str, list] = {c: [] for c in columns}
    lines: list[int] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty CSV file, expected a header row naming the columns")
        header = [h.strip() for h in header]
        for col in columns:
            if col not in header:
                raise ValueError(f"{path}: column {col!r} not found in the CSV header; columns found: {header}")
        at = [header.index(c) for c in columns]
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) <= max(at):
                raise ValueError(
                    f"{path}:{reader.line_num}: row has {len(row)} fields, expected {len(header)} (columns {header})"
                )
            for c, i in zip(columns, at):
                values[c].append(row[i])
            lines.append(reader.line_num)
    return Table(str(path), values, lines, None, all_strings=True)


def _read_jsonl(path: Path, columns: list[str]) -> Table:
    values: dict[str, list] = {c: [] for c in columns}
    lines: list[int] = []
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
            for c in columns:
                if c not in obj:
                    raise ValueError(f"{path}:{lineno}: column {c!r} not found; columns found: {sorted(obj)}")
                values[c].append(obj[c])
            lines.append(lineno)
    return Table(str(path), values, lines)


# ------------------------------------------------------------------------------------------------ labelled texts


def load_text_file(
    path: Any,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    split: str | None = None,
) -> TextDataset:
    """Load a labelled text classification set from a file, a ``save_to_disk`` folder or a ``datasets`` object.

    Any source of :func:`load_table`: ``.csv`` (header row), ``.jsonl`` / ``.json`` (one JSON object per line),
    ``.parquet`` and ``save_to_disk`` folders (these two need ``datasets``). Labels may be strings or ints (in
    CSV, integer literals count as ints). With ``label_names``, string labels map through it and int labels
    must index into it; without, the names of a ``ClassLabel`` label column are used, else string labels map
    to their sorted unique names and int labels keep their values, with names ``str(i) for i in range(max +
    1)``.

    Args:
        path: The file or folder (its extension selects the format), or a ``datasets`` object.
        text_column: Name of the column / key holding the text.
        label_column: Name of the column / key holding the label.
        label_names: Optional class names; the index is the label.
        split: For a ``DatasetDict``: the split (default ``"train"``, or its only split).

    Returns:
        A :class:`TextDataset` in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImportError: Parquet or a ``save_to_disk`` folder without ``datasets``.
        ValueError: Unknown extension, a missing column, an empty text, an unknown or out-of-range label,
            invalid JSON, or no examples; the message names the file and line (or row).
    """
    table = load_table(path, [text_column, label_column], split=split)
    texts = [check_text(v, table.where(i), text_column) for i, v in enumerate(table.columns[text_column])]
    raw = table.columns[label_column]
    if table.all_strings:  # CSV: a label is its cell without surrounding blanks, and must not be blank
        raw = [v.strip() for v in raw]
        for i, v in enumerate(raw):
            if not v:
                raise ValueError(f"{table.where(i)}: empty label in column {label_column!r}")
    if label_names is None and table.features is not None:
        try:
            feature = table.features[label_column]
        except (KeyError, TypeError, IndexError):
            feature = None
        names = getattr(feature, "names", None)  # a datasets.ClassLabel
        if names is not None:
            label_names = list(names)
    labels, names = resolve_labels(raw, table.where, label_names, numeric_strings=table.all_strings)
    return TextDataset(texts, torch.tensor(labels, dtype=torch.int64), names)


def from_hf(
    dataset: Any,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    split: str | None = None,
) -> TextDataset:
    """Convert a Hugging Face ``datasets.Dataset`` or ``DatasetDict`` (duck-typed; ``datasets`` is not imported).

    The same as :func:`load_text_file`, named for in-memory datasets: columns are read as ``dataset[column]``
    and their names from ``dataset.column_names``; label names come from ``label_names`` when given, else from
    ``dataset.features[label_column].names`` when the label column is a ``ClassLabel``, else by the rules of
    :func:`load_text_file`. Messages name rows by their index, ``row i``.

    Args:
        dataset: An object with ``column_names`` and ``__getitem__(column) -> list`` (and optionally
            ``features``), or a mapping of split names to such (a ``DatasetDict``).
        text_column: Name of the text column.
        label_column: Name of the label column.
        label_names: Optional class names; the index is the label.
        split: For a ``DatasetDict``: the split (default ``"train"``, or its only split).

    Returns:
        A :class:`TextDataset` in dataset order.

    Raises:
        TypeError: ``dataset`` has no ``column_names``.
        ValueError: A missing column, an empty text, an unknown or out-of-range label (e.g. the ``-1`` of an
            unlabelled split), or no rows; the message names the row.
    """
    return load_text_file(dataset, text_column=text_column, label_column=label_column, label_names=label_names,
                          split=split)


def load_classification(
    data: Any,
    test_data: Any = None,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
) -> tuple[TextDataset, TextDataset | None]:
    """The training set and, where the sources give one, the test set of a classification run.

    Which split is which: :func:`train_test_sources` (``data``'s ``"train"`` split; ``test_data``, else
    ``data``'s ``"test"`` or ``"validation"`` split). The test set is read with the training set's label names,
    so that a label means the same class in both.

    Args:
        data: Any source of :func:`load_table` (a path or a ``datasets`` object).
        test_data: Optional test source, likewise.
        text_column, label_column, label_names: As for :func:`load_text_file`.

    Returns:
        ``(train, test)``; ``test`` is None when no source gives one (then hold out part of ``train``, e.g. with
        :func:`~decaf_lora.partitions.train_test_split`).
    """
    (src, split), test_src = train_test_sources(data, test_data)
    train = load_text_file(src, text_column=text_column, label_column=label_column, label_names=label_names,
                           split=split)
    if test_src is None:
        return train, None
    test = load_text_file(test_src[0], text_column=text_column, label_column=label_column,
                          label_names=train.label_names, split=test_src[1])
    return train, test
