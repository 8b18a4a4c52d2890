"""Tests of decaf_kernels.triton_kernels (pair_gram, mix_lowrank) against float64 einsum oracles.

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
import pathlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="triton is not installed: the Triton kernels cannot be tested")

_MODULE_PATH = pathlib.Path(__file__).resolve().parents[1] / "decaf_kernels" / "triton_kernels.py"


def _load_module():
    """The package module, or a private copy loaded from its path.

    The private copy is used when the package cannot be imported (it is being wired in), or when an
    earlier test imported it before TRITON_INTERPRET was set: Triton decides interpretation at
    ``@triton.jit`` time, so such a copy could not run on CPU tensors.
    """
    try:
        from decaf_kernels import triton_kernels as module
    except Exception:  # noqa: BLE001 - a broken sibling module must not hide these tests
        module = None
    if module is not None and (torch.cuda.is_available() or module.interpreter_active()):
        return module
    spec = importlib.util.spec_from_file_location("_decaf_triton_kernels_under_test", _MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tk = _load_module()
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
    gen = torch.Generator().manual_seed(1234)
    x = make_x(shape, dtype, layout, gen)
    N = shape[0]
    pairs = torch.tensor([[0, 1], [1, 0], [2 % N, 2 % N], [N - 1, 0], [1, N - 1]], dtype=torch.int64, device=DEVICE)
    got = tk.pair_gram(x, pairs, acc_dtype=acc_dtype, **blocks)
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
        g = tk.pair_gram(x, pairs, acc_dtype=acc_dtype)[0, 0].cpu().double()
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
        pytest.param(lambda: tk.pair_gram(x, ok, acc_dtype=torch.float16), TypeError, "acc_dtype", id="acc-fp16"),
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
        pytest.param(lambda: tk.mix_lowrank(x.double(), idx, t), TypeError, "expected t in torch.float64", id="x64-t32"),
        pytest.param(lambda: tk.mix_lowrank(x.bfloat16(), idx, t.double()), TypeError, "expected t in torch.float32", id="bf16-t64"),
        pytest.param(lambda: tk.mix_lowrank(x, idx, t, out[:, :, :-1]), ValueError, "out has shape", id="out-shape"),
        pytest.param(lambda: tk.mix_lowrank(x, idx, t, out.int()), TypeError, "out has dtype", id="out-int"),
        pytest.param(lambda: tk.mix_lowrank(x, idx, t, out, out_dtype=torch.float64), TypeError, "out_dtype", id="out-dtype-conflict"),
        pytest.param(lambda: tk.mix_lowrank(x, idx, t, torch.empty(2, L, P, 1, device=DEVICE).expand(2, L, P, R)), ValueError, "strides", id="out-expanded"),
        pytest.param(lambda: tk.mix_lowrank(x, idx, t, x[:2, :, :, :R]), ValueError, "shares memory with x", id="out-aliases-x"),
        pytest.param(lambda: tk.mix_lowrank(x, idx, t, out_dtype=torch.int64), TypeError, "out_dtype", id="out-dtype-int"),
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
# Ahead-of-time build for NVIDIA GPUs (no GPU needed)
# ---------------------------------------------------------------------------------------------------

# Run in a subprocess: the kernels must be defined with TRITON_INTERPRET off, and a backend bug can
# abort the process (Triton 3.x asserts in MMAv2 lowering for a 16-bit load feeding an fp64 tl.dot,
# which pair_gram's _dot_operand works around). Exit code 77 = this Triton cannot build here: skip.
_AOT_SCRIPT = r"""
import importlib.util, sys
try:
    import triton
    from triton.backends import backends
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    if "nvidia" not in backends:
        sys.exit(77)
    spec = importlib.util.spec_from_file_location("_decaf_triton_kernels_aot", sys.argv[1])
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    assert not m.interpreter_active()

    def source(fn, types, consts):
        names = fn.arg_names
        sig = dict(zip(names, types + ["constexpr"] * len(consts)))
        return ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()})

    builds = []
    for x, acc, bq, arch in [("fp32", "fp64", 64, 90), ("bf16", "fp64", 64, 90), ("fp16", "fp64", 16, 80),
                             ("fp64", "fp64", 64, 90), ("fp32", "fp32", 64, 90)]:
        src = source(m._pair_gram_kernel, ["*" + x, "*i64", "*" + acc] + ["i32"] * 9, {"BLOCK_P": 64, "BLOCK_Q": bq})
        builds.append((f"pair_gram x={x} acc={acc} BLOCK_Q={bq} sm_{arch}", src, arch))
    for x, t, out in [("fp32", "fp32", "fp32"), ("bf16", "fp32", "bf16"), ("fp64", "fp64", "fp64")]:
        src = source(m._mix_lowrank_kernel, ["*" + x, "*i64", "*" + t, "*" + out] + ["i32"] * 20,
                     {"BLOCK_P": 64, "BLOCK_Q": 32, "BLOCK_R": 64})
        builds.append((f"mix_lowrank x={x} t={t} out={out} sm_90", src, 90))
except (ImportError, AttributeError, TypeError) as err:  # a Triton whose AOT API differs
    print("cannot set up the AOT build:", repr(err))
    sys.exit(77)

for name, src, arch in builds:
    print("building", name, flush=True)
    triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": m._NUM_WARPS})
print("all built")
"""


def test_kernels_build_for_nvidia_gpus(tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path / "triton-cache"))
    proc = subprocess.run(
        [sys.executable, "-c", _AOT_SCRIPT, str(_MODULE_PATH)], env=env, capture_output=True, text=True, timeout=300
    )
    if proc.returncode == 77:
        pytest.skip(f"this Triton cannot build NVIDIA kernels here: {proc.stdout.strip()[-300:]}")
    assert proc.returncode == 0, f"AOT build failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "all built" in proc.stdout
