"""Seeded ``torch.Generator`` objects: decaf_lora's data and graph draws come from these, never from torch's
global RNG, so that they are a function of their seed alone and a run leaves the caller's RNG as it was. Dropout
draws from the global RNG only: :func:`global_rng` puts a stream of the run's there for a block, and back."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

_SEED_MODULUS = 2**63  # manual_seed takes a signed 64-bit value
_STREAM_STRIDE = 1_000_003  # two seeds' streams share no seed below a million streams (agents, rounds)


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (any int; reduced modulo 2**63)."""
    return torch.Generator().manual_seed(int(seed) % _SEED_MODULUS)


def stream_generator(seed: int, stream: int) -> torch.Generator:
    """The generator of stream ``stream`` (an agent, a round) among the independent streams of ``seed``."""
    return generator(seed * _STREAM_STRIDE + stream)


def seeded_rng_state(seed: int, device: torch.device) -> dict:
    """The state of torch's global RNG (and the CUDA one for a CUDA ``device``) freshly seeded with ``seed``."""
    rng = {"torch": torch.Generator().manual_seed(seed).get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.Generator(device=device).manual_seed(seed).get_state()
    return rng


def _state(device: torch.device) -> dict:
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def _set_state(rng: dict, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


@contextlib.contextmanager
def global_rng(rng: dict, device: torch.device) -> Iterator[Callable[[], dict]]:
    """Torch's global RNG set to the state ``rng`` (of :func:`seeded_rng_state`) for the block, the caller's
    restored after it; the block gets a function that returns the stream's state where the block left it (call
    it after the block)."""
    caller = _state(device)
    _set_state(rng, device)
    end = {}
    try:
        yield lambda: end["state"]
        end["state"] = _state(device)
    finally:
        _set_state(caller, device)
