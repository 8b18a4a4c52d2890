"""Data for decentralized LoRA fine-tuning of a text classifier: the public names, gathered from the modules
that do each job.

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

Where each lives: :class:`TextDataset` in :mod:`decaf_lora.texts`; the loaders in :mod:`decaf_lora.sources`;
splits and partitions in :mod:`decaf_lora.partitions`; :class:`TokenizedDataset` and :class:`AgentSampler` in
:mod:`decaf_lora.batches`.
"""

from __future__ import annotations

from .batches import AgentSampler, TokenizedDataset
from .names import DEFAULT_WORDNET_NOUNS, PARTITIONS
from .partitions import balanced_split, partition, partition_summary, train_test_split
from .sources import NOUN_SUPERSENSES, from_hf, load_text_file, load_wordnet_supersenses
from .texts import TextDataset

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
