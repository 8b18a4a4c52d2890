"""Gossip mixing matrices: the weights of a connected graph, their validation, and how fast they mix.

A mixing matrix ``W`` (``N x N``, float64) gives in ``W[i, j]`` the weight agent ``i`` gives to agent ``j``: one
gossip round maps the stacked parameters ``X`` to ``W @ X``. :func:`save_mixing_matrix` writes one to a file
(``decaf graph --save``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch

from ._checks import check_choice
from .graph_structure import as_bool_square, unreachable_from_zero
from .names import WEIGHTS
from .runfiles import atomic_write_bytes

__all__ = ["WEIGHTS", "mixing_matrix", "check_mixing_matrix", "spectral_gap", "save_mixing_matrix",
           "check_matrix_path", "MATRIX_SUFFIXES"]

MATRIX_SUFFIXES = (".npy", ".txt", ".csv")
"""The files :func:`save_mixing_matrix` writes: numpy's binary ``.npy``, or text (whitespace- or comma-separated)."""


def mixing_matrix(adj: torch.Tensor, weights: str = "metropolis") -> torch.Tensor:
    """Symmetric doubly stochastic gossip matrix of a connected undirected graph.

    Args:
        adj: ``(n, n)`` adjacency (bool or 0/1); the diagonal is ignored.
        weights: ``"metropolis"`` (Metropolis-Hastings: ``W_ij = 1 / (1 + max(deg_i, deg_j))`` on each edge)
            or ``"uniform"`` (``W_ij = 1 / (1 + max_degree)`` on each edge, i.e. ``1 / (d + 1)`` everywhere on a
            ``d``-regular graph); in both cases ``W_ii = 1 - sum_{j != i} W_ij``.

    Returns:
        A float64 ``(n, n)`` CPU tensor, symmetric, nonnegative, rows and columns summing to 1.

    Raises:
        ValueError: unknown ``weights``, or a disconnected graph (the message lists agents unreachable from
            agent 0): gossip on a disconnected graph never reaches consensus.
    """
    check_choice("weights", weights, WEIGHTS)
    a = as_bool_square(adj)
    n = a.shape[0]
    if n == 0:
        raise ValueError("adj must have at least one agent, got shape (0, 0)")
    missing = unreachable_from_zero(a)
    if missing:
        shown = ", ".join(str(i) for i in missing[:8]) + (", ..." if len(missing) > 8 else "")
        raise ValueError(
            f"the graph is not connected: {len(missing)} agent(s) unreachable from agent 0 "
            f"(agents {shown}); a disconnected graph can never reach consensus"
        )
    af = a.to(torch.float64)
    deg = af.sum(dim=1)
    if weights == "metropolis":
        W = af / (1.0 + torch.maximum(deg[:, None], deg[None, :]))
    else:
        W = af / (1.0 + deg.max())
    W.fill_diagonal_(0.0)
    W += torch.diag(1.0 - W.sum(dim=1))
    return W


def check_mixing_matrix(W: torch.Tensor, *, atol: float = 1e-10) -> None:
    """Validates a gossip matrix: square, float, finite, nonnegative and doubly stochastic.

    Args:
        W: the ``(n, n)`` mixing matrix.
        atol: absolute tolerance on every row sum and column sum.

    Returns:
        None.

    Raises:
        TypeError: ``W`` is not a floating-point torch tensor.
        ValueError: ``W`` is not square 2-D, has a non-finite or negative entry, or a row or column does not
            sum to 1 within ``atol`` (the message names the worst one and its sum).
    """
    Wd = _square_float64(W, floating=True)
    finite = torch.isfinite(Wd)
    if not bool(finite.all()):
        i, j = (int(x) for x in (~finite).nonzero()[0])
        raise ValueError(f"W must be finite, got W[{i}, {j}] = {Wd[i, j].item()}")
    if bool((Wd < 0).any()):
        i, j = (int(x) for x in (Wd < 0).nonzero()[0])
        raise ValueError(f"W must be nonnegative, got W[{i}, {j}] = {Wd[i, j].item()!r}")
    rows = Wd.sum(dim=1)
    cols = Wd.sum(dim=0)
    rerr = (rows - 1.0).abs()
    cerr = (cols - 1.0).abs()
    ri = int(rerr.argmax())
    ci = int(cerr.argmax())
    if rerr[ri] > atol or cerr[ci] > atol:
        if rerr[ri] >= cerr[ci]:
            raise ValueError(
                f"W must be doubly stochastic: row {ri} sums to {rows[ri].item()!r} (atol={atol})"
            )
        raise ValueError(
            f"W must be doubly stochastic: column {ci} sums to {cols[ci].item()!r} (atol={atol})"
        )


def spectral_gap(W: torch.Tensor) -> float:
    """Spectral gap ``1 - ||W - 11^T/n||_2`` of a mixing matrix (largest singular value, in float64).

    For a symmetric ``W`` this is ``1 - max(|lambda_2|, |lambda_n|)``; it also applies to non-symmetric
    doubly stochastic matrices. A larger gap means faster consensus; 1 for ``W = 11^T/n``.

    Args:
        W: the ``(n, n)`` mixing matrix.

    Returns:
        The gap as a Python float.

    Raises:
        TypeError: ``W`` is not a torch tensor.
        ValueError: ``W`` is not a non-empty square 2-D matrix.
    """
    Wd = _square_float64(W)
    n = Wd.shape[0]
    dev = Wd - torch.full((n, n), 1.0 / n, dtype=torch.float64)
    return float(1.0 - torch.linalg.matrix_norm(dev, ord=2))


def check_matrix_path(path: Union[str, Path], *, overwrite: bool = False) -> Path:
    """``path`` as a :class:`~pathlib.Path` if :func:`save_mixing_matrix` may write there.

    Raises:
        ValueError: a suffix other than :data:`MATRIX_SUFFIXES`.
        FileExistsError: ``path`` is a folder, or a file and ``overwrite`` is False.
    """
    path = Path(path)
    if path.suffix.lower() not in MATRIX_SUFFIXES:
        raise ValueError(f"cannot save a mixing matrix as {str(path)!r}: the file name must end in "
                         f"{', '.join(MATRIX_SUFFIXES)} (numpy binary, text, comma-separated text)")
    if path.is_dir():
        raise FileExistsError(f"{str(path)!r} is a folder; pass the path of a file to save the mixing matrix in")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; refusing to replace it (pass --overwrite / overwrite=True "
                              "to replace it)")
    return path


def save_mixing_matrix(W: torch.Tensor, path: Union[str, Path], *, overwrite: bool = False) -> Path:
    """Write ``W`` (float64) to ``path`` atomically, with permissions that follow the umask.

    ``.npy``: ``numpy.save`` (read back with ``numpy.load``); ``.txt`` / ``.csv``: one row per line, separated by
    spaces / commas, each value with 17 significant digits, so ``numpy.loadtxt`` gives back the same float64
    values.

    Raises:
        ValueError / FileExistsError: see :func:`check_matrix_path` (raised before anything is written).
        TypeError, ValueError: ``W`` is not a non-empty square floating-point tensor.
    """
    path = check_matrix_path(path, overwrite=overwrite)
    arr = _square_float64(W, floating=True).numpy()
    suffix = path.suffix.lower()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.save would add ".npy" to the temporary's name
            if suffix == ".npy":
                np.save(fh, arr, allow_pickle=False)
            else:
                np.savetxt(fh, arr, fmt="%.17g", delimiter="," if suffix == ".csv" else " ")

    atomic_write_bytes(path, write)
    return path


def _square_float64(W: torch.Tensor, *, floating: bool = False) -> torch.Tensor:
    """``W`` as a float64 CPU tensor (``W`` itself if it is one), after checking that it is a tensor, floating-point
    (with ``floating``), square 2-D and non-empty, in that order."""
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"W must be a torch.Tensor, got {type(W).__name__}")
    if floating and not W.is_floating_point():
        raise TypeError(f"W must be a floating-point matrix, got dtype {W.dtype}")
    if W.dim() != 2 or W.shape[0] != W.shape[1] or W.shape[0] == 0:
        raise ValueError(f"W must be a non-empty square 2-D matrix, got shape {tuple(W.shape)}")
    return W.detach().cpu().to(torch.float64)
