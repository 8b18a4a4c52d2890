"""What every algorithm of a comparison shares: the data, its partition, the tokenizer and the graph."""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import torch

from . import data as D
from .config import TrainConfig
from .graphs import Topology
from .models import load_tokenizer
from .names import DATA_BUILTIN

__all__ = ["Experiment"]


def _is_hf(obj: Any) -> bool:
    """A ``datasets.Dataset`` or ``DatasetDict`` (duck-typed: ``datasets`` need not be installed)."""
    return hasattr(obj, "column_names")


class Experiment:
    """What every algorithm of a comparison shares: the data, its partition, the tokenizer and the graph.

    The data come from ``config.data`` (the built-in task; a CSV/JSONL/Parquet file or a ``save_to_disk``
    folder, with ``config.test_data`` or a held-out ``test_fraction``), or from ``train`` (and optionally
    ``test``): :class:`~decaf_lora.data.TextDataset` (classification) or :class:`~decaf_lora.data.LMDataset`
    (``task="causal_lm"``) objects, or Hugging Face ``datasets.Dataset`` / ``DatasetDict`` objects, read with
    the config's column names. Without ``test``, a ``DatasetDict``'s test (or validation) split is the test set,
    else ``test_fraction`` of ``train`` is held out.

    The graph is ``config.graph`` (with ``config.weights``), or ``graph``: a networkx graph (agent ``i`` is its
    ``i``-th node in sorted order; ``config.weights`` makes W, as for a built-in graph) or a
    :class:`~decaf_lora.topology.Topology`; it must have ``config.agents`` nodes.

    Raises (before any training): FileNotFoundError for missing data or model files, TypeError for datasets that
    do not fit the task, ValueError for a graph that is not connected, a partition that leaves an agent without
    data, and the like.
    """

    def __init__(self, config: TrainConfig, *, train: Any = None, test: Any = None, graph: Any = None,
                 log: Callable[[str], None] = print):
        self.config = c = config
        self.lm = c.task == "causal_lm"
        self.train, self.test, source = self._load(c, train, test)
        self.label_names = None if self.lm else list(self.train.label_names)
        if isinstance(graph, Topology):
            if graph.n != c.agents:
                raise ValueError(f"graph has {graph.n} agents, config.agents is {c.agents}")
            self.topology = graph
        else:
            self.topology = Topology.build(c.graph if graph is None else graph, c.agents, weights=c.weights,
                                           time_varying=c.time_varying, p=c.er_p, seed=c.seed,
                                           adjacency_source=c.adjacency)
        labels = None if self.lm else self.train.labels
        self.parts = D.partition(labels, c.agents, c.partition, n=len(self.train), alpha=c.dirichlet_alpha,
                                 shards_per_agent=c.shards_per_agent, seed=c.seed)
        self.tokenizer = load_tokenizer(c.model)
        if self.lm:
            self.train_tok = D.LMTokenized(self.train, self.tokenizer, max_length=c.max_length)
            self.test_tok = D.LMTokenized(self.test, self.tokenizer, max_length=c.max_length)
        else:
            self.train_tok = D.TokenizedDataset(self.train, self.tokenizer, max_length=c.max_length)
            self.test_tok = D.TokenizedDataset(self.test, self.tokenizer, max_length=c.max_length)
        # evaluation batches of similar lengths pad less
        order = torch.argsort(self.test_tok.lengths, stable=True)
        self.test_batches = list(torch.split(order, c.eval_batch_size))
        self.partition_summary = D.partition_summary(labels, self.parts,
                                                     None if self.lm else self.train.num_classes)
        topo = self.topology.describe()
        sizes = self.partition_summary["sizes"]
        per_agent = "" if self.lm else (
            f", classes per agent {min(self.partition_summary['classes_per_agent'])}-"
            f"{max(self.partition_summary['classes_per_agent'])}")
        log(f"data: {source}; train {len(self.train)}, test {len(self.test)}; {c.partition} partition over "
            f"{c.agents} agents (sizes {min(sizes)}-{max(sizes)}{per_agent})")
        if self.lm and (self.train_tok.num_truncated or self.test_tok.num_truncated):
            log(f"data: {self.train_tok.num_truncated} training and {self.test_tok.num_truncated} test examples "
                f"are longer than max_length={c.max_length} tokens and were cut at the end")
        log(f"graph: {topo['name']} with {topo['edges']} edges, {c.weights} weights, spectral gap "
            f"{topo['spectral_gap']:.4f}" + (f", time-varying {c.time_varying}" if c.time_varying else ""))

    # ------------------------------------------------------------------------------------------------ sources
    def _read(self, source: Any, test_source: Any = None):
        """``(train, test or None)`` from paths or ``datasets`` objects, with the config's columns."""
        c = self.config
        if self.lm:
            return D.load_causal_lm(source, test_source, text_column=c.text_column, prompt_column=c.prompt_column,
                                    completion_column=c.completion_column)
        return D.load_classification(source, test_source, text_column=c.text_column, label_column=c.label_column)

    def _load(self, c: TrainConfig, train: Any, test: Any):
        kind, expected = (D.LMDataset, "LMDataset") if self.lm else (D.TextDataset, "TextDataset")
        if train is None:
            if test is not None:
                raise ValueError("test was given without train: pass train (and optionally test), or neither "
                                 "(then config.data is read)")
            if c.data == DATA_BUILTIN:
                full = D.load_wordnet_supersenses(c.wordnet_path)
                tr, te = D.balanced_split(full, c.train_size, c.test_size, seed=c.seed)
                return tr, te, (f"WordNet noun supersenses ({c.wordnet_path}): {len(full)} synsets, "
                               f"{full.num_classes} classes")
            tr, te = self._read(c.data, c.test_data)
            where = str(c.data)
        else:
            for name, ds in (("train", train), ("test", test)):
                if ds is not None and not (isinstance(ds, kind) or _is_hf(ds)):
                    raise TypeError(f"{name} must be a {expected} (task={c.task!r}) or a datasets.Dataset/"
                                    f"DatasetDict, got {type(ds).__name__}")
            if test is not None and _is_hf(train) != _is_hf(test):
                raise TypeError("train and test must both be datasets objects or both "
                                f"{expected}s, got {type(train).__name__} and {type(test).__name__}")
            if _is_hf(train):
                tr, te = self._read(train, test)
            else:
                tr, te = train, test
            where = "given datasets"
            if not self.lm and te is not None and tr.label_names != te.label_names:
                raise ValueError(f"train and test have different label names: {tr.label_names[:5]}... vs "
                                 f"{te.label_names[:5]}...")
        if te is None:
            tr, te = D.train_test_split(tr, c.test_fraction, seed=c.seed)
            where += f" ({c.test_fraction:g} held out for testing)"
        if self.lm:
            what = "prompt/completion pairs" if tr.has_prompts else "texts"
            return tr, te, f"{where}: {what}"
        return tr, te, f"{where}: {tr.num_classes} classes"

    # ------------------------------------------------------------------------------------------------ records
    def describe(self) -> dict:
        return {"train_size": len(self.train), "test_size": len(self.test), "label_names": self.label_names,
                "partition": self.partition_summary, "topology": self.topology.describe()}

    def fingerprint(self) -> str:
        """A digest of the data as tokenised, the partition and the graph: processes of one run must agree on it."""
        h = hashlib.sha256()
        for t in (self.train_tok.input_ids, self.train_tok.labels, self.test_tok.input_ids, self.test_tok.labels,
                  self.topology.W, *self.parts):
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]
