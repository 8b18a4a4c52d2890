"""Public ops, registered with torch.library under the ``decaf_kernels::`` namespace: registration only.

Each op is a custom op (its body calls the maths in ``_consensus``, ``_consensus_backward`` or ``_diagnostics``),
a fake (meta) implementation, so it works under ``torch.compile(fullgraph=True)``, autograd wiring where the op is
differentiable, and the public wrapper, which checks metadata (shapes, dtypes, devices, options) before anything
runs; value checks happen inside the ops. See each function's docstring.
"""

from typing import Optional

import torch
from torch import Tensor

from . import _diagnostics
from . import _validation as V
from ._consensus import compute_dtype, consensus_forward
from ._consensus_backward import consensus_backward

__all__ = ["consensus_tsvd", "mix_factors", "mix_products", "consensus_distance", "interference"]

SPLITS = {"balanced": 0.5, "left": 1.0, "right": 0.0}
METHODS = ("auto", "exact", "randomized")


# --------------------------------------------------------------------------------------------------------------
# consensus_tsvd
# --------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("decaf_kernels::consensus_tsvd", mutates_args=())
def _consensus_tsvd_op(
    B: Tensor, A: Tensor, W: Tensor, rank: int, method: str, oversample: int, power_iters: int, seed: int,
    split: str, validate: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return consensus_forward(B, A, W, rank, method, oversample, power_iters, seed, SPLITS[split], validate)


@_consensus_tsvd_op.register_fake
def _(B, A, W, rank, method, oversample, power_iters, seed, split, validate):
    n_out, batch, d, k = W.shape[0], tuple(B.shape[1:-2]), B.shape[-2], A.shape[-1]  # one output per row of W
    return (B.new_empty((n_out, *batch, d, rank)), A.new_empty((n_out, *batch, rank, k)),
            B.new_empty((n_out, *batch, rank), dtype=compute_dtype(B.dtype)))


@torch.library.custom_op("decaf_kernels::consensus_tsvd_backward", mutates_args=())
def _consensus_tsvd_backward_op(
    grad_B: Tensor, grad_A: Tensor, grad_S: Tensor, B: Tensor, A: Tensor, W: Tensor, B_new: Tensor,
    A_new: Tensor, split: str, need_W: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    dB, dA, dW = consensus_backward(grad_B, grad_A, grad_S, B, A, W, B_new, A_new, SPLITS[split], need_W)
    return dB.to(B.dtype).contiguous(), dA.to(A.dtype).contiguous(), dW.to(W.device, W.dtype).contiguous()


@_consensus_tsvd_backward_op.register_fake
def _(grad_B, grad_A, grad_S, B, A, W, B_new, A_new, split, need_W):
    return B.new_empty(B.shape), A.new_empty(A.shape), W.new_empty(W.shape)


def _consensus_setup_context(ctx, inputs, output):
    B, A, W, rank, method, oversample, power_iters, seed, split, validate = inputs
    B_new, A_new, _ = output
    ctx.save_for_backward(B, A, W, B_new, A_new)
    ctx.split = split


def _consensus_backward_fn(ctx, grad_B, grad_A, grad_S):
    B, A, W, B_new, A_new = ctx.saved_tensors
    grad_B = torch.zeros_like(B_new) if grad_B is None else grad_B
    grad_A = torch.zeros_like(A_new) if grad_A is None else grad_A
    if grad_S is None:
        grad_S = B_new.new_zeros(B_new.shape[:-2] + B_new.shape[-1:], dtype=compute_dtype(B.dtype))
    dB, dA, dW = _consensus_tsvd_backward_op(grad_B, grad_A, grad_S, B, A, W, B_new, A_new, ctx.split,
                                             ctx.needs_input_grad[2])
    needs = ctx.needs_input_grad
    return (dB if needs[0] else None, dA if needs[1] else None, dW if needs[2] else None,
            None, None, None, None, None, None, None)


_consensus_tsvd_op.register_autograd(_consensus_backward_fn, setup_context=_consensus_setup_context)


def consensus_tsvd(
    B: Tensor,
    A: Tensor,
    W: Tensor,
    rank: Optional[int] = None,
    *,
    method: str = "auto",
    oversample: int = 8,
    power_iters: int = 2,
    generator: Optional[torch.Generator] = None,
    split: str = "balanced",
    return_singular_values: bool = False,
    validate: bool = True,
):
    r"""DeCAF consensus step: best rank-``rank`` factors of every output's mixed LoRA product.

    .. math:: B'_o A'_o = \operatorname{TSVD}_{rank}\big(M_o\big),\qquad M_o = \sum_j W_{oj} B_j A_j

    Output o mixes the N input agents with row o of W, so a square W is the usual gossip step (output i = agent i)
    and a rectangular W computes only some outputs (a process hosting a block of agents passes its rows of W and
    the factors of the agents those rows use).

    The d x k matrices M_o are never formed. "exact" computes float64 Gram blocks of the neighbours' factors
    (one pass over B and A; fp32 data squared in fp64 is exact), solves the (deg r) x (deg r) core with a
    rank-revealing pivoted Cholesky and an SVD, and rebuilds the factors with one pass that reads only output o's
    neighbours (zeros of W are skipped; outputs with identical rows of W are solved once). It is exact up to
    rounding for any input, including zero, duplicate, ill-conditioned and extreme-magnitude factors: fp32, bf16
    and fp16 results are optimal to fp32 rounding; float64 on the CPU replaces the Grams by Householder QR of the
    stacked factors and a LAPACK SVD of the core, for LAPACK-level accuracy on spectra of any width (2-4x
    the Gram route's time); float64 on CUDA still uses Grams, which resolve directions of M_o down to about
    1e-8 of the largest. "randomized" sketches M_o in factored form (Halko et al. 2011) with
    ``rank + oversample`` columns and ``power_iters`` power iterations: near-optimal where M_o's spectrum has a
    gap after ``rank`` (agents near consensus), approximate where it does not.

    Args:
        B: (N, *batch, d, r) LoRA "B" factors of the N input agents (any number of batch/layer dimensions).
        A: (N, *batch, r, k) LoRA "A" factors, same dtype and device as B.
        W: (n_out, N): row o = the weights output o gives the N input agents; square (N, N) is the usual gossip
            step. Rows must sum to 1 (W need not be symmetric; a column may be all zero: an input no output uses).
            Any floating dtype; used in float64. Dense or sparse (COO/CSR, densified).
            On B's device or on the CPU: the neighbour lists are built on the host (cached by W's values and
            shape), so a CPU W saves a device-to-host copy per call with GPU factors, and is required inside
            CUDA-graph capture.
        rank: rank of the result, an int (numpy integers accepted), 1 <= rank <= min(d, k); defaults to r.
            Directions beyond the numerical rank of M_o come back as zero columns of B' / rows of A'.
        method: "exact", "randomized", or "auto" (the default): exact, unless the CPU cost model measured by
            ``bench/auto_method.py`` predicts the sketch to be at least 4x faster (cores of m = deg * r above
            ~280 for d = k = 256, ~400 for 768, ~1650 for 4096: dozens of distinct dense rows of W). On CUDA,
            where the two have not been measured against each other, auto is always exact. Deterministic.
        oversample: extra sketch columns for "randomized".
        power_iters: power iterations for "randomized".
        generator: seeds the randomized sketch (one draw from it per call). None uses a fixed seed, so the call is
            deterministic and never touches torch's global RNG.
        split: "balanced" (B' = U S^1/2, A' = S^1/2 V^T), "left" (B' = U S, A' = V^T) or "right" (B' = U, A' = S V^T).
            Zero singular values give zero columns/rows in every split (their singular vectors are undefined).
        return_singular_values: also return S (n_out, *batch, rank), descending, in float32 (float64 for float64
            input).
        validate: check values (finite inputs, rows of W summing to 1) before computing. Shapes, dtypes, devices
            and options are always checked.

    Returns:
        ``(B_new, A_new)`` of shapes (n_out, *batch, d, rank) and (n_out, *batch, rank, k) in the input dtype
        (bf16/fp16 are computed in fp32), plus ``S`` when ``return_singular_values``.

    Signs and row blocks: each kept singular pair (column of B_new, row of A_new) is defined up to a joint sign,
    which the kernels fix from output o's stacked neighbour factors, taken in ascending column order of W. So with
    ``W_rect = W[rows][:, cols]``, ``cols`` the sorted agents those rows use, ``consensus_tsvd(B[cols], A[cols],
    W_rect)`` equals ``consensus_tsvd(B, A, W)[rows]``, signs included, bitwise for method="exact" with
    fp32/bf16/fp16 data on the CPU kernels. float64 data on the CPU (Householder QR + LAPACK SVD, MKL) agrees to
    rounding (~1e-14 relative: MKL rounds with the batch's memory alignment); its cores are padded to the call's
    largest number of nonzeros per row, and where that differs between the two calls LAPACK may, rarely, pick the
    other sign for a singular pair (the products B'_o A'_o still agree to rounding). Columns listed in another
    order give the same products, with possibly different signs (or, for tied singular values, a rotation).

    Autograd: differentiable in B, A and W through B_new @ A_new where sigma_rank > sigma_(rank+1), including ties
    among the kept singular values (there the factors themselves are not differentiable, any rotation of a tied
    pair being an SVD, and the gradient returned is that of the product), and through S where its values are
    distinct. The backward runs in float64 without forming d x k matrices.

    Example:
        >>> import torch, decaf_kernels
        >>> N, d, k, r = 4, 64, 48, 8
        >>> B, A = torch.randn(N, 12, d, r), torch.randn(N, 12, r, k)     # 12 layers
        >>> W = torch.tensor([[.5, .25, 0, .25], [.25, .5, .25, 0], [0, .25, .5, .25], [.25, 0, .25, .5]])
        >>> B2, A2 = decaf_kernels.consensus_tsvd(B, A, W)
        >>> B2.shape, A2.shape
        (torch.Size([4, 12, 64, 8]), torch.Size([4, 12, 8, 48]))
    """
    N, batch, d, r, k = V.check_factors(B, A)
    W = V.dense_mixing(W)
    V.check_mixing(W, N, B, "B", allow_host=True)
    validate = V.as_flag("validate", validate)
    return_singular_values = V.as_flag("return_singular_values", return_singular_values)
    if B.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        if W.device.type != "cpu":
            raise ValueError("W is on the GPU while a CUDA graph is being captured; the neighbour lists are read "
                             "from W on the host, so pass W as a CPU tensor (it is small) to capture consensus_tsvd")
        if validate:
            raise ValueError("validate=True reads values back to the host, which a CUDA graph capture cannot do; "
                             "pass validate=False inside the capture (and check the inputs before it)")
        if method != "exact":
            raise ValueError(f"method={method!r} cannot be captured in a CUDA graph; pass method='exact'")
    rank = r if rank is None else V.as_int("rank", rank)
    if not 1 <= rank <= min(d, k):
        raise ValueError(f"rank must satisfy 1 <= rank <= min(d, k) = {min(d, k)}, got rank={rank}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    oversample = V.as_int("oversample", oversample, minimum=0)
    power_iters = V.as_int("power_iters", power_iters, minimum=0)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    # Without a generator the sketch uses a fixed seed: the call is deterministic and the global RNG (which also
    # drives dropout) is left alone.
    seed = 0 if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator).item())
    B_new, A_new, S = _consensus_tsvd_op(B, A, W, rank, method, oversample, power_iters, seed, split, validate)
    return (B_new, A_new, S) if return_singular_values else (B_new, A_new)


# --------------------------------------------------------------------------------------------------------------
# mix_factors / mix_products
# --------------------------------------------------------------------------------------------------------------


def _mix_dense(X: Tensor, W: Tensor) -> Tensor:
    """(n_out, ...) = W (n_out, N) applied over X's dimension 0 (N)."""
    cd = compute_dtype(X.dtype)
    N = X.shape[0]
    return (W.to(cd) @ X.reshape(N, -1).to(cd)).reshape(W.shape[0], *X.shape[1:]).to(X.dtype)


@torch.library.custom_op("decaf_kernels::mix_factors", mutates_args=())
def _mix_factors_op(X: Tensor, W: Tensor, validate: bool) -> Tensor:
    if validate:
        V.check_values(X, X, W)
    return _mix_dense(X, W)


@_mix_factors_op.register_fake
def _(X, W, validate):
    return X.new_empty((W.shape[0], *X.shape[1:]))


def _mix_factors_setup(ctx, inputs, output):
    X, W, _ = inputs
    ctx.save_for_backward(X, W)


def _mix_factors_bwd(ctx, grad):
    X, W = ctx.saved_tensors
    n_out, N = W.shape
    dX = _mix_factors_op(grad, W.mT.contiguous(), False) if ctx.needs_input_grad[0] else None  # W^T grad: (N, ...)
    dW = None
    if ctx.needs_input_grad[1]:
        cd = torch.promote_types(compute_dtype(X.dtype), W.dtype)
        dW = (grad.reshape(n_out, -1).to(cd) @ X.reshape(N, -1).to(cd).mT).to(W.dtype)
    return dX, dW, None


_mix_factors_op.register_autograd(_mix_factors_bwd, setup_context=_mix_factors_setup)


def mix_factors(X: Tensor, W: Tensor, *, validate: bool = True) -> Tensor:
    r"""DLoRA gossip of one factor: :math:`X'_o = \sum_j W_{oj} X_j`.

    Args:
        X: (N, *batch, m, n) a stack of per-agent factors (B or A), any floating dtype (half types are
            mixed in fp32 and returned in their own dtype).
        W: (n_out, N): row o = the weights output o gives the N input agents; square (N, N) is the usual gossip
            step. Rows sum to 1 (checked when ``validate``); dense or sparse (densified).

    Returns:
        (n_out, *batch, m, n) tensor of X's dtype. Differentiable in X and W.

    Example:
        >>> X = torch.randn(4, 3, 16, 8); W = torch.full((4, 4), 0.25)
        >>> torch.allclose(decaf_kernels.mix_factors(X, W)[0], X.mean(0), atol=1e-6)
        True
    """
    V.check_tensor("X", X, min_dim=1)
    if X.shape[0] == 0:
        raise ValueError(f"X has no agents: dimension 0 of X {tuple(X.shape)} is 0; expected N >= 1")
    W = V.dense_mixing(W)
    V.check_mixing(W, X.shape[0], X, "X")
    return _mix_factors_op(X, W, V.as_flag("validate", validate))


@torch.library.custom_op("decaf_kernels::mix_products", mutates_args=())
def _mix_products_op(B: Tensor, A: Tensor, W: Tensor, validate: bool) -> Tensor:
    if validate:
        V.check_values(B, A, W)
    cd = compute_dtype(B.dtype)
    return _mix_dense(B.to(cd) @ A.to(cd), W).to(B.dtype)


@_mix_products_op.register_fake
def _(B, A, W, validate):
    return B.new_empty((W.shape[0], *B.shape[1:-1], A.shape[-1]))


def _mix_products_setup(ctx, inputs, output):
    B, A, W, _ = inputs
    ctx.save_for_backward(B, A, W)


def _mix_products_bwd(ctx, grad):
    B, A, W = ctx.saved_tensors
    cd = compute_dtype(B.dtype)
    G = grad.to(cd)
    GW = _mix_dense(G, W.mT.contiguous())  # sum_i W_ij G_i: (N, ...)
    dB = (GW @ A.to(cd).mT).to(B.dtype) if ctx.needs_input_grad[0] else None
    dA = (B.to(cd).mT @ GW).to(A.dtype) if ctx.needs_input_grad[1] else None
    dW = None
    if ctx.needs_input_grad[2]:
        P = (B.to(cd) @ A.to(cd)).reshape(B.shape[0], -1)
        dW = (G.reshape(W.shape[0], -1) @ P.mT).to(W.dtype)
    return dB, dA, dW, None


_mix_products_op.register_autograd(_mix_products_bwd, setup_context=_mix_products_setup)


def mix_products(B: Tensor, A: Tensor, W: Tensor, *, validate: bool = True) -> Tensor:
    r"""The dense mixed products :math:`M_o = \sum_j W_{oj} B_j A_j` (what DeCAF truncates).

    Forms d x k matrices: meant for small shapes, checks and diagnostics, not for the training hot path.

    Args:
        B: (N, *batch, d, r), A: (N, *batch, r, k): the N input agents.
        W: (n_out, N): row o = the weights output o gives the N input agents (square (N, N): the usual gossip step),
            rows summing to 1.

    Returns:
        M: (n_out, *batch, d, k) in B's dtype (computed in fp32 for half types). Differentiable in B, A and W.

    Example:
        >>> M = decaf_kernels.mix_products(torch.randn(3, 8, 2), torch.randn(3, 2, 5), torch.eye(3))
        >>> M.shape
        torch.Size([3, 8, 5])
    """
    V.check_factors(B, A)
    W = V.dense_mixing(W)
    V.check_mixing(W, B.shape[0], B, "B")
    return _mix_products_op(B, A, W, V.as_flag("validate", validate))


# --------------------------------------------------------------------------------------------------------------
# diagnostics
# --------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("decaf_kernels::consensus_distance", mutates_args=())
def _consensus_distance_op(B: Tensor, A: Tensor) -> Tensor:
    return _diagnostics.consensus_distance(B, A)


@_consensus_distance_op.register_fake
def _(B, A):
    return B.new_empty(B.shape[1:-2], dtype=compute_dtype(B.dtype))


def consensus_distance(B: Tensor, A: Tensor) -> Tensor:
    r"""How far the agents are from agreeing, measured on the LoRA products (the quantity that matters).

    .. math:: \Big(\tfrac1N \sum_i \lVert B_i A_i - \bar P\rVert_F^2\Big)^{1/2},\qquad \bar P = \tfrac1N\sum_j B_j A_j

    Computed from r x r Gram matrices in float64 (no d x k matrix), so it resolves distances down to about
    1e-8 of the products' norm. Not differentiable (a diagnostic).

    Args:
        B: (N, *batch, d, r), A: (N, *batch, r, k).

    Returns:
        (*batch,) tensor, float32 (float64 for float64 input): one RMS distance per layer.

    Example:
        >>> B, A = torch.randn(4, 2, 32, 4), torch.randn(4, 2, 4, 16)
        >>> decaf_kernels.consensus_distance(B, A).shape
        torch.Size([2])
    """
    V.check_factors(B, A)
    return _consensus_distance_op(B, A)


@torch.library.custom_op("decaf_kernels::interference", mutates_args=())
def _interference_op(B: Tensor, A: Tensor, W: Tensor, relative: bool) -> Tensor:
    return _diagnostics.interference(B, A, W, relative)


@_interference_op.register_fake
def _(B, A, W, relative):
    return B.new_empty((W.shape[0], *B.shape[1:-2]), dtype=compute_dtype(B.dtype))


def interference(B: Tensor, A: Tensor, W: Tensor, *, relative: bool = False) -> Tensor:
    r"""DLoRA's consensus interference: how far the product of mixed factors is from the mix of products.

    .. math:: I_o = \Big\lVert \sum_j W_{oj} B_j A_j - \Big(\sum_j W_{oj} B_j\Big)\Big(\sum_j W_{oj} A_j\Big)\Big\rVert_F

    Zero when all neighbours agree; DeCAF removes it by construction. Computed from r x r Grams in float64
    (no d x k matrix). Not differentiable (a diagnostic).

    Args:
        B: (N, *batch, d, r), A: (N, *batch, r, k): the N input agents.
        W: (n_out, N): row o = the weights output o gives the N input agents (square (N, N): the usual gossip step).
        relative: divide by :math:`\lVert M_o\rVert_F` (0 where M_o = 0).

    Returns:
        (n_out, *batch) tensor, float32 (float64 for float64 input).

    Example:
        >>> B, A = torch.randn(3, 32, 4), torch.randn(3, 4, 16)
        >>> decaf_kernels.interference(B, A, torch.full((3, 3), 1 / 3)).shape
        torch.Size([3])
    """
    V.check_factors(B, A)
    W = V.dense_mixing(W)
    V.check_mixing(W, B.shape[0], B, "B")
    return _interference_op(B, A, W, V.as_flag("relative", relative))
