"""The benchmark cases of docs/design.md and the inputs every method is timed on.

The table is frozen: every run of ``bench.compare``, the pytest-benchmark tests and the demo use the
same cases, so numbers from different runs and machines can be put side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Case", "CASES", "get_case", "ring_mixing", "mixing_matrix", "make_inputs", "factor_bytes"]


@dataclass(frozen=True)
class Case:
    """One benchmark configuration: ``N`` agents, ``L`` layers of ``d x k`` LoRA weights at rank ``r``."""

    name: str
    N: int
    L: int
    d: int
    k: int
    r: int
    graph: str = "ring"

    @property
    def label(self) -> str:
        return f"N{self.N}-L{self.L}-d{self.d}-k{self.k}-r{self.r}-{self.graph}"


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("tiny", N=4, L=4, d=256, k=256, r=8),
        Case("small", N=8, L=48, d=768, k=768, r=8),
        Case("medium", N=8, L=16, d=4096, k=4096, r=16),
        Case("large", N=16, L=128, d=4096, k=4096, r=16),
    )
}


def get_case(name: str) -> Case:
    try:
        return CASES[name]
    except KeyError:
        raise ValueError(f"unknown case {name!r}; expected one of {sorted(CASES)}") from None


def ring_mixing(N: int, *, dtype: torch.dtype = torch.float64, device="cpu") -> torch.Tensor:
    """Uniform mixing matrix of the ring: each agent averages itself and its two neighbours.

    ``W[i, i] = W[i, i-1] = W[i, i+1] = 1/3`` for ``N >= 3``. The ring degenerates below that: for
    ``N = 2`` both neighbours are the same agent, so the graph is one edge and each agent averages
    itself and the other with weight 1/2 (adding the two 1/3 entries would make W non-uniform); for
    ``N = 1`` it is ``[[1]]``. W is symmetric and doubly stochastic in every case.
    """
    if not isinstance(N, int) or N < 1:
        raise ValueError(f"ring_mixing: N must be a positive int, got {N!r}")
    if N == 1:
        return torch.ones(1, 1, dtype=dtype, device=device)
    if N == 2:
        return torch.full((2, 2), 0.5, dtype=dtype, device=device)
    W = torch.zeros(N, N, dtype=dtype)
    idx = torch.arange(N)
    for shift in (-1, 0, 1):
        W[idx, (idx + shift) % N] = 1.0 / 3.0
    return W.to(device)


def complete_mixing(N: int, *, dtype: torch.dtype = torch.float64, device="cpu") -> torch.Tensor:
    """Uniform averaging over all agents (the complete graph): ``W[i, j] = 1/N``."""
    if not isinstance(N, int) or N < 1:
        raise ValueError(f"complete_mixing: N must be a positive int, got {N!r}")
    return torch.full((N, N), 1.0 / N, dtype=dtype, device=device)


_GRAPHS = {"ring": ring_mixing, "complete": complete_mixing}


def mixing_matrix(graph: str, N: int, *, dtype: torch.dtype = torch.float64, device="cpu") -> torch.Tensor:
    try:
        build = _GRAPHS[graph]
    except KeyError:
        raise ValueError(f"unknown graph {graph!r}; expected one of {sorted(_GRAPHS)}") from None
    return build(N, dtype=dtype, device=device)


def make_inputs(
    case: Case,
    dtype: torch.dtype = torch.float32,
    device="cpu",
    seed: int = 0,
    *,
    layers: int | None = None,
):
    """Random LoRA factors of ``case`` with non-trivial spectra, and the mixing matrix.

    Returns ``(B, A, W)``: ``B (N, L, d, r)``, ``A (N, L, r, k)`` in ``dtype`` on ``device``, ``W (N, N)``
    in the same dtype. Entries are Gaussian scaled by ``1/sqrt(d)`` (``1/sqrt(k)`` for A), and the
    columns of B decay geometrically (``0.7**c``) so each product has a spread of singular values
    rather than ``r`` nearly equal ones; the agents are independent, so ``M_i`` has full rank
    ``deg_i * r`` and its truncation is well defined. ``layers`` builds only the first ``layers``
    layers (same values as the full case for those layers).

    The values are drawn on the CPU in float32 from ``torch.Generator().manual_seed(seed)``, so the
    same seed gives the same inputs on every device.
    """
    L = case.L if layers is None else layers
    gen = torch.Generator().manual_seed(seed)
    # Draw layer by layer so that `layers=l` reproduces the first l layers of the full case.
    B = torch.empty(case.N, L, case.d, case.r)
    A = torch.empty(case.N, L, case.r, case.k)
    for layer in range(L):
        B[:, layer] = torch.randn(case.N, case.d, case.r, generator=gen)
        A[:, layer] = torch.randn(case.N, case.r, case.k, generator=gen)
    decay = 0.7 ** torch.arange(case.r, dtype=torch.float32)
    B.mul_(decay / math.sqrt(case.d))
    A.mul_(1.0 / math.sqrt(case.k))
    W = mixing_matrix(case.graph, case.N, dtype=torch.float64)
    return B.to(device=device, dtype=dtype), A.to(device=device, dtype=dtype), W.to(device=device, dtype=dtype)


def factor_bytes(case: Case, dtype: torch.dtype) -> int:
    """Bytes that must move for one consensus step: read B and A once, write B_new and A_new once."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_side = case.N * case.L * case.r * (case.d + case.k) * itemsize
    return 2 * per_side
