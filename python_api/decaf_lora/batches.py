"""From a text dataset to training batches: tokenised once, dynamically padded, streamed per agent.

:class:`TokenizedDataset` gathers padded batches from a :class:`~decaf_lora.texts.TextDataset`;
:class:`AgentSampler` draws each agent's minibatches from its own, resumable random stream. The padding helpers
(:func:`pad_token_id`, :func:`pad_rows`, :func:`length_mask`, :func:`collate`) serve :mod:`decaf_lora.lm_data` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._checks import check_int, check_seed
from ._rng import stream_generator
from .texts import TextDataset, as_index_tensor

__all__ = ["AgentSampler", "TokenizedDataset"]


# ------------------------------------------------------------------------------------------------ tokens


def pad_token_id(tokenizer: Any) -> int:
    """The id that fills padding: the tokenizer's pad token, else its eos token, else 0.

    Padding positions are masked out of attention and of the loss, so any id serves; decoder tokenizers (GPT-2,
    Llama) often have no pad token, and borrowing the eos id here leaves the caller's tokenizer unchanged.
    """
    for name in ("pad_token_id", "eos_token_id"):
        tid = getattr(tokenizer, name, None)
        if tid is not None:
            return int(tid)
    return 0


def pad_rows(rows: Sequence[Sequence[int]], fill: int, *, left: bool = False) -> torch.Tensor:
    """int64 ``(len(rows), longest)``: each row padded with ``fill`` on the right (or the left)."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), fill, dtype=torch.int64)
    for i, r in enumerate(rows):
        if len(r):
            cols = slice(width - len(r), width) if left else slice(0, len(r))
            out[i, cols] = torch.as_tensor(list(r), dtype=torch.int64)
    return out


def length_mask(lengths: torch.Tensor, width: int, *, left: bool = False) -> torch.Tensor:
    """int64 ``(len(lengths), width)`` attention mask: 1 on each row's first (or last) ``lengths[i]`` columns."""
    cols = torch.arange(width)
    real = cols >= width - lengths[:, None] if left else cols < lengths[:, None]
    return real.to(torch.int64)


def check_rows(indices: Any, n: int) -> torch.Tensor:
    """``indices`` as a non-empty 1-D int64 tensor of row positions in ``[0, n)``."""
    idx = as_index_tensor("indices", indices)
    if idx.numel() == 0:
        raise ValueError("indices must not be empty")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= n:
        raise ValueError(f"indices must be in [0, {n}), got index {lo if lo < 0 else hi}")
    return idx


def collate(collator: Any, features: list[dict], device: Any) -> dict[str, torch.Tensor]:
    """``collator(features)`` as a dict, its tensors moved to ``device``."""
    if not callable(collator):
        raise TypeError(f"collator must be callable (e.g. transformers.DataCollatorWithPadding), got "
                        f"{type(collator).__name__}")
    out = dict(collator(features))
    if device is not None:
        out = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}
    return out


class TokenizedDataset:
    """A :class:`TextDataset` tokenized once, serving dynamically padded batches.

    Attributes:
        input_ids: int64 ``(n, T)``, padded to the longest (truncated) text on the tokenizer's
            ``padding_side``, with :attr:`pad_token_id`.
        attention_mask: int64 ``(n, T)``.
        labels: int64 ``(n,)``, the class of each text (also as :attr:`class_labels`).
        lengths: int64 ``(n,)``, the number of real tokens of each text.
        label_names: The class names.
        pad_token_id: The id in the padding positions (:func:`pad_token_id`: the tokenizer's pad token, else its
            eos token, else 0); a decoder classifier without a pad token should be given this id as its
            ``config.pad_token_id``, where it looks for each row's last real token.
    """

    def __init__(self, ds: TextDataset, tokenizer: Any, *, max_length: int = 64) -> None:
        """Tokenize every text of ``ds``.

        Args:
            ds: The dataset.
            tokenizer: A Hugging Face tokenizer (callable with ``truncation`` and ``max_length``); it need not
                have a pad token, and is not changed. ``token_type_ids`` are ignored.
            max_length: Longest sequence kept, in tokens (special tokens included), >= 1.
        """
        if not isinstance(ds, TextDataset):
            raise TypeError(f"ds must be a TextDataset, got {type(ds).__name__}")
        max_length = check_int("max_length", max_length, 1)
        if len(ds) == 0:
            raise ValueError("ds is empty: nothing to tokenize")
        if not callable(tokenizer):
            raise TypeError(f"tokenizer must be a callable Hugging Face tokenizer, got {type(tokenizer).__name__}")
        # padded here rather than by the tokenizer, which refuses to pad without a pad token
        rows = tokenizer(list(ds.texts), truncation=True, max_length=max_length)["input_ids"]
        self.left_padded = getattr(tokenizer, "padding_side", "right") == "left"
        self.pad_token_id = pad_token_id(tokenizer)
        self.lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
        self.input_ids = pad_rows(rows, self.pad_token_id, left=self.left_padded)
        self.attention_mask = length_mask(self.lengths, self.input_ids.shape[1], left=self.left_padded)
        self.labels = ds.labels.clone()
        self.label_names = list(ds.label_names)
        self.max_length = max_length

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_classes(self) -> int:
        """The number of classes."""
        return len(self.label_names)

    @property
    def class_labels(self) -> torch.Tensor:
        """The class of each example, for :func:`~decaf_lora.partitions.partition` (None for causal-LM data)."""
        return self.labels

    def batch(self, indices: Any, device: Any = None, collator: Any = None) -> dict[str, torch.Tensor]:
        """The rows at ``indices``, trimmed to their longest sequence (dynamic padding).

        Args:
            indices: 1-D integer tensor or sequence of row positions, non-empty.
            device: Optional device to move the tensors to.
            collator: Optional callable on a list of per-example features (``input_ids`` and ``attention_mask``,
                lists of ints without padding, and ``labels``, an int), e.g.
                ``transformers.DataCollatorWithPadding(tokenizer)``; its result is returned (padded as the
                collator pads) instead of the built-in padding.

        Returns:
            ``{"input_ids": (b, t), "attention_mask": (b, t), "labels": (b,)}``, int64, where ``t`` is the
            largest length among the rows (padding columns beyond it are dropped; on the left for
            left-padding tokenizers).
        """
        idx = check_rows(indices, len(self))
        if collator is not None:
            width = self.input_ids.shape[1]
            features = []
            for i in idx.tolist():
                n = int(self.lengths[i])
                real = slice(width - n, width) if self.left_padded else slice(0, n)
                features.append({"input_ids": self.input_ids[i, real].tolist(), "attention_mask": [1] * n,
                                 "labels": int(self.labels[i])})
            return collate(collator, features, device)
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
        self.parts = [as_index_tensor(f"parts[{a}]", p) for a, p in enumerate(parts)]
        for a, p in enumerate(self.parts):
            if p.numel() == 0:
                raise ValueError(f"parts[{a}] is empty: every agent needs at least one example")
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.seed = check_seed(seed)
        self.length_grouping = check_int("length_grouping", length_grouping, 0)
        self.lengths = None
        if lengths is not None and self.length_grouping > 1:
            self.lengths = torch.as_tensor(lengths).reshape(-1)
            top = max(int(p.max()) for p in self.parts)
            if self.lengths.numel() <= top:
                raise ValueError(f"lengths has {self.lengths.numel()} entries but parts index example {top}")
        self._gens = [stream_generator(self.seed, a) for a in range(len(self.parts))]
        self._perms: list[torch.Tensor | None] = [None] * len(self.parts)
        self._pos = [0] * len(self.parts)
        self._epochs = [0] * len(self.parts)

    @property
    def n_agents(self) -> int:
        """The number of agents."""
        return len(self.parts)

    def _agent(self, agent: Any) -> int:
        agent = check_int("agent", agent)
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
            p = as_index_tensor(f"state['permutations'][{a}]", p)
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
