"""Argument checks shared by the public ops.

Shape, dtype, device and option checks only look at metadata, so they run in the Python wrappers (and
trace cleanly under torch.compile). Checks that read values (finiteness, row sums of W) run inside the
registered ops, before any work. Every failure names the argument, what was seen and what was expected.
"""

from __future__ import annotations

import operator

import numpy as np
import torch

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, x, *, min_dim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {x.layout}; pass {name}.to_dense()")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions, got shape {tuple(x.shape)}")


def dense_mixing(W):
    """A sparse W (COO, CSR, ...) densified: W (n_out x N) is small, and every op reads it whole."""
    if isinstance(W, torch.Tensor) and W.layout != torch.strided:
        return W.to_dense()
    return W


def as_int(name: str, value, *, minimum: int | None = None) -> int:
    """An integer argument: Python ints and integer-likes (numpy integers, 0-d integer tensors); not bool or float."""
    if isinstance(value, (bool, float)) or getattr(value, "dtype", None) in (torch.bool,):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if minimum is not None and out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {out}")
    return out


def as_flag(name: str, value) -> bool:
    """A boolean switch: True/False (numpy bools too); a string such as "no" is refused rather than read as True."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def check_mixing(W, n_agents: int, ref: torch.Tensor, ref_name: str, *, allow_host: bool = False) -> None:
    """W: (n_out, N), one row per output over the N = n_agents input agents stacked in dimension 0 of ref.

    allow_host: W may also live on the CPU when the factors are elsewhere (ops that read W on the host).
    """
    check_tensor("W", W, min_dim=0)
    if W.dim() != 2:
        raise ValueError(f"W must be a 2-D (n_out, N) mixing matrix, got shape {tuple(W.shape)}")
    if W.shape[1] != n_agents:
        raise ValueError(
            f"W has {W.shape[1]} columns but {ref_name} has N = {n_agents} agents (dimension 0): W "
            f"{tuple(W.shape)}, {ref_name} {tuple(ref.shape)}; expected W of shape (n_out, {n_agents})"
        )
    if W.shape[0] == 0:
        raise ValueError(f"W has no rows: shape {tuple(W.shape)}; expected (n_out, {n_agents}) with n_out >= 1")
    if W.device != ref.device and not (allow_host and W.device.type == "cpu"):
        expected = "the same device or the CPU" if allow_host else "the same device"
        raise ValueError(f"W is on {W.device} but {ref_name} is on {ref.device}; expected {expected}")


def check_factors(B, A) -> tuple[int, tuple[int, ...], int, int, int]:
    """B: (N, *batch, d, r), A: (N, *batch, r, k). Returns (N, batch, d, r, k)."""
    check_tensor("B", B, min_dim=3)
    check_tensor("A", A, min_dim=3)
    if B.dtype != A.dtype:
        raise TypeError(f"B and A must have the same dtype, got B {B.dtype} and A {A.dtype}")
    if B.device != A.device:
        raise ValueError(f"B and A must be on the same device, got B on {B.device} and A on {A.device}")
    if B.dim() != A.dim():
        raise ValueError(
            f"B (N, *batch, d, r) and A (N, *batch, r, k) must have the same number of dimensions, got "
            f"B {tuple(B.shape)} and A {tuple(A.shape)}"
        )
    N, d, r = B.shape[0], B.shape[-2], B.shape[-1]
    if A.shape[0] != N:
        raise ValueError(f"B has N = {N} agents but A has {A.shape[0]} (dimension 0); they must agree")
    if tuple(A.shape[1:-2]) != tuple(B.shape[1:-2]):
        raise ValueError(
            f"B and A must share the batch dimensions: B {tuple(B.shape)} has batch {tuple(B.shape[1:-2])}, "
            f"A {tuple(A.shape)} has {tuple(A.shape[1:-2])}"
        )
    if A.shape[-2] != r:
        raise ValueError(
            f"B is (.., d={d}, r={r}) so A must be (.., r={r}, k); got A with shape {tuple(A.shape)}"
        )
    if N == 0 or d == 0 or r == 0 or A.shape[-1] == 0:
        raise ValueError(f"B {tuple(B.shape)} and A {tuple(A.shape)} must have non-zero N, d, r and k")
    return N, tuple(B.shape[1:-2]), d, r, A.shape[-1]


def row_sum_tolerance(W: torch.Tensor) -> float:
    """Rows of W must sum to 1 within this (scaled by the N terms of a row sum and the dtype's precision)."""
    n = W.shape[1]
    return max(1e-6, 64.0 * n * torch.finfo(W.dtype).eps)


def raise_non_finite(name: str, x: torch.Tensor) -> None:
    """Locate and report the first non-finite element of x (the slow path, only taken on error)."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        where = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"{name} must be finite, found {x[where].item()} at index {where}")


def all_finite(x: torch.Tensor) -> bool:
    """Whether every element of x is finite (one read on the host)."""
    # max |x| is NaN or inf exactly when some element is; cheaper than materialising isfinite(x)
    return not x.numel() or bool(torch.isfinite(x.abs().amax()))


def check_finite(name: str, x: torch.Tensor) -> None:
    if not all_finite(x):
        raise_non_finite(name, x)


def check_mixing_values(W: torch.Tensor) -> None:
    check_finite("W", W)
    sums = W.to(torch.float64).sum(dim=1)
    tol = row_sum_tolerance(W)
    off = (sums - 1.0).abs()
    if bool((off > tol).any()):
        i = int(torch.argmax(off))
        raise ValueError(
            f"rows of W must sum to 1 (tolerance {tol:.1e}); row {i} sums to {sums[i].item():.9g}. "
            "Normalise W (e.g. Metropolis-Hastings weights) or pass validate=False"
        )


def check_values(B: torch.Tensor, A: torch.Tensor, W: torch.Tensor) -> None:
    """Value checks, run inside the ops when validate=True, before any work."""
    check_mixing_values(W)
    check_finite("B", B)
    check_finite("A", A)
