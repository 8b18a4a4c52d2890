"""Causal-language-model data: plain texts (next-token loss on all of each text) or prompt/completion pairs (loss
on the completion only), read from the sources of :mod:`decaf_lora.sources`, and their tokenized, padded form.

:class:`LMDataset` holds the examples; :func:`load_lm_data` and :func:`load_causal_lm` read them;
:class:`LMTokenized` tokenizes them once and serves ``{input_ids, attention_mask, labels}`` batches in the
Hugging Face convention (labels aligned with the inputs, ``-100`` where nothing is learned; the model shifts);
:func:`lm_accuracy` scores teacher-forced predictions against such labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._checks import check_int
from .batches import check_rows, collate, length_mask, pad_rows, pad_token_id
from .sources import load_table, train_test_sources
from .texts import as_index_tensor

__all__ = ["IGNORE_INDEX", "LMDataset", "LMTokenized", "encode_prompts", "lm_accuracy", "load_causal_lm",
           "load_lm_data"]

IGNORE_INDEX = -100
"""The label of a position that is not learned (prompt, padding): what ``torch.nn.CrossEntropyLoss`` and the
Hugging Face models ignore."""


def _check_strings(values: Any, what: str, where: Any, *, allow_blank: bool) -> list[str]:
    """``values`` as a list of str; ``where(i)`` names example ``i`` in the messages."""
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{what} must be a list of str, got {type(values).__name__}")
    values = list(values)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise TypeError(f"{where(i)}: {what} must be a string, got {type(v).__name__} ({v!r})")
        if not allow_blank and not v.strip():
            raise ValueError(f"{where(i)}: empty {what}: there is nothing to learn")
    return values


class LMDataset:
    """Examples for causal language modelling, in one of two modes.

    * Plain texts (``LMDataset(texts)``): the model learns every token of each text.
    * Prompt/completion pairs (``LMDataset(prompts=..., completions=...)``): the model learns the completion
      given the prompt; the prompt is context only. A prompt may be empty (the completion is then learned
      unconditioned); a completion must not (it is all there is to learn).

    Attributes:
        texts: The texts (plain mode), else None.
        prompts: The prompts (pair mode), else None.
        completions: The completions (pair mode), else None.
        locations: Where each example came from (``"file:line"``, ``"file, row i"``), for messages; or None.
        class_labels: Always None: these examples have no classes (so they can only be partitioned IID).
    """

    class_labels = None

    def __init__(self, texts: Sequence[str] | None = None, *, prompts: Sequence[str] | None = None,
                 completions: Sequence[str] | None = None, locations: Sequence[str] | None = None) -> None:
        if (prompts is None) != (completions is None):
            raise ValueError("prompts and completions go together: give both, or texts alone")
        if (texts is None) == (prompts is None):
            raise ValueError("give either texts (plain mode) or prompts and completions (pair mode)")
        self.locations = None if locations is None else [str(x) for x in locations]
        if texts is not None:
            self.texts = _check_strings(texts, "text", self.where, allow_blank=False)
            self.prompts = self.completions = None
            n = len(self.texts)
        else:
            self.texts = None
            self.prompts = _check_strings(prompts, "prompt", self.where, allow_blank=True)
            self.completions = _check_strings(completions, "completion", self.where, allow_blank=False)
            n = len(self.prompts)
            if len(self.completions) != n:
                raise ValueError(f"prompts and completions must have the same length, got {n} prompts and "
                                 f"{len(self.completions)} completions")
        if self.locations is not None and len(self.locations) != n:
            raise ValueError(f"locations must have one entry per example, got {len(self.locations)} for {n}")

    def __len__(self) -> int:
        return len(self.texts if self.texts is not None else self.prompts)

    def __repr__(self) -> str:
        return f"LMDataset(n={len(self)}, mode={'pairs' if self.has_prompts else 'texts'})"

    @property
    def has_prompts(self) -> bool:
        """Whether the examples are prompt/completion pairs."""
        return self.prompts is not None

    def where(self, i: int) -> str:
        """Example ``i`` as messages name it: its location, else ``example i``."""
        if self.locations is not None and 0 <= i < len(self.locations):
            return self.locations[i]
        return f"example {i}"

    def subset(self, indices: Any) -> LMDataset:
        """The examples at ``indices`` (1-D integer tensor or sequence of positions), in that order."""
        idx = as_index_tensor("indices", indices).tolist()
        bad = [i for i in idx if not 0 <= i < len(self)]
        if bad:
            raise ValueError(f"indices must be in [0, {len(self)}), got index {bad[0]}")

        def pick(xs: list | None) -> list | None:
            return None if xs is None else [xs[i] for i in idx]

        if self.texts is not None:
            return LMDataset(pick(self.texts), locations=pick(self.locations))
        return LMDataset(prompts=pick(self.prompts), completions=pick(self.completions),
                         locations=pick(self.locations))


# ------------------------------------------------------------------------------------------------ loaders


def load_lm_data(source: Any, *, text_column: str = "text", prompt_column: str | None = None,
                 completion_column: str | None = None, split: str | None = None) -> LMDataset:
    """Read causal-LM examples from any source of :func:`~decaf_lora.sources.load_table`.

    Args:
        source: A ``.csv`` / ``.jsonl`` / ``.json`` / ``.parquet`` file, a ``save_to_disk`` folder, or a
            ``datasets.Dataset`` / ``DatasetDict``.
        text_column: The column of plain texts (used when no prompt/completion columns are given).
        prompt_column: The column of prompts (pair mode, with ``completion_column``).
        completion_column: The column of completions.
        split: For a ``DatasetDict``: the split (default ``"train"``, or its only split).

    Returns:
        An :class:`LMDataset` in source order, each example's location kept for messages.

    Raises:
        ValueError: Only one of ``prompt_column`` / ``completion_column``, a missing column, an empty text or
            completion, or the errors of ``load_table``; naming the file and line (or row).
        TypeError: A value that is not a string (e.g. a number or a null), naming the row and column.
    """
    if (prompt_column is None) != (completion_column is None):
        raise ValueError("prompt_column and completion_column go together: give both (prompt/completion pairs) "
                         "or neither (plain texts in text_column)")
    pairs = prompt_column is not None
    columns = [prompt_column, completion_column] if pairs else [text_column]
    table = load_table(source, columns, split=split)
    locations = [table.where(i) for i in range(len(table))]

    def where(i: int) -> str:
        return locations[i]

    if not pairs:
        texts = _check_strings(table.columns[text_column], f"text in column {text_column!r}", where,
                               allow_blank=False)
        return LMDataset(texts, locations=locations)
    prompts = _check_strings(table.columns[prompt_column], f"prompt in column {prompt_column!r}", where,
                             allow_blank=True)
    completions = _check_strings(table.columns[completion_column], f"completion in column {completion_column!r}",
                                 where, allow_blank=False)
    return LMDataset(prompts=prompts, completions=completions, locations=locations)


def load_causal_lm(data: Any, test_data: Any = None, *, text_column: str = "text", prompt_column: str | None = None,
                   completion_column: str | None = None) -> tuple[LMDataset, LMDataset | None]:
    """The training set and, where the sources give one, the test set of a causal-LM run.

    Which split is which: :func:`~decaf_lora.sources.train_test_sources` (``data``'s ``"train"`` split;
    ``test_data``, else ``data``'s ``"test"`` or ``"validation"`` split).

    Returns:
        ``(train, test)``; ``test`` is None when no source gives one (then hold out part of ``train`` with
        :func:`~decaf_lora.partitions.train_test_split`, which splits unlabelled data by a seeded permutation).
    """
    (src, split), test_src = train_test_sources(data, test_data)
    cols = dict(text_column=text_column, prompt_column=prompt_column, completion_column=completion_column)
    train = load_lm_data(src, split=split, **cols)
    test = None if test_src is None else load_lm_data(test_src[0], split=test_src[1], **cols)
    return train, test


# ------------------------------------------------------------------------------------------------ tokens


def _special_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before a text's tokens when it adds special tokens (BOS, BERT's CLS).

    Found by tokenizing a probe with and without special tokens and locating the bare tokens in the full ones;
    what comes after them (BERT's SEP, an EOS some tokenizers add) is not used: :class:`LMTokenized` appends the
    eos itself.
    """
    bare = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    if bare:
        for s in range(len(full) - len(bare) + 1):
            if full[s:s + len(bare)] == bare:
                return full[:s]
    bos = getattr(tokenizer, "bos_token_id", None)  # the probe vanished: keep a leading BOS, if any
    return [bos] if full and bos is not None and full[0] == bos else []


class LMTokenized:
    """An :class:`LMDataset` tokenized once, serving dynamically padded causal-LM batches.

    Each example becomes ``prefix + prompt + completion + [eos]``:

    * ``prefix``: the special tokens the tokenizer puts at the start of a text (a BOS, BERT's CLS; none for
      GPT-2); the tokenizer's end tokens (BERT's SEP) are not added.
    * prompt and completion are tokenized separately, without special tokens, so the boundary between them is
      exact (put any separator, e.g. a space, in the prompt or the completion as the model expects). In plain
      mode the text takes the completion's place and the prompt is empty.
    * ``eos``: the tokenizer's ``eos_token_id``, when it has one, so that generation learns to stop.

    Labels equal ``input_ids`` on the completion (and its eos) and are ``IGNORE_INDEX`` (-100) on the prefix, the
    prompt and the padding; position 0 is never predicted (the model predicts token t+1 from tokens up to t) and
    is always -100, so ``labels != -100`` marks exactly the tokens that enter the loss.

    Truncation keeps the first ``max_length`` tokens (cutting the completion's end, then the eos, first). An
    example left with no label token (its prompt and prefix fill ``max_length``) is an error naming it, rather
    than dropped: dropping would silently change the data every algorithm trains on.

    Rows are padded on the right whatever the tokenizer's ``padding_side``: for training, right padding keeps
    every real token at the position it has unpadded (models that derive positions from the attention mask are
    unaffected; others would shift left-padded rows). Left padding matters only for batched generation, which
    this class does not serve. The padding id is the tokenizer's pad token, else its eos, else 0 (masked out
    everywhere; the tokenizer is not changed).

    Attributes:
        input_ids: int64 ``(n, T)``, right-padded to the longest row.
        attention_mask: int64 ``(n, T)``.
        labels: int64 ``(n, T)``, ``-100`` where nothing is learned.
        lengths: int64 ``(n,)``, real tokens per row.
        target_lengths: int64 ``(n,)``, label tokens per row (>= 1).
        num_tokens: Label tokens in all, for averaging a loss over tokens.
        num_truncated: Rows cut by ``max_length``.
        pad_token_id: The id in the padding positions.
        class_labels: None (no classes; see :func:`~decaf_lora.partitions.partition`).
    """

    class_labels = None

    def __init__(self, ds: LMDataset, tokenizer: Any, *, max_length: int = 128) -> None:
        """Tokenize every example of ``ds``.

        Args:
            ds: The examples.
            tokenizer: A Hugging Face tokenizer (called on lists of strings with ``add_special_tokens``); it
                need not have a pad token, and is not changed.
            max_length: Longest row kept, in tokens (special tokens included), >= 2.

        Raises:
            ValueError: An example with no label token left after truncation (naming it, with the
                ``max_length`` that would keep one), or a completion that tokenizes to nothing.
        """
        if not isinstance(ds, LMDataset):
            raise TypeError(f"ds must be an LMDataset, got {type(ds).__name__}")
        self.max_length = check_int("max_length", max_length, 2, what=" (one token to read, one to predict)")
        if len(ds) == 0:
            raise ValueError("ds is empty: nothing to tokenize")
        if not callable(tokenizer):
            raise TypeError(f"tokenizer must be a callable Hugging Face tokenizer, got {type(tokenizer).__name__}")
        prefix = _special_prefix(tokenizer)
        eos = getattr(tokenizer, "eos_token_id", None)
        end = [] if eos is None else [int(eos)]
        targets = ds.completions if ds.has_prompts else ds.texts
        # verbose=False: texts longer than the model's limit are expected here; they are truncated below
        target_ids = tokenizer(list(targets), add_special_tokens=False, verbose=False)["input_ids"]
        prompt_ids = (tokenizer(list(ds.prompts), add_special_tokens=False, verbose=False)["input_ids"]
                      if ds.has_prompts else [[]] * len(ds))
        rows, labels, short = [], [], []
        self.num_truncated = 0
        for i, (p, c) in enumerate(zip(prompt_ids, target_ids)):
            if not c and not end:
                raise ValueError(f"{ds.where(i)}: the {'completion' if ds.has_prompts else 'text'} "
                                 f"{targets[i]!r} tokenizes to no tokens, and the tokenizer has no eos token")
            head = prefix + list(p)
            tail = list(c) + end
            ids = (head + tail)[: self.max_length]
            lab = ([IGNORE_INDEX] * len(head) + tail)[: self.max_length]
            lab[0] = IGNORE_INDEX
            self.num_truncated += len(head) + len(tail) > self.max_length
            if all(x == IGNORE_INDEX for x in lab):
                short.append((i, len(head)))
            rows.append(ids)
            labels.append(lab)
        if short:
            self._refuse(ds, short)
        self.pad_token_id = pad_token_id(tokenizer)
        self.has_prompts = ds.has_prompts
        self.lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
        self.input_ids = pad_rows(rows, self.pad_token_id)
        self.attention_mask = length_mask(self.lengths, self.input_ids.shape[1])
        self.labels = pad_rows(labels, IGNORE_INDEX)
        self.target_lengths = (self.labels != IGNORE_INDEX).sum(dim=1)
        self.num_tokens = int(self.target_lengths.sum())

    def _refuse(self, ds: LMDataset, short: list[tuple[int, int]]) -> None:
        need = max(max(h for _, h in short) + 1, 2)
        shown = "; ".join(f"{ds.where(i)} (prefix and prompt: {h} tokens)" for i, h in short[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        raise ValueError(
            f"{len(short)} example(s) have no token left to learn within max_length={self.max_length}: "
            f"{shown}{more}; use max_length >= {need} or shorten those prompts"
        )

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batch(self, indices: Any, device: Any = None, collator: Any = None) -> dict[str, torch.Tensor]:
        """The rows at ``indices``, trimmed to their longest row (dynamic padding, on the right).

        Args:
            indices: 1-D integer tensor or sequence of row positions, non-empty.
            device: Optional device to move the tensors to.
            collator: Optional callable on a list of per-example features (``input_ids``, ``attention_mask`` and
                ``labels``, lists of ints without padding), e.g. ``transformers.DataCollatorForSeq2Seq(tokenizer)``,
                which pads the labels with -100 (``DataCollatorWithPadding`` cannot pad lists of labels). Its
                result is returned, padded as it pads (on the tokenizer's ``padding_side``, with the tokenizer's
                pad token, which it then needs).

        Returns:
            ``{"input_ids", "attention_mask", "labels"}``, int64 ``(b, t)`` with ``t`` the longest row among them.
        """
        idx = check_rows(indices, len(self))
        if collator is not None:
            features = []
            for i in idx.tolist():
                n = int(self.lengths[i])
                features.append({"input_ids": self.input_ids[i, :n].tolist(), "attention_mask": [1] * n,
                                 "labels": self.labels[i, :n].tolist()})
            return collate(collator, features, device)
        t = int(self.lengths[idx].max())
        out = {k: getattr(self, k)[idx, :t].contiguous() for k in ("input_ids", "attention_mask", "labels")}
        if device is not None:
            out = {k: v.to(device) for k, v in out.items()}
        return out


def encode_prompts(tokenizer: Any, prompts: Sequence[str], max_length: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts encoded for batched generation as :class:`LMTokenized` encodes them for training: the tokenizer's
    special prefix (a BOS) then the prompt's tokens, no end token; padded on the left, so that every row's next
    token is generated at the same position.

    Args:
        tokenizer: The tokenizer of training (it need not have a pad token; it is not changed).
        prompts: The prompts (a prompt/completion model's prompts, or a plain-text model's opening text).
        max_length: Longest row in tokens; a longer prompt keeps its end (the tokens next to what is generated).

    Returns:
        ``(input_ids, attention_mask)``, int64 ``(len(prompts), longest)``.
    """
    prompts = _check_strings(prompts, "prompt", lambda i: f"prompt {i}", allow_blank=True)
    if not prompts:
        raise ValueError("prompts is empty: nothing to encode")
    prefix = _special_prefix(tokenizer)
    keep = None if max_length is None else check_int("max_length", max_length, len(prefix) + 1) - len(prefix)
    ids = tokenizer(list(prompts), add_special_tokens=False, verbose=False)["input_ids"]
    rows = [prefix + (list(r)[-keep:] if keep is not None else list(r)) for r in ids]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    if int(lengths.min()) == 0:
        raise ValueError(f"prompt {int(lengths.argmin())} is empty and the tokenizer puts no token before a text: "
                         "there is nothing to generate from")
    input_ids = pad_rows(rows, pad_token_id(tokenizer), left=True)
    return input_ids, length_mask(lengths, input_ids.shape[1], left=True)


def lm_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Teacher-forced accuracy of a causal LM's logits against labels in the Hugging Face convention.

    Position t's logits predict token t + 1, so ``logits[:, :-1]`` is compared with ``labels[:, 1:]`` where the
    labels are not -100.

    Args:
        logits: ``(b, t, vocab)``.
        labels: int ``(b, t)``, as :meth:`LMTokenized.batch` gives them.

    Returns:
        ``{"correct": (b,), "tokens": (b,), "exact": (b,) bool}``: per row, the label tokens predicted right
        (argmax), the label tokens, and whether all were right (every completion token: an exact match).
    """
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(f"logits must be (b, t, vocab) and labels (b, t), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    correct = ((logits[:, :-1].argmax(dim=-1) == target) & mask).sum(dim=1)
    tokens = mask.sum(dim=1)
    return {"correct": correct, "tokens": tokens, "exact": correct == tokens}
