"""Data for decentralized LoRA fine-tuning: the public names, gathered from the modules that do each job.

This module provides everything between a data source and the per-agent minibatches of a training run:

* :func:`load_wordnet_supersenses`: the built-in task, WordNet 3.0 noun supersense classification (the
  definition of every noun synset, labelled with its lexicographer file: 26 classes);
* :func:`load_classification` (a run's train and test sets), :func:`load_text_file` and :func:`from_hf`: labelled
  texts from CSV / JSON-lines / Parquet files, ``save_to_disk`` folders or Hugging Face ``datasets`` objects;
  :func:`load_table` reads the columns of any of these;
* :func:`load_causal_lm` and :func:`load_lm_data`: causal-LM examples (plain texts, or prompt/completion pairs)
  from the same sources, as :class:`LMDataset`;
* :func:`balanced_split` and :func:`train_test_split`: fixed, seeded train/test splits;
* :func:`partition` and :func:`partition_summary`: split the training set among agents (IID, Dirichlet label
  skew or label shards; IID only for data without labels);
* :class:`TokenizedDataset` and :class:`LMTokenized`: tokenize once, then gather dynamically padded batches
  (or batches made by a ``transformers`` data collator);
* :class:`AgentSampler`: an independent, resumable stream of minibatches per agent.

Everything is deterministic given its ``seed``; nothing touches torch's global random state.

Where each lives: :class:`TextDataset` in :mod:`decaf_lora.texts`; the loaders in :mod:`decaf_lora.sources`;
splits and partitions in :mod:`decaf_lora.partitions`; :class:`TokenizedDataset` and :class:`AgentSampler` in
:mod:`decaf_lora.batches`; everything causal-LM in :mod:`decaf_lora.lm_data`.
"""

from __future__ import annotations

from .batches import AgentSampler, TokenizedDataset
from .lm_data import LMDataset, LMTokenized, encode_prompts, lm_accuracy, load_causal_lm, load_lm_data
from .names import DEFAULT_WORDNET_NOUNS, PARTITIONS
from .partitions import balanced_split, partition, partition_summary, train_test_split
from .sources import (NOUN_SUPERSENSES, from_hf, load_classification, load_table, load_text_file,
                      load_wordnet_supersenses)
from .texts import TextDataset

__all__ = [
    "DEFAULT_WORDNET_NOUNS",
    "NOUN_SUPERSENSES",
    "PARTITIONS",
    "AgentSampler",
    "LMDataset",
    "LMTokenized",
    "TextDataset",
    "TokenizedDataset",
    "balanced_split",
    "encode_prompts",
    "from_hf",
    "lm_accuracy",
    "load_causal_lm",
    "load_classification",
    "load_lm_data",
    "load_table",
    "load_text_file",
    "load_wordnet_supersenses",
    "partition",
    "partition_summary",
    "train_test_split",
]
