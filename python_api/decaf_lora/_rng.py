"""Seeded ``torch.Generator`` objects: decaf_lora's data and graph draws come from these, never from torch's
global RNG, so that they are a function of their seed alone and a run leaves the caller's RNG as it was."""

from __future__ import annotations

import torch

_SEED_MODULUS = 2**63  # manual_seed takes a signed 64-bit value
_STREAM_STRIDE = 1_000_003  # two seeds' streams share no seed below a million streams (agents, rounds)


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (any int; reduced modulo 2**63)."""
    return torch.Generator().manual_seed(int(seed) % _SEED_MODULUS)


def stream_generator(seed: int, stream: int) -> torch.Generator:
    """The generator of stream ``stream`` (an agent, a round) among the independent streams of ``seed``."""
    return generator(seed * _STREAM_STRIDE + stream)
