"""What every algorithm of a comparison shares: the data, its partition, the tokenizer and the graph."""

from __future__ import annotations

import hashlib
from typing import Callable, Optional

import torch

from . import data as D
from .config import TrainConfig
from .graphs import Topology
from .models import load_tokenizer
from .names import DATA_BUILTIN

__all__ = ["Experiment"]


class Experiment:
    """What every algorithm of a comparison shares: the data, its partition, the tokenizer and the graph.

    The data come from ``config.data`` (the built-in task or a CSV/JSONL file), or from ``train`` and ``test``
    :class:`~decaf_lora.data.TextDataset` objects (e.g. ``decaf_lora.data.from_hf(hf_dataset)``).

    Raises (before any training): FileNotFoundError for missing data or model files, ValueError for a graph that
    is not connected, a partition that leaves an agent without data, and the like.
    """

    def __init__(self, config: TrainConfig, *, train: Optional[D.TextDataset] = None,
                 test: Optional[D.TextDataset] = None, log: Callable[[str], None] = print):
        self.config = c = config
        if (train is None) != (test is None):
            raise ValueError("pass both train and test datasets, or neither (then config.data is read)")
        if train is not None:
            if train.label_names != test.label_names:
                raise ValueError(f"train and test have different label names: {train.label_names[:5]}... vs "
                                 f"{test.label_names[:5]}...")
            self.train, self.test = train, test
            source = f"given datasets: {train.num_classes} classes"
        elif c.data == DATA_BUILTIN:
            full = D.load_wordnet_supersenses(c.wordnet_path)
            self.train, self.test = D.balanced_split(full, c.train_size, c.test_size, seed=c.seed)
            source = f"WordNet noun supersenses ({c.wordnet_path}): {len(full)} synsets, {full.num_classes} classes"
        else:
            full = D.load_text_file(c.data, text_column=c.text_column, label_column=c.label_column)
            if c.test_data:
                self.train = full
                self.test = D.load_text_file(c.test_data, text_column=c.text_column, label_column=c.label_column,
                                             label_names=full.label_names)
            else:
                self.train, self.test = D.train_test_split(full, c.test_fraction, seed=c.seed)
            source = f"{c.data}: {len(full)} examples, {full.num_classes} classes"
        self.label_names = list(self.train.label_names)
        self.topology = Topology.build(c.graph, c.agents, weights=c.weights, time_varying=c.time_varying, p=c.er_p,
                                       seed=c.seed, adjacency_source=c.adjacency)
        self.parts = D.partition(self.train.labels, c.agents, c.partition, alpha=c.dirichlet_alpha,
                                 shards_per_agent=c.shards_per_agent, seed=c.seed)
        self.tokenizer = load_tokenizer(c.model)
        self.train_tok = D.TokenizedDataset(self.train, self.tokenizer, max_length=c.max_length)
        self.test_tok = D.TokenizedDataset(self.test, self.tokenizer, max_length=c.max_length)
        # evaluation batches of similar lengths pad less
        order = torch.argsort(self.test_tok.lengths, stable=True)
        self.test_batches = list(torch.split(order, c.eval_batch_size))
        self.partition_summary = D.partition_summary(self.train.labels, self.parts, self.train.num_classes)
        topo = self.topology.describe()
        sizes = self.partition_summary["sizes"]
        log(f"data: {source}; train {len(self.train)}, test {len(self.test)}; {c.partition} partition over "
            f"{c.agents} agents (sizes {min(sizes)}-{max(sizes)}, classes per agent "
            f"{min(self.partition_summary['classes_per_agent'])}-{max(self.partition_summary['classes_per_agent'])})")
        log(f"graph: {topo['name']} with {topo['edges']} edges, {c.weights} weights, spectral gap "
            f"{topo['spectral_gap']:.4f}" + (f", time-varying {c.time_varying}" if c.time_varying else ""))

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
