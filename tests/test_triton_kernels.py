"""Tests of the Triton kernels (decaf_kernels._triton: pair_gram, mix_lowrank) against float64 einsum oracles.

On a machine without CUDA the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set below
before the module is imported). Sizes are kept small because the interpreter is slow; block-size
overrides make small shapes exercise the multi-tile paths (several P chunks, Q and R tiles).

Tolerances are a-priori rounding-error bounds, not fitted constants: a dot product of K terms
accumulated in a format with unit roundoff u is off by at most ~K * u * sum|a||b| (Higham, gamma_K),
so each check compares the error element-wise against K * u * (|a| @ |b|) (with a factor 2 of
slack), and a rounding of the result to a 16-bit format adds u_16 * |result|.
"""

import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="triton is not installed: the Triton kernels cannot be tested")

import decaf_kernels._triton as tk  # noqa: E402
from decaf_kernels._graph import pair_groups  # noqa: E402

if not tk.is_available() and tk.triton_too_old():  # any other reason (a broken install) fails below instead
    pytest.skip(f"the Triton kernels cannot be tested: {tk.unavailable_reason()}", allow_module_level=True)
from decaf_kernels._triton import gram, launch, mix  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not tk.interpreter_active():
    pytest.skip("no CUDA device and TRITON_INTERPRET is set to off: the kernels cannot run", allow_module_level=True)
if DEVICE == "cpu" and type(importlib.import_module("triton.language").sum).__name__ != "InterpretedFunction":
    pytest.skip(
        "triton was imported (by an earlier test module?) before TRITON_INTERPRET=1 was set, so its own "
        "@jit helpers cannot be interpreted; set TRITON_INTERPRET=1 in the environment or in tests/conftest.py",
        allow_module_level=True,
    )
U64 = 2.0**-53
U32 = 2.0**-24
U16 = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


# ---------------------------------------------------------------------------------------------------
# Oracles
# ---------------------------------------------------------------------------------------------------


def gram_oracle(x, pairs, absolute=False):
    """(L, T, Q, Q) float64: x[j]^T x[k] per layer (or |x[j]|^T |x[k]| for the error bound)."""
    x64 = x.detach().to("cpu", torch.float64)
    if absolute:
        x64 = x64.abs()
    p = pairs.cpu()
    return torch.einsum("tlpa,tlpb->ltab", x64[p[:, 0]], x64[p[:, 1]])


def mix_oracle(x, idx, t, absolute=False):
    """(n_out, L, P, R) float64: sum over non-empty slots of x[idx[i, s], l] @ t[i, l, s]."""
    x64 = x.detach().to("cpu", torch.float64)
    t64 = t.detach().to("cpu", torch.float64)
    if absolute:
        x64, t64 = x64.abs(), t64.abs()
    i = idx.cpu()
    valid = (i >= 0).to(torch.float64)[:, :, None, None, None]
    xs = x64[i.clamp(min=0)] * valid  # (n_out, D, L, P, Q)
    return torch.einsum("islpq,ilsqr->ilpr", xs, t64)


def assert_within(got, ref, bound, what):
    got64 = got.detach().to("cpu", torch.float64)
    assert got64.shape == ref.shape, f"{what}: shape {tuple(got64.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(got64).all(), f"{what}: non-finite entries (unwritten output?)"
    err = (got64 - ref).abs()
    bad = err > bound
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} entries over the bound; worst err {err.max().item():.3e}, "
        f"bound there {bound.flatten()[err.argmax()].item():.3e}"
    )


def make_x(shape, dtype, layout, gen):
    """x of logical shape (N, L, P, Q) in one of several memory layouts."""
    N, L, P, Q = shape
    if layout == "contig":
        x = torch.randn(N, L, P, Q, generator=gen, dtype=torch.float64)
    elif layout == "transposed":  # the A-side view: contiguous (N, L, Q, P), sP == 1
        x = torch.randn(N, L, Q, P, generator=gen, dtype=torch.float64).transpose(-1, -2)
    elif layout == "step2":  # slices with step 2 in N and P
        x = torch.randn(2 * N, L, 2 * P, Q, generator=gen, dtype=torch.float64)[::2, :, ::2]
    elif layout == "permuted":  # layer-major storage
        x = torch.randn(L, N, Q, P, generator=gen, dtype=torch.float64).permute(1, 0, 3, 2)
    else:
        raise AssertionError(layout)
    # Convert without restriding: the layout must survive the dtype change.
    out = torch.empty_strided(x.shape, x.stride(), dtype=dtype, device=DEVICE)
    out.copy_(x)
    assert out.shape == (N, L, P, Q)
    return out


def make_idx(n_out, D, N, gen, empty_fraction=0.3):
    idx = torch.randint(0, N, (n_out, D), generator=gen)
    empty = torch.rand(n_out, D, generator=gen) < empty_fraction
    idx[empty] = -1
    idx[0, -1] = -1  # at least one empty slot
    return idx.to(DEVICE)


# ---------------------------------------------------------------------------------------------------
# Module-level facts
# ---------------------------------------------------------------------------------------------------


def test_availability_flags():
    assert tk.is_available()
    if not torch.cuda.is_available():
        assert tk.interpreter_active()


# ---------------------------------------------------------------------------------------------------
# pair_gram
# ---------------------------------------------------------------------------------------------------

ACC_MODE = {torch.float64: "fp64", torch.float32: "fp32"}
GRAM_CASES = [
    # (N, L, P, Q), x dtype, layout, acc dtype, block overrides
    pytest.param((3, 2, 63, 5), torch.float32, "contig", torch.float64, {}, id="N3-L2-P63-Q5-fp32-contig-acc64"),
    pytest.param((3, 1, 100, 8), torch.float32, "transposed", torch.float64, {}, id="N3-L1-P100-Q8-fp32-transposed-acc64"),
    pytest.param((4, 2, 63, 16), torch.float32, "step2", torch.float64, {"block_p": 16}, id="N4-L2-P63-Q16-fp32-step2-acc64-bp16"),
    pytest.param((3, 2, 100, 24), torch.float32, "permuted", torch.float64, {"block_q": 16}, id="N3-L2-P100-Q24-fp32-permuted-acc64-bq16"),
    pytest.param((3, 2, 100, 24), torch.float64, "transposed", torch.float64, {}, id="N3-L2-P100-Q24-fp64-transposed-acc64"),
    pytest.param((3, 2, 63, 8), torch.float32, "step2", torch.float32, {}, id="N3-L2-P63-Q8-fp32-step2-acc32"),
    pytest.param((3, 1, 63, 5), torch.float64, "contig", torch.float32, {}, id="N3-L1-P63-Q5-fp64-contig-acc32"),
    pytest.param((3, 2, 63, 8), torch.bfloat16, "transposed", torch.float64, {}, id="N3-L2-P63-Q8-bf16-transposed-acc64"),
    pytest.param((3, 2, 100, 5), torch.float16, "contig", torch.float64, {}, id="N3-L2-P100-Q5-fp16-contig-acc64"),
    pytest.param((2, 1, 64, 128), torch.float32, "transposed", torch.float64, {}, id="N2-L1-P64-Q128-fp32-transposed-acc64"),
]


@pytest.mark.parametrize("shape,dtype,layout,acc_dtype,blocks", GRAM_CASES)
def test_pair_gram_matches_oracle(shape, dtype, layout, acc_dtype, blocks):
    """acc_dtype float64 is the "fp64" mode, float32 the "fp32" mode."""
    gen = torch.Generator().manual_seed(1234)
    x = make_x(shape, dtype, layout, gen)
    N = shape[0]
    pairs = torch.tensor([[0, 1], [1, 0], [2 % N, 2 % N], [N - 1, 0], [1, N - 1]], dtype=torch.int64, device=DEVICE)
    got = tk.pair_gram(x, pairs, precision=ACC_MODE[acc_dtype], **blocks)
    assert got.dtype == acc_dtype and got.is_contiguous() and got.device == x.device
    ref = gram_oracle(x, pairs)
    P = shape[2]
    # fp64 accumulation: products of fp32/bf16/fp16 data are exact, only the P-term sum rounds.
    # fp32 accumulation: the product and sum roundings (and fp64 -> fp32 input rounding) at 2^-24.
    u = U64 if acc_dtype == torch.float64 else U32
    extra = 2 if (acc_dtype == torch.float32 and dtype == torch.float64) else 0
    bound = 2 * (P + extra) * u * gram_oracle(x, pairs, absolute=True) + 1e-300
    assert_within(got, ref, bound, "pair_gram")
    if acc_dtype == torch.float64 and dtype != torch.float64:
        rel = ((got.cpu() - ref).abs().max() / ref.abs().max()).item()
        assert rel < 1e-12, f"fp64-accumulated Gram of {dtype} data off by {rel:.3e} relative"


def test_pair_gram_fp32_products_are_exact():
    """Integer-valued fp32 data: every product and partial sum is exact in fp64 (|sum| < 2^53) but
    not in fp32 (> 2^24), so the fp64-accumulated Gram must equal the oracle bit for bit."""
    gen = torch.Generator().manual_seed(7)
    N, L, P, Q = 3, 2, 100, 8
    x = torch.randint(-(2**12), 2**12, (N, L, Q, P), generator=gen).to(torch.float32).to(DEVICE).transpose(-1, -2)
    x[0, 0, 0, 0] = 2.0**12 - 1 + 0.5  # a non-integer with a full 24-bit mantissa
    pairs = torch.tensor([[0, 1], [2, 2], [1, 0]], device=DEVICE)
    got = tk.pair_gram(x, pairs)
    ref = gram_oracle(x, pairs)
    assert ref.abs().max() > 2.0**24  # fp32 accumulation could not be exact here
    torch.testing.assert_close(got.cpu(), ref, rtol=0, atol=0)


def test_pair_gram_resolves_small_singular_values():
    """Singular values [1, 1e-3, 1e-7] of fp32 data, recovered as sqrt(eig(x^T x)).

    An exact Gram resolves sigma down to ~sqrt(eps64) ~ 1.5e-8 (eigvalsh of G has absolute error
    ~eps64 * |G|), so with the fp64-accumulated kernel sigma = 1e-7 comes back to ~1e-2 relative
    (observed <= 4e-3 over seeds). An fp32-accumulated Gram (error ~2^-24 * |G|) cannot see anything
    below ~2.4e-4: the same check fails completely, which shows the test discriminates."""
    gen = torch.Generator().manual_seed(0)
    P, Q = 100, 3
    u, _ = torch.linalg.qr(torch.randn(P, Q, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(Q, Q, generator=gen, dtype=torch.float64))
    a = (u * torch.tensor([1.0, 1e-3, 1e-7], dtype=torch.float64)) @ v.T
    x = a.to(torch.float32)[None, None].to(DEVICE)  # the fp32 data is what we decompose
    sv_ref = torch.linalg.svdvals(x[0, 0].cpu().double())
    pairs = torch.tensor([[0, 0]], device=DEVICE)

    def sv_error(acc_dtype):
        g = tk.pair_gram(x, pairs, precision=ACC_MODE[acc_dtype])[0, 0].cpu().double()
        sv = torch.linalg.eigvalsh(g).flip(0).clamp(min=0).sqrt()
        return ((sv - sv_ref).abs() / sv_ref).max().item()

    err64, err32 = sv_error(torch.float64), sv_error(torch.float32)
    assert err64 < 2e-2, f"singular values from the fp64 Gram off by {err64:.2e} relative"
    assert err32 > 0.5, f"fp32 Gram unexpectedly resolved sigma = 1e-7 ({err32:.2e}): test does not discriminate"


def test_pair_gram_empty_and_degenerate():
    x = torch.randn(2, 2, 17, 5, device=DEVICE)
    none = tk.pair_gram(x, torch.empty(0, 2, dtype=torch.int64, device=DEVICE))
    assert none.shape == (2, 0, 5, 5) and none.dtype == torch.float64
    zero_p = tk.pair_gram(x[:, :, :0], torch.tensor([[0, 1]], device=DEVICE))
    assert zero_p.shape == (2, 1, 5, 5) and torch.equal(zero_p.cpu(), torch.zeros(2, 1, 5, 5, dtype=torch.float64))
    zeros = tk.pair_gram(torch.zeros(2, 1, 20, 3, device=DEVICE), torch.tensor([[0, 1]], device=DEVICE))
    assert torch.equal(zeros.cpu(), torch.zeros(1, 1, 3, 3, dtype=torch.float64))


def _bad_gram_calls():
    x = torch.randn(3, 2, 20, 5, device=DEVICE)
    ok = torch.tensor([[0, 1]], device=DEVICE)
    return [
        pytest.param(lambda: tk.pair_gram(x[0], ok), ValueError, "x has shape", id="x-3d"),
        pytest.param(lambda: tk.pair_gram(x.to(torch.int32), ok), TypeError, "x has dtype", id="x-int"),
        pytest.param(lambda: tk.pair_gram(x, ok.to(torch.int32)), TypeError, "pairs has dtype", id="pairs-int32"),
        pytest.param(lambda: tk.pair_gram(x, torch.zeros(2, 3, dtype=torch.int64, device=DEVICE)), ValueError, r"pairs has shape \(2, 3\)", id="pairs-shape"),
        pytest.param(lambda: tk.pair_gram(x, torch.tensor([[0, 3]], device=DEVICE)), ValueError, r"\[0, 3\].*\[0, 2\]", id="pairs-too-big"),
        pytest.param(lambda: tk.pair_gram(x, torch.tensor([[-1, 0]], device=DEVICE)), ValueError, r"pairs has values in \[-1", id="pairs-negative"),
        pytest.param(lambda: tk.pair_gram(x, ok, block_p=24), ValueError, "block_p=24", id="block-p-24"),
        pytest.param(lambda: tk.pair_gram(x, ok.to("meta")), ValueError, "pairs is on device meta", id="pairs-device"),
        pytest.param(lambda: tk.pair_gram(x.cpu().numpy(), ok), TypeError, "must be torch.Tensor", id="x-numpy"),
    ]


@pytest.mark.parametrize("call,exc,match", _bad_gram_calls())
def test_pair_gram_rejects_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------------------------------
# mix_lowrank
# ---------------------------------------------------------------------------------------------------

MIX_CASES = [
    # (N, L, P, Q), n_out, D, R, x dtype, t dtype, layout, block overrides
    pytest.param((4, 2, 63, 5), 3, 3, 3, torch.float32, torch.float32, "contig", {}, id="N4-L2-P63-Q5-R3-D3-fp32-contig"),
    pytest.param((4, 1, 100, 8), 2, 3, 8, torch.float32, torch.float32, "transposed", {"block_p": 32}, id="N4-L1-P100-Q8-R8-D3-fp32-transposed-bp32"),
    pytest.param((3, 2, 63, 24), 2, 2, 3, torch.float32, torch.float32, "step2", {"block_q": 16}, id="N3-L2-P63-Q24-R3-D2-fp32-step2-bq16"),
    pytest.param((3, 1, 63, 16), 2, 2, 24, torch.float32, torch.float32, "permuted", {"block_r": 16}, id="N3-L1-P63-Q16-R24-D2-fp32-permuted-br16"),
    pytest.param((4, 2, 100, 8), 2, 3, 3, torch.float64, torch.float64, "transposed", {}, id="N4-L2-P100-Q8-R3-D3-fp64-transposed"),
    pytest.param((4, 2, 63, 8), 2, 3, 8, torch.bfloat16, torch.float32, "transposed", {}, id="N4-L2-P63-Q8-R8-D3-bf16-transposed"),
    pytest.param((4, 1, 63, 5), 2, 3, 3, torch.float16, torch.float32, "contig", {}, id="N4-L1-P63-Q5-R3-D3-fp16-contig"),
    pytest.param((2, 1, 32, 128), 1, 2, 128, torch.float32, torch.float32, "transposed", {}, id="N2-L1-P32-Q128-R128-D2-fp32"),
]


def _mix_bound(x, idx, t, out_dtype):
    """Element-wise a-priori error bound of the kernel result against the float64 oracle."""
    K = idx.shape[1] * x.shape[3]  # terms per output element
    u = U64 if t.dtype == torch.float64 else U32
    abs_sum = mix_oracle(x, idx, t, absolute=True)
    bound = 2 * K * u * abs_sum
    if out_dtype in U16:  # final rounding of the stored result to the 16-bit format (+ subnormal floor)
        u16 = U16[out_dtype]
        if out_dtype == torch.bfloat16 and tk.interpreter_active():
            # The interpreter converts fp32 -> bf16 by truncation (triton/runtime/interpreter.py,
            # _convert_float with rounding_mode=None): up to one ulp, not half. GPUs round to nearest.
            u16 = 2 * u16
        bound = bound + u16 * (mix_oracle(x, idx, t).abs() + bound) + 2.0**-24
    elif out_dtype == torch.float32 and t.dtype == torch.float64:
        bound = bound + U32 * abs_sum
    return bound + 1e-300


@pytest.mark.parametrize("shape,n_out,D,R,dtype,t_dtype,layout,blocks", MIX_CASES)
def test_mix_lowrank_matches_oracle(shape, n_out, D, R, dtype, t_dtype, layout, blocks):
    gen = torch.Generator().manual_seed(4321)
    x = make_x(shape, dtype, layout, gen)
    N, L, P, Q = shape
    idx = make_idx(n_out, D, N, gen)
    t = torch.randn(n_out, L, D, Q, R, generator=gen, dtype=torch.float64).to(DEVICE, t_dtype)
    got = tk.mix_lowrank(x, idx, t, **blocks)
    assert got.shape == (n_out, L, P, R) and got.dtype == dtype and got.is_contiguous()
    ref = mix_oracle(x, idx, t)
    assert_within(got, ref, _mix_bound(x, idx, t, dtype), "mix_lowrank")
    if dtype == torch.float32:
        # gamma_K with K = D * Q <= 256 terms: <= 256 * 2^-24 ~ 1.5e-5 of sum|x||t| in the worst case;
        # randomly signed rounding errors keep the observed max well under 1e-5 of max|ref|.
        rel = ((got.cpu().double() - ref).abs().max() / ref.abs().max()).item()
        assert rel < 1e-5, f"fp32 mix off by {rel:.3e} relative"


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=["out-fp32", "out-bf16"])
def test_mix_lowrank_into_poisoned_transposed_out(out_dtype):
    """out is a (R x P) row-major buffer seen through a transpose, itself a step-2 slice of a NaN-filled
    buffer: every element of out must be written, and nothing between its elements."""
    gen = torch.Generator().manual_seed(99)
    N, L, P, Q, R, n_out, D = 4, 2, 63, 5, 3, 3, 3
    x = make_x((N, L, P, Q), torch.float32, "transposed", gen)
    idx = make_idx(n_out, D, N, gen)
    t = torch.randn(n_out, L, D, Q, R, generator=gen).to(DEVICE)
    buf = torch.full((n_out, L, R, 2 * P), float("nan"), dtype=out_dtype, device=DEVICE)
    out = buf[..., ::2].transpose(-1, -2)
    assert out.shape == (n_out, L, P, R) and out.stride(-2) == 2
    got = tk.mix_lowrank(x, idx, t, out)
    assert got is out
    assert_within(out, mix_oracle(x, idx, t), _mix_bound(x, idx, t, out_dtype), "mix_lowrank(out=)")
    assert torch.isnan(buf[..., 1::2]).all(), "mix_lowrank wrote outside out's elements"


def test_mix_lowrank_writes_nothing_past_p_and_r():
    """out is the top-left (P x R) corner of a NaN buffer padded by a full block in P and R, so a
    missing store mask would land in the padding (not past the allocation) and be seen."""
    gen = torch.Generator().manual_seed(3)
    N, L, P, Q, R, n_out, D = 3, 2, 63, 5, 3, 2, 2
    x = make_x((N, L, P, Q), torch.float32, "contig", gen)
    idx = make_idx(n_out, D, N, gen)
    t = torch.randn(n_out, L, D, Q, R, generator=gen).to(DEVICE)
    buf = torch.full((n_out, L, P + 64, R + 16), float("nan"), device=DEVICE)
    out = buf[:, :, :P, :R]
    tk.mix_lowrank(x, idx, t, out, block_p=64, block_r=16)
    assert_within(out, mix_oracle(x, idx, t), _mix_bound(x, idx, t, torch.float32), "mix_lowrank(out=corner)")
    assert torch.isnan(buf[:, :, P:]).all() and torch.isnan(buf[:, :, :, R:]).all(), "wrote past P or R"


def test_mix_lowrank_out_dtype_and_empty_slots():
    gen = torch.Generator().manual_seed(5)
    N, L, P, Q, R = 3, 1, 20, 5, 3
    x = torch.randn(N, L, P, Q, generator=gen).to(DEVICE)
    t = torch.randn(2, L, 2, Q, R, generator=gen).to(DEVICE)
    t[1, :, 1] = float("nan")  # an empty slot's coefficients must not be read
    idx = torch.tensor([[-1, -1], [2, -1]], device=DEVICE)
    got = tk.mix_lowrank(x, idx, t, out_dtype=torch.float64)
    assert got.dtype == torch.float64
    assert torch.equal(got[0].cpu(), torch.zeros(L, P, R, dtype=torch.float64))
    ref = (x[2].double() @ t[1, :, 0].double()).cpu()
    assert_within(got[1], ref, 2 * Q * U32 * (x[2].double().abs() @ t[1, :, 0].double().abs()).cpu() + 1e-300, "slot")
    # D = 0: the empty sum.
    none = tk.mix_lowrank(x, torch.empty(2, 0, dtype=torch.int64, device=DEVICE), t[:, :, :0])
    assert torch.equal(none.cpu(), torch.zeros(2, L, P, R))
    # n_out = 0 and P = 0: nothing to launch.
    assert tk.mix_lowrank(x, idx[:0], t[:0]).shape == (0, L, P, R)
    assert tk.mix_lowrank(x[:, :, :0], idx, t).shape == (2, L, 0, R)


def _bad_mix_calls():
    N, L, P, Q, R = 3, 2, 20, 5, 3
    x = torch.randn(N, L, P, Q, device=DEVICE)
    idx = torch.tensor([[0, 1], [2, -1]], device=DEVICE)
    t = torch.randn(2, L, 2, Q, R, device=DEVICE)
    out = torch.empty(2, L, P, R, device=DEVICE)
    return [
        pytest.param(lambda: tk.mix_lowrank(x[0], idx, t), ValueError, "x has shape", id="x-3d"),
        pytest.param(lambda: tk.mix_lowrank(x, idx.to(torch.int32), t), TypeError, "idx has dtype", id="idx-int32"),
        pytest.param(lambda: tk.mix_lowrank(x, idx[0], t), ValueError, r"idx has shape \(2,\)", id="idx-1d"),
        pytest.param(lambda: tk.mix_lowrank(x, torch.tensor([[0, 3], [2, -1]], device=DEVICE), t), ValueError, r"idx has values in \[-1, 3\]", id="idx-too-big"),
        pytest.param(lambda: tk.mix_lowrank(x, torch.tensor([[0, -2], [2, -1]], device=DEVICE), t), ValueError, r"idx has values in \[-2", id="idx-below-minus-one"),
        pytest.param(lambda: tk.mix_lowrank(x, idx, t[:, :, :, :4]), ValueError, r"t has shape \(2, 2, 2, 4, 3\)", id="t-shape"),
        pytest.param(lambda: tk.mix_lowrank(x, idx, t.half()), TypeError, "t has dtype torch.float16", id="t-fp16"),
        pytest.param(lambda: tk.mix_lowrank(x.double(), idx, t), TypeError, "t has dtype torch.float32, expected torch.float64", id="x64-t32"),
        pytest.param(lambda: tk.mix_lowrank(x.bfloat16(), idx, t.double()), TypeError, "t has dtype torch.float64, expected torch.float32", id="bf16-t64"),
        pytest.param(lambda: tk.mix_lowrank(x, idx, t, out[:, :, :-1]), ValueError, "out has shape", id="out-shape"),
        pytest.param(lambda: tk.mix_lowrank(x, idx, t, out.int()), TypeError, "out has dtype", id="out-int"),
        pytest.param(lambda: tk.mix_lowrank(x, idx, t, out, out_dtype=torch.float64), TypeError, "out_dtype", id="out-dtype-conflict"),
        pytest.param(lambda: tk.mix_lowrank(x, idx, t, out_dtype=torch.int64), ValueError, "out_dtype=torch.int64", id="out-dtype-int"),
        pytest.param(lambda: tk.mix_lowrank(x, idx, t.to("meta")), ValueError, "t is on device meta", id="t-device"),
        pytest.param(lambda: tk.mix_lowrank(x, idx, t, block_r=8), ValueError, "block_r=8", id="block-r-8"),
    ]


@pytest.mark.parametrize("call,exc,match", _bad_mix_calls())
def test_mix_lowrank_rejects_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_cpu_tensors_need_the_interpreter():
    if tk.interpreter_active():
        pytest.skip("the interpreter is active: CPU tensors are accepted")
    with pytest.raises(ValueError, match="need a CUDA tensor"):
        tk.pair_gram(torch.randn(2, 1, 16, 4), torch.tensor([[0, 1]]))


# ---------------------------------------------------------------------------------------------------
# Precision modes, grouped pair_gram, layer-major grids, check_index (fresh inputs, several seeds)
# ---------------------------------------------------------------------------------------------------
#
# Error bounds per mode, element-wise against the float64 oracle, S = |x_j|^T |x_k| (or sum |x||t|),
# K = terms per element. They are the bounds the GPU must meet; under the interpreter every tl.dot is
# an exact-input numpy matmul in the accumulator dtype, so there they only check the wiring (indices,
# masks, transposes, dtypes), not the tensor-core rounding -- which the GPU tests below do.
# * "fp64": products exact for <= 32-bit data, sums at 2^-53: 2 K u64 S.
# * "fp32" / "ieee": fp32 FMA accumulation: 2 (K + 2) u32 S (+2 for fp64 data rounded to fp32).
# * tensor-core fp32 accumulation (tf32x3, native16, split16): the MMA adder may truncate instead of
#   round, so u = 2^-23 for the sums: 2 (K + 2) 2^-23 S.
# * "tf32x3" adds the split error per product: a = a_hi + a_lo with a_hi = tf32(a) (rel. 2^-11) and
#   a_lo truncated to tf32 by the MMA (rel. 2^-10 of a_lo): |a b - (a_hi b_hi + a_hi b_lo + a_lo b_hi)|
#   <= (2^-22 + 2 * 2^-21 + O(2^-32)) |a||b| < 2^-19 |a||b|, so + 2^-19 S.
# * "split16" adds the split of t: |t - t_hi - t_lo| <= u16^2 |t| + the 16-bit subnormal spacing / 2
#   (2^-25 for fp16, 2^-134 for bf16): + sum |x| (u16^2 |t| + tiny).
TC_U = 2.0**-23  # fp32 accumulation on tensor cores (truncating adder allowed)
TF32X3_SPLIT = 2.0**-19
SUBNORMAL_HALF = {torch.float16: 2.0**-25, torch.bfloat16: 2.0**-134}


def gram_bound(x, pairs, precision):
    P = x.shape[2]
    S = gram_oracle(x, pairs, absolute=True)
    if precision == "fp64":
        return 2 * P * U64 * S + 1e-300
    u = U32 if precision == "fp32" else TC_U
    bound = 2 * (P + 2) * u * S
    if precision == "tf32x3":
        bound = bound + TF32X3_SPLIT * S
    return bound + 1e-300


def mix_bound(x, idx, t, precision, out_dtype):
    K = idx.shape[1] * x.shape[3]
    S = mix_oracle(x, idx, t, absolute=True)
    if t.dtype == torch.float64:
        bound = 2 * K * U64 * S
    else:
        bound = 2 * (K + 2) * (U32 if precision == "ieee" else TC_U) * S
    if precision == "tf32x3":
        bound = bound + TF32X3_SPLIT * S
    if precision == "split16":
        u16 = U16[x.dtype]
        bound = bound + mix_oracle(x, idx, t.abs() * u16**2 + SUBNORMAL_HALF[x.dtype], absolute=True)
    if out_dtype in U16:
        u16 = U16[out_dtype] * (2 if (out_dtype == torch.bfloat16 and tk.interpreter_active()) else 1)
        bound = bound + u16 * (mix_oracle(x, idx, t).abs() + bound) + 2.0**-24
    elif out_dtype == torch.float32 and t.dtype == torch.float64:
        bound = bound + U32 * S
    return bound + 1e-300


def ring_pairs(N, dist=2):
    """The consensus graph's pairs for a ring: unordered (j <= k) at distance 0..dist, as _graph makes them."""
    return sorted({tuple(sorted((j, (j + d) % N))) for j in range(N) for d in range(dist + 1)})


def random_pairs(N, T, gen):
    """Arbitrary ordered pairs: duplicates, self pairs, both orientations."""
    p = torch.randint(0, N, (T, 2), generator=gen)
    p[0] = torch.tensor([N - 1, 0])
    p[1] = torch.tensor([0, N - 1])
    p[2] = torch.tensor([1, 1])
    return p


# x dtype -> the precisions that take it; "native16" needs 16-bit data. bf16 is left to the GPU tests:
# the interpreter stores bf16 as uint16 and its tl.dot would multiply the integers.
GRAM_MODES = [
    ("fp64", torch.float32),
    ("fp64", torch.float16),
    ("fp64", torch.float64),
    ("fp32", torch.float32),
    ("fp32", torch.float16),
    ("tf32x3", torch.float32),
    ("tf32x3", torch.float64),
    ("native16", torch.float16),
]


@pytest.mark.parametrize("grouped", [False, True], ids=["per-pair", "grouped"])
@pytest.mark.parametrize("layout,shape", [("contig", (5, 3, 70, 16)), ("transposed", (5, 2, 100, 24)), ("step2", (4, 2, 63, 5))])
@pytest.mark.parametrize("precision,dtype", GRAM_MODES, ids=[f"{p}-{str(d)[6:]}" for p, d in GRAM_MODES])
def test_pair_gram_modes(precision, dtype, layout, shape, grouped):
    N = shape[0]
    for seed in (0, 1, 2):
        gen = torch.Generator().manual_seed(100 * seed + 7)
        x = make_x(shape, dtype, layout, gen)
        pairs = torch.tensor(ring_pairs(N) if seed != 1 else random_pairs(N, 11, gen).tolist(), device=DEVICE)
        groups = pair_groups(pairs) if grouped else None
        got = tk.pair_gram(x, pairs, precision=precision, groups=groups)
        want_dtype = torch.float64 if precision == "fp64" else torch.float32
        assert got.dtype == want_dtype and got.shape == (shape[1], pairs.shape[0], shape[3], shape[3]) and got.is_contiguous()
        assert_within(got, gram_oracle(x, pairs), gram_bound(x, pairs, precision), f"pair_gram[{precision}] seed {seed}")
        if seed == 0:
            # out_dtype=float64: the same accumulator stored wider; check_index=False: same launch, no check.
            wide = tk.pair_gram(x, pairs, precision=precision, groups=groups, out_dtype=torch.float64, check_index=False)
            assert wide.dtype == torch.float64
            torch.testing.assert_close(wide.cpu(), got.cpu().double(), rtol=0, atol=0)


def test_pair_gram_grouped_block_overrides_and_multiple_q_tiles():
    """Q = 40 with block_q = 16: 3 x 3 Q tiles per group, flipped slots stored transposed, 8-slot
    groups that leave empty slots; and the per-pair kernel with the same overrides."""
    gen = torch.Generator().manual_seed(3)
    N, L, P, Q = 6, 2, 45, 40
    x = make_x((N, L, P, Q), torch.float32, "transposed", gen)
    pairs = torch.tensor(ring_pairs(N, dist=2) + [(3, 0), (5, 5)], device=DEVICE)
    ref, bound = gram_oracle(x, pairs), gram_bound(x, pairs, "fp64")
    for group_size in (None, 1, 8):
        groups = pair_groups(pairs, group_size=group_size)
        assert (groups.partner >= 0).sum().item() == pairs.shape[0]
        got = tk.pair_gram(x, pairs, groups=groups, block_p=32, block_q=16)
        assert_within(got, ref, bound, f"grouped pair_gram, group_size={group_size}")
    assert_within(tk.pair_gram(x, pairs, block_p=32, block_q=16), ref, bound, "per-pair pair_gram, overrides")


MIX_MODES = [
    ("ieee", torch.float32, torch.float32),
    ("tf32x3", torch.float32, torch.float32),
    ("tf32x3", torch.float16, torch.float16),
    ("split16", torch.float16, torch.float16),
    ("split16", torch.float16, torch.float32),
    ("ieee", torch.float64, torch.float64),
    ("tf32x3", torch.float64, torch.float64),  # fp64 data: fp64 products whatever is asked
]


@pytest.mark.parametrize(
    "layout,shape,D,R,blocks",
    [
        ("contig", (5, 3, 70, 16), 3, 16, {}),
        ("transposed", (5, 2, 100, 16), 3, 16, {}),
        ("step2", (4, 2, 63, 5), 4, 3, {}),
        ("permuted", (4, 2, 40, 24), 2, 20, {"block_q": 16, "block_r": 16, "block_p": 16}),
    ],
    ids=["B-like", "AmT-like", "step2-Q5-R3", "permuted-Q24-R20-overrides"],
)
@pytest.mark.parametrize("precision,dtype,out_dtype", MIX_MODES, ids=[f"{p}-{str(d)[6:]}-out{str(o)[6:]}" for p, d, o in MIX_MODES])
def test_mix_lowrank_modes(precision, dtype, out_dtype, layout, shape, D, R, blocks):
    N, L, P, Q = shape
    n_out = N + 1  # n_out != L and != N: a wrong (l, i) decomposition of the layer-major grid shows
    t_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    for seed in (0, 1, 2):
        gen = torch.Generator().manual_seed(1000 + seed)
        x = make_x(shape, dtype, layout, gen)
        idx = make_idx(n_out, D, N, gen)
        t = torch.randn(n_out, L, D, Q, R, generator=gen, dtype=torch.float64)
        t = (t * torch.exp2(torch.randint(-6, 7, t.shape, generator=gen).double())).to(DEVICE, t_dtype)
        if seed == 2:  # out as the transposed view A_new.mT, like consensus_exact's A side
            out = torch.empty(n_out, L, R, P, dtype=out_dtype, device=DEVICE).transpose(-1, -2)
        else:
            out = None
        got = tk.mix_lowrank(x, idx, t, out, out_dtype=None if out is not None else out_dtype, precision=precision, **blocks)
        assert got.dtype == out_dtype and got.shape == (n_out, L, P, R)
        assert_within(got, mix_oracle(x, idx, t), mix_bound(x, idx, t, precision, out_dtype), f"mix_lowrank[{precision}] seed {seed}")
        if seed == 0:
            again = tk.mix_lowrank(x, idx, t, out_dtype=out_dtype, precision=precision, check_index=False, **blocks)
            assert torch.equal(again.cpu(), got.cpu())


def test_split16_beats_plain_16bit_coefficients():
    """split16 must carry t's low part: rounding t to fp16 alone (one product) misses by ~2^-12 |t|,
    which the split16 bound (~2^-22 |t|, fp32 output) excludes."""
    gen = torch.Generator().manual_seed(8)
    N, L, P, Q, R, n_out, D = 3, 1, 40, 16, 16, 2, 2
    x = make_x((N, L, P, Q), torch.float16, "contig", gen)
    idx = torch.tensor([[0, 1], [2, -1]], device=DEVICE)
    t = (torch.rand(n_out, L, D, Q, R, generator=gen, dtype=torch.float64) + 0.5).to(DEVICE, torch.float32)
    got = tk.mix_lowrank(x, idx, t, out_dtype=torch.float32, precision="split16")
    bound = mix_bound(x, idx, t, "split16", torch.float32)
    assert_within(got, mix_oracle(x, idx, t), bound, "split16")
    hi_only = mix_oracle(x, idx, t.half().float())
    assert ((hi_only - mix_oracle(x, idx, t)).abs() > bound).any(), "test does not discriminate"


def _bad_mode_calls():
    x = torch.randn(3, 2, 20, 5, device=DEVICE)
    ok = torch.tensor([[0, 1], [1, 2]], device=DEVICE)
    idx = torch.tensor([[0, 1], [2, -1]], device=DEVICE)
    t = torch.randn(2, 2, 2, 5, 3, device=DEVICE)
    groups = pair_groups(torch.tensor([[0, 1], [2, 2]], device=DEVICE))
    return [
        pytest.param(lambda: tk.pair_gram(x, ok, precision="tf32"), ValueError, "precision='tf32'", id="gram-unknown"),
        pytest.param(lambda: tk.pair_gram(x, ok, precision="native16"), ValueError, "native16' needs bfloat16 or float16", id="gram-native16-fp32"),
        pytest.param(lambda: tk.pair_gram(x, ok, out_dtype=torch.float32), ValueError, "out_dtype=torch.float32, expected one of .torch.float64,.", id="gram-fp64-out32"),
        pytest.param(lambda: tk.pair_gram(x, ok, out_dtype=torch.float16, precision="fp32"), ValueError, "out_dtype=torch.float16", id="gram-out16"),
        pytest.param(lambda: tk.pair_gram(x, ok, groups=groups), ValueError, "groups was made for different pairs", id="gram-groups-other-pairs"),
        pytest.param(lambda: tk.pair_gram(x, ok[:1], groups=groups), ValueError, "groups was made for different pairs", id="gram-groups-count"),
        pytest.param(lambda: tk.mix_lowrank(x, idx, t, precision="tf32"), ValueError, "precision='tf32'", id="mix-unknown"),
        pytest.param(lambda: tk.mix_lowrank(x, idx, t, precision="split16"), ValueError, "split16' needs bfloat16 or float16", id="mix-split16-fp32"),
        pytest.param(lambda: tk.mix_lowrank(x.double(), idx, t.double(), precision="split16"), ValueError, "split16' needs", id="mix-split16-fp64"),
    ]


@pytest.mark.parametrize("call,exc,match", _bad_mode_calls())
def test_modes_reject_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_check_index_false_skips_only_the_range_check():
    """check_index=False skips the host-side range check (the one synchronisation) but none of the
    other validation."""
    x = torch.randn(3, 1, 20, 5, device=DEVICE)
    with pytest.raises(ValueError, match="pairs has values"):
        tk.pair_gram(x, torch.tensor([[0, 3]], device=DEVICE))
    with pytest.raises(TypeError, match="pairs has dtype"):
        tk.pair_gram(x, torch.tensor([[0, 1]], device=DEVICE, dtype=torch.int32), check_index=False)
    with pytest.raises(ValueError, match="t has shape"):
        tk.mix_lowrank(x, torch.tensor([[0]], device=DEVICE), torch.randn(1, 1, 1, 4, 2, device=DEVICE), check_index=False)


def test_autotuned_launch_path(monkeypatch):
    """The wrappers' autotuned path (config pruning, keys, grid from the chosen BLOCK_P, caching) run
    under the interpreter: autotuners with a stand-in benchmark that runs each config once. Every
    config writes the whole output, so the result after benchmarking is right; the second call with
    the same key reuses the cached choice."""
    if not tk.interpreter_active():
        pytest.skip("on a GPU the real autotuners run in the GPU tests")
    import triton

    runs = []

    def bench(kernel_call, quantiles):
        kernel_call()
        runs.append(1)
        return [float(-len(runs))] * 3  # the last config benchmarked "wins": not the default one

    def tuned(kernel, configs, key, prune):
        return triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": prune}, do_bench=bench)(kernel)

    monkeypatch.setattr(gram, "_pair_gram_tuned", tuned(gram._pair_gram_kernel, gram.CONFIGS, gram._KEY, gram._prune))
    monkeypatch.setattr(mix, "_mix_lowrank_tuned", tuned(mix._mix_lowrank_kernel, mix.CONFIGS, mix._KEY, mix._prune))
    gen = torch.Generator().manual_seed(21)
    x = make_x((5, 2, 300, 16), torch.float32, "transposed", gen)
    pairs = torch.tensor(ring_pairs(5), device=DEVICE)
    for groups in (None, pair_groups(pairs)):
        before = len(runs)
        got = tk.pair_gram(x, pairs, groups=groups, precision="tf32x3")
        assert len(runs) - before > 1, "no autotuning happened"
        assert_within(got, gram_oracle(x, pairs), gram_bound(x, pairs, "tf32x3"), "autotuned pair_gram")
    idx = make_idx(6, 3, 5, gen)
    t = torch.randn(6, 2, 3, 16, 16, generator=gen).to(DEVICE)
    out = torch.full((6, 2, 300, 16), float("nan"), device=DEVICE)
    before = len(runs)
    tk.mix_lowrank(x, idx, t, out)
    assert len(runs) - before > 1
    chosen = mix._mix_lowrank_tuned.best_config
    assert chosen.kwargs["BLOCK_P"] != mix._BLOCK_P or chosen.num_warps != launch.NUM_WARPS
    assert_within(out, mix_oracle(x, idx, t), mix_bound(x, idx, t, "ieee", torch.float32), "autotuned mix_lowrank")
    before = len(runs)
    tk.mix_lowrank(x, idx, t, out)
    assert len(runs) == before, "the cached choice was not reused"


# ---------------------------------------------------------------------------------------------------
# On a GPU (skipped elsewhere): every mode at the benchmark's per-layer shape, CUDA graphs, no syncs
# ---------------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs the compiled kernels)")


def _gpu_case(dtype, layout, seed, N=6, L=3, P=4096, Q=16):
    gen = torch.Generator().manual_seed(seed)
    return make_x((N, L, P, Q), dtype, layout, gen), gen


GPU_GRAM = GRAM_MODES + [("fp64", torch.bfloat16), ("fp32", torch.bfloat16), ("tf32x3", torch.bfloat16), ("native16", torch.bfloat16)]


@needs_cuda
@pytest.mark.parametrize("grouped", [False, True], ids=["per-pair", "grouped"])
@pytest.mark.parametrize("layout", ["contig", "transposed"], ids=["B-like", "AmT-like"])
@pytest.mark.parametrize("precision,dtype", GPU_GRAM, ids=[f"{p}-{str(d)[6:]}" for p, d in GPU_GRAM])
def test_gpu_pair_gram_modes(precision, dtype, layout, grouped):
    """P = 4096, Q = 16 (the benchmark's per-layer shape), ring pairs; autotuned launch and an explicit
    config. Bounds as above; in addition the relative error over the block must be at the mode's
    level: fp64 < 1e-13, ieee fp32 < 4096 * 2^-24 ~ 2.4e-4 worst case, observed far lower."""
    x, _ = _gpu_case(dtype, layout, seed=5)
    pairs = torch.tensor(ring_pairs(x.shape[0]), device="cuda")
    groups = pair_groups(pairs) if grouped else None
    ref, bound = gram_oracle(x, pairs), gram_bound(x, pairs, precision)
    for blocks in ({}, {"block_p": 64}):
        got = tk.pair_gram(x, pairs, precision=precision, groups=groups, **blocks)
        assert_within(got, ref, bound, f"pair_gram[{precision}] {blocks}")
        rel = ((got.cpu().double() - ref).abs().max() / ref.abs().max()).item()
        limit = {"fp64": 1e-13, "fp32": 1e-5, "tf32x3": 1e-5, "native16": 1e-5}[precision]
        assert rel < limit, f"pair_gram[{precision}] relative error {rel:.2e}"


GPU_MIX = MIX_MODES + [("split16", torch.bfloat16, torch.bfloat16), ("tf32x3", torch.bfloat16, torch.bfloat16), ("ieee", torch.bfloat16, torch.bfloat16)]


@needs_cuda
@pytest.mark.parametrize("layout", ["contig", "transposed"], ids=["B-like", "AmT-like"])
@pytest.mark.parametrize("precision,dtype,out_dtype", GPU_MIX, ids=[f"{p}-{str(d)[6:]}-out{str(o)[6:]}" for p, d, o in GPU_MIX])
def test_gpu_mix_lowrank_modes(precision, dtype, out_dtype, layout):
    """Ring neighbourhoods (D = 3) at P = 4096, Q = R = 16; out is B_new-like (contiguous) for the
    B-like layout and A_new.mT-like for the other. 16-bit outputs: the bound is dominated by the
    output rounding u16 |out| -- split16's own error (u16^2 |t|) must not show."""
    x, gen = _gpu_case(dtype, layout, seed=9)
    N, L, P, Q = x.shape
    R, D = 16, 3
    idx = torch.tensor([[(i - 1) % N, i, (i + 1) % N] for i in range(N)], device="cuda")
    idx[0, 2] = -1
    t_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    t = torch.randn(N, L, D, Q, R, generator=gen, dtype=torch.float64).to("cuda", t_dtype)
    if layout == "contig":
        out = torch.empty(N, L, P, R, dtype=out_dtype, device="cuda")
    else:
        out = torch.empty(N, L, R, P, dtype=out_dtype, device="cuda").mT
    ref = mix_oracle(x, idx, t)
    for blocks in ({}, {"block_p": 64}):
        tk.mix_lowrank(x, idx, t, out, precision=precision, **blocks)
        assert_within(out, ref, mix_bound(x, idx, t, precision, out_dtype), f"mix_lowrank[{precision}] {blocks}")


@needs_cuda
def test_gpu_cuda_graph_capture_and_no_sync():
    """After a first (autotuning) call, check_index=False launches do not synchronise (CUDA sync
    debug mode "error" raises on any) and are captured into a CUDA graph whose replay follows new
    inputs written into the same buffers."""
    x, gen = _gpu_case(torch.float32, "transposed", seed=13, N=5, L=2, P=1000, Q=16)
    N, L, P, Q = x.shape
    pairs = torch.tensor(ring_pairs(N), device="cuda")
    groups = pair_groups(pairs)
    idx = torch.tensor([[(i - 1) % N, i, (i + 1) % N] for i in range(N)], device="cuda")
    t = torch.randn(N, L, 3, Q, 16, generator=gen).cuda()
    out = torch.empty(N, L, 16, P, device="cuda").mT
    modes = [dict(), dict(precision="tf32x3", out_dtype=torch.float64)]

    def step():
        grams = [tk.pair_gram(x, pairs, groups=groups, check_index=False, **m) for m in modes]
        grams.append(tk.pair_gram(x, pairs, check_index=False))
        tk.mix_lowrank(x, idx, t, out, precision="tf32x3", check_index=False)
        return grams

    step()  # autotunes (benchmarks, synchronises) once per key
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        grams = step()
    x.copy_(torch.randn(x.shape, generator=gen).cuda())
    t.copy_(torch.randn(t.shape, generator=gen).cuda())
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert_within(grams[0], gram_oracle(x, pairs), gram_bound(x, pairs, "fp64"), "graph pair_gram fp64 grouped")
    assert_within(grams[1], gram_oracle(x, pairs), gram_bound(x, pairs, "tf32x3"), "graph pair_gram tf32x3")
    assert_within(grams[2], gram_oracle(x, pairs), gram_bound(x, pairs, "fp64"), "graph pair_gram fp64")
    assert_within(out, mix_oracle(x, idx, t), mix_bound(x, idx, t, "tf32x3", torch.float32), "graph mix_lowrank")


# ---------------------------------------------------------------------------------------------------
# Ahead-of-time build for NVIDIA GPUs (no GPU needed)
# ---------------------------------------------------------------------------------------------------

# Run in a subprocess: the kernels must be defined with TRITON_INTERPRET off, and a backend bug can
# abort the process (Triton 3.x asserts in MMAv2 lowering for a 16-bit load feeding an fp64 tl.dot,
# which pair_gram's _dot_operand works around). Exit code 77 = this Triton cannot build here: skip.
# Every kernel x precision x data dtype the wrappers accept is built for sm_80 and sm_90 at the
# block sizes of the main case (Q = R = 16) and at a large-Q tile, and the PTX is checked for the
# instructions the mode promises: tensor-core MMA (mma.sync / wgmma) for fp64, tf32x3, native16 and
# split16 (with cvt.rna.tf32 for tf32x3), none for the FFMA modes. Importing the module with
# TRITON_INTERPRET off also builds the autotuner handles.
_AOT_SCRIPT = r"""
import sys
try:
    import triton
    from triton.backends import backends
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as err:  # a Triton whose AOT API differs
    print("cannot set up the AOT build:", repr(err))
    sys.exit(77)
if "nvidia" not in backends:
    sys.exit(77)
import decaf_kernels._triton as pkg
from decaf_kernels._triton import gram, mix
assert not pkg.interpreter_active()
assert gram._pair_gram_tuned is not None and mix._mix_lowrank_tuned is not None


def source(fn, ptrs, consts):
    names = fn.arg_names
    sig = {n: "constexpr" if n in consts else ("*" + ptrs[n] if n.endswith("_ptr") else "i32") for n in names}
    try:
        return ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()})
    except TypeError as err:  # ASTSource's signature differs in this Triton
        print("cannot set up the AOT build:", repr(err))
        sys.exit(77)


builds = []  # (name, source, arch, num_warps, expected instruction class)
gram_modes = [("fp32", "fp64", "fp64"), ("bf16", "fp64", "fp64"), ("fp16", "fp64", "fp64"), ("fp64", "fp64", "fp64"),
              ("fp32", "fp32", "fp32"), ("fp64", "fp32", "fp64"), ("bf16", "fp32", "fp32"), ("fp16", "fp32", "fp32"),
              ("fp32", "tf32x3", "fp32"), ("fp32", "tf32x3", "fp64"), ("fp64", "tf32x3", "fp32"),
              ("bf16", "tf32x3", "fp32"), ("fp16", "tf32x3", "fp32"), ("bf16", "native16", "fp32"),
              ("fp16", "native16", "fp64")]
mix_modes = [("fp32", "fp32", "fp32", "ieee"), ("fp32", "fp32", "fp32", "tf32x3"), ("bf16", "fp32", "bf16", "ieee"),
             ("bf16", "fp32", "bf16", "tf32x3"), ("bf16", "fp32", "bf16", "split16"), ("bf16", "fp32", "fp32", "split16"),
             ("fp16", "fp32", "fp16", "split16"), ("fp16", "fp32", "fp16", "ieee"), ("fp64", "fp64", "fp64", "ieee")]
for arch in (80, 90):
    for x, prec, out in gram_modes:
        cls = "fma" if prec == "fp32" else prec
        ptrs = {"x_ptr": x, "gj_ptr": "i64", "gk_ptr": "i64", "gt_ptr": "i64", "out_ptr": out}
        for G, bp, bq, warps in ((1, 128, 16, 8), (1, 64, 64, 8), (4, 64, 16, 4)):
            consts = {"G": G, "BLOCK_P": bp, "BLOCK_Q": bq, "PRECISION": prec}
            builds.append((f"pair_gram x={x} {prec} out={out} G={G} BLOCK_P={bp} BLOCK_Q={bq} sm_{arch}",
                           source(gram._pair_gram_kernel, ptrs, consts), arch, warps, cls))
    for x, t, out, prec in mix_modes:
        cls = "fp64" if x == "fp64" else ("fma" if prec == "ieee" else prec)
        for bp, bq, br in ((128, 16, 16), (64, 32, 64)):
            ptrs = {"x_ptr": x, "idx_ptr": "i64", "t_ptr": t, "out_ptr": out}
            consts = {"BLOCK_P": bp, "BLOCK_Q": bq, "BLOCK_R": br, "PRECISION": prec}
            builds.append((f"mix_lowrank x={x} t={t} out={out} {prec} BLOCK_P={bp} BLOCK_Q={bq} BLOCK_R={br} sm_{arch}",
                           source(mix._mix_lowrank_kernel, ptrs, consts), arch, 8, cls))

bad = []
for name, src, arch, warps, cls in builds:
    print("building", name, flush=True)
    ptx = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps}).asm["ptx"]
    tensor_core = "mma.sync" in ptx or "wgmma.mma_async" in ptx
    if tensor_core != (cls != "fma") or (cls == "tf32x3" and "cvt.rna.tf32" not in ptx):
        bad.append(f"{name}: expected {cls}, tensor-core MMA in PTX: {tensor_core}")
if bad:
    print("WRONG INSTRUCTIONS:\n" + "\n".join(bad))
    sys.exit(1)
print("all built", len(builds))
"""


def test_kernels_build_for_nvidia_gpus(tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path / "triton-cache"))
    proc = subprocess.run(
        [sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode == 77:
        pytest.skip(f"this Triton cannot build NVIDIA kernels here: {proc.stdout.strip()[-300:]}")
    assert proc.returncode == 0, f"AOT build failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "all built" in proc.stdout
