"""The NVRTC build of the CUDA small core (decaf_kernels._nvrtc): its source, its host logic, its selection.

On a CPU-only machine NVRTC still compiles (it needs no GPU), so the kernel source is compiled here for two
architectures, and the Python copy of the host code (size buckets, shared-memory placements, workspace) is checked
against the C++ host code it mirrors. What needs a GPU (the launches, the same results as the nvcc build) is in
tests/test_cuda_small_core.py, which runs every kernel test on each available build, and at the end of this file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from decaf_kernels import _backend, _ext, _nvrtc

ROOT = Path(__file__).resolve().parents[1]
HOST_CU = ROOT / "csrc" / "cuda" / "small_core_block.cu"


def _nvrtc_bindings():
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
        return nvrtc
    except Exception as err:  # noqa: BLE001 - CuPy or libnvrtc missing
        pytest.skip(f"CuPy with NVRTC is not installed here ({type(err).__name__}: {err}); the [cuda] extra and "
                    "requirements-dev.txt install it")


def test_source_is_one_self_contained_string():
    src = _nvrtc.kernel_source()
    assert not re.search(r'^\s*#\s*include\s+"', src, re.M), "a quoted include was left for NVRTC to resolve"
    assert "small_core_block_kernel" in src and "jacobi_angle" in src
    # each header pasted once (#pragma once would hide a second copy from the compiler, but not from the cache key)
    assert src.count("constexpr int kSmallCoreNoConvergence") == 1
    # a source checkout (editable install) reads csrc/ itself, an installed wheel its copy in _cuda_src: either way
    # the text is the checkout's
    root = _nvrtc.source_root()
    assert root in (ROOT / "csrc", Path(_nvrtc.__file__).resolve().parent / "_cuda_src"), root
    checkout = "\n".join(_nvrtc._flatten(ROOT / "csrc" / _nvrtc.KERNEL_FILE, ROOT / "csrc", set())) + "\n"
    assert src == checkout


@pytest.mark.parametrize("m,mask,arch", [(1, 15, "sm_90"), (48, 12, "sm_80"), (128, 4, "sm_90"), (256, 0, "sm_80")])
def test_kernel_compiles_with_nvrtc(m, mask, arch):
    """The exact string and options the run-time build uses compile for the instantiation that m and the placement
    select (compiled for an explicit architecture: no GPU needed)."""
    nvrtc = _nvrtc_bindings()
    name = _nvrtc.kernel_name(m, mask)
    prog = nvrtc.createProgram(_nvrtc.kernel_source(), "small_core_block_kernel.cu", [], [])
    nvrtc.addNameExpression(prog, name)
    try:
        nvrtc.compileProgram(prog, [*_nvrtc.NVRTC_OPTIONS, f"-arch={arch}"])
    except Exception as err:  # noqa: BLE001 - show the compiler's log
        pytest.fail(f"NVRTC failed on {name} for {arch}: {err}\n{nvrtc.getProgramLog(prog)}")
    lowered = nvrtc.getLoweredName(prog, name)
    assert lowered.startswith("_ZN5decaf4cuda23small_core_block_kernel")
    # the parameter list _NvrtcSmallCore.small_core_block packs (Itanium mangling: const double*, const double*,
    # int, int, double, int, double*, double*, double*, int*, double*, long long)
    assert lowered.endswith("EEEvPKdS3_iidiPdS4_S4_PiS4_x"), lowered
    assert len(nvrtc.getCUBIN(prog)) > 10000
    log = nvrtc.getProgramLog(prog)
    assert "error" not in log.lower(), log


def test_host_logic_mirrors_the_cpp_launcher():
    """The buckets, the placement order and the shared-memory size formula are read off the C++ sources."""
    host = HOST_CU.read_text()
    kernel = (ROOT / "csrc" / "cuda" / "small_core_block_kernel.cuh").read_text()
    got = [(int(m), int(nt), int(g), int(k)) for m, nt, g, k in
           re.findall(r"if \(m <= (\d+)\) launch_bucket<(\d+), (\d+), (\d+)>", host)]
    last = re.search(r"else launch_bucket<(\d+), (\d+), (\d+)>", host)
    max_m = int(re.search(r"kSmallCoreBlockMaxM = (\d+);", host).group(1))
    assert got and last and max_m == _nvrtc.SMALL_CORE_BLOCK_MAX_M
    buckets = [(m, nt, g) for m, nt, g, k in got] + [(max_m, int(last.group(1)), int(last.group(2)))]
    assert all(m == k for m, _, _, k in got) and int(last.group(3)) == max_m
    assert tuple(buckets) == _nvrtc.BUCKETS
    masks = re.search(r"kMasks\[4\] = \{([^}]*)\}", host).group(1)
    bits = {"kSmemRb": 1, "kSmemRa": 2, "kSmemW": 4, "kSmemV": 8, "0": 0}
    assert tuple(sum(bits[b.strip()] for b in mask.split("|")) for mask in masks.split(",")) == _nvrtc.MASKS
    assert "return 4LL * ld + 32;" in kernel and "return 5LL * ld;" in kernel  # small_doubles, small_ints
    for m in (1, 16, 48, 255):
        ld = m | 1
        assert _nvrtc.smem_bytes(m, 12) == (2 * m * ld + 4 * ld + 32) * 8 + 5 * ld * 4


@pytest.mark.parametrize("m", [1, 24, 48, 64, 200, 256])
def test_placement_and_workspace(m):
    """As test_cuda_small_core.test_layouts_agree expects of the nvcc build: the first placement that fits, and a
    workspace of (4 - matrices in shared memory) m ld doubles."""
    ld = m | 1
    small = (4 * ld + 32) * 8 + 5 * ld * 4
    for nmat, mask in ((4, 15), (2, 12), (1, 4), (0, 0)):
        limit = nmat * m * ld * 8 + small
        assert _nvrtc.choose_mask(m, limit) == mask
        assert _nvrtc.work_doubles_for(m, mask) == (4 - nmat) * m * ld
    assert _nvrtc.choose_mask(m, small - 1) == 0
    kmax, nt, group = _nvrtc.bucket(m)
    assert kmax >= m and _nvrtc.kernel_name(m, 4) == f"{_nvrtc.KERNEL_NAME}<{nt}, {group}, {kmax}, 4>"


@pytest.mark.parametrize("bad", [0, 257])
def test_size_out_of_range(bad):
    with pytest.raises(ValueError, match=r"m must be in \[1, 256\]"):
        _nvrtc.bucket(bad)


def test_argument_checks_before_any_launch():
    """The same checks and messages as _C_cuda.small_core_block, raised before CuPy or the GPU is touched."""
    core = _nvrtc._NvrtcSmallCore(cupy=None)
    with pytest.raises(ValueError, match="m must be in"):
        core.small_core_block_work_doubles(0)
    with pytest.raises(ValueError, match="rank must be in"):
        core.small_core_block(8, 8, 1, 4, 5, 0.5, 8, 8, 8, 8, 0, "float64", 0)
    with pytest.raises(ValueError, match="target must be"):
        core.small_core_block(8, 8, 1, 4, 2, 0.5, 8, 8, 8, 8, 0, "float16", 0)
    with pytest.raises(ValueError, match="alpha must be in"):
        core.small_core_block(8, 8, 1, 4, 2, 1.5, 8, 8, 8, 8, 0, "float64", 0)
    with pytest.raises(ValueError, match="null device pointer"):
        core.small_core_block(0, 8, 1, 4, 2, 0.5, 8, 8, 8, 8, 0, "float64", 0)
    with pytest.raises(ValueError, match="aligned"):
        core.small_core_block(12, 8, 1, 4, 2, 0.5, 8, 8, 8, 8, 0, "float64", 0)


class _FakeCupy:
    """Records what the launcher hands CuPy (no GPU here): module options, function attributes, the launch."""

    def __init__(self):
        self.calls = []
        fake = self

        class Device:
            def __init__(self, index):
                fake.calls.append(("device", index))

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        class Function:
            def __call__(self, grid, block, args, shared_mem=0):
                fake.calls.append(("launch", grid, block, args, shared_mem, fake.current_stream))

        class Stream:
            def __init__(self, handle):
                self.handle = handle

            @classmethod
            def from_external(cls, obj):
                fake.calls.append(("stream", obj.__cuda_stream__()))
                return cls(obj.__cuda_stream__()[1])

            def __enter__(self):
                fake.current_stream = self.handle

            def __exit__(self, *exc):
                fake.current_stream = None

        class RawModule:
            def __init__(self, code, options, name_expressions, backend):
                fake.calls.append(("module", options, tuple(name_expressions), backend, len(code)))

            def get_function(self, name):
                fake.calls.append(("get_function", name))
                return Function()

        class cuda:  # noqa: N801 - mirrors cupy.cuda
            pass

        cuda.Device = Device
        cuda.Stream = Stream
        self.cuda = cuda
        self.current_stream = None
        self.RawModule = RawModule


def test_launch_arguments(monkeypatch):
    """The launch the NVRTC build makes, recorded through a stand-in for CuPy: one block per problem with the bucket's
    thread count, the placement's shared memory (opted in above 48 KiB), the kernel's parameters in order and width,
    the caller's stream; the function compiled once per (device, instantiation)."""
    fake = _FakeCupy()
    core = _nvrtc._NvrtcSmallCore(fake)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(_nvrtc, "smem_limit", lambda dev: 227 * 1024)
    m, rank, batch = 48, 16, 7
    for _ in range(2):
        core.small_core_block(8, 16, batch, m, rank, 0.5, 24, 32, 40, 44, 0, "float32", 1234)
    assert core.small_core_block_work_doubles(m) == 0
    name = _nvrtc.kernel_name(m, 15)
    modules = [c for c in fake.calls if c[0] == "module"]
    assert modules == [("module", _nvrtc.NVRTC_OPTIONS, (name,), "nvrtc", len(_nvrtc.kernel_source()))]
    launches = [c for c in fake.calls if c[0] == "launch"]
    assert len(launches) == 2
    _, grid, block, args, smem, stream = launches[0]
    assert grid == (batch,) and block == (192,) and smem == _nvrtc.smem_bytes(m, 15) > 48 * 1024
    assert stream == 1234 and fake.current_stream is None  # launched inside the caller's stream, then restored
    assert [c for c in fake.calls if c[0] == "stream"] == [("stream", (0, 1234))]  # one CuPy stream per handle
    want = [(np.uint64, 8), (np.uint64, 16), (np.int32, m), (np.int32, rank), (np.float64, 0.5), (np.int32, 1),
            (np.uint64, 24), (np.uint64, 32), (np.uint64, 40), (np.uint64, 44), (np.uint64, 0), (np.int64, 0)]
    assert [(type(a), a) for a in args] == want
    fn = next(v for k, v in core._funcs.items() if k == (0, name))
    assert fn.max_dynamic_shared_size_bytes == smem
    # a placement with a workspace: its stride is passed, and a missing workspace is refused before any launch
    monkeypatch.setattr(_nvrtc, "smem_limit", lambda dev: 40 * 1024)
    mask = _nvrtc.choose_mask(m, 40 * 1024)
    assert mask != 15
    with pytest.raises(ValueError, match="needs a workspace"):
        core.small_core_block(8, 16, batch, m, rank, 0.5, 24, 32, 40, 44, 0, "float64", 0)
    core.small_core_block(8, 16, batch, m, rank, 0.5, 24, 32, 40, 44, 64, "float64", 0)
    args = [c for c in fake.calls if c[0] == "launch"][-1][3]
    assert args[5] == 0 and args[10] == 64 and args[11] == _nvrtc.work_doubles_for(m, mask) > 0


def test_selection(monkeypatch):
    monkeypatch.setenv("DECAF_CUDA_SMALL_CORE", "fastest")
    with pytest.raises(ValueError, match="DECAF_CUDA_SMALL_CORE must be one of auto, nvcc, nvrtc, torch"):
        _backend._cuda_small_core_block()
    monkeypatch.setenv("DECAF_CUDA_SMALL_CORE", "torch")
    assert _backend._cuda_small_core_block() is None
    if not torch.cuda.is_available():
        assert _nvrtc.status() == "unavailable: no CUDA device"
        for pick in ("nvcc", "nvrtc"):
            monkeypatch.setenv("DECAF_CUDA_SMALL_CORE", pick)
            with pytest.raises(RuntimeError, match=f"DECAF_CUDA_SMALL_CORE={pick}, but"):
                _backend._cuda_small_core_block()
            assert _backend.backend_info()["cuda"]["consensus_tsvd.small_core"].startswith("error: ")
        monkeypatch.setenv("DECAF_CUDA_SMALL_CORE", "auto")
        assert _backend._cuda_small_core_block() is None
        assert "NVRTC unavailable: no CUDA device" in _backend.backend_info()["cuda"]["consensus_tsvd.small_core"]


needs_both = pytest.mark.skipif(
    not torch.cuda.is_available() or _backend._nvcc_small_core() is None or _nvrtc.small_core_module() is None,
    reason="needs a CUDA GPU with both the nvcc-built _C_cuda and CuPy (compares the two builds)")


@needs_both
def test_workspace_sizes_agree_with_the_nvcc_build(monkeypatch):
    nvcc, rtc = _ext.cuda_ext(), _nvrtc.small_core_module()
    for limit in (None, "20000", "4000"):
        if limit:
            monkeypatch.setenv("DECAF_SMALL_CORE_BLOCK_SMEM", limit)
        assert [nvcc.small_core_block_work_doubles(m) for m in range(1, 257)] == \
            [rtc.small_core_block_work_doubles(m) for m in range(1, 257)], limit


@needs_both
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_op_results_agree_with_the_nvcc_build(monkeypatch, dtype):
    """consensus_tsvd on the GPU with each build of the small core: the same factors to rounding."""
    import decaf_kernels as dk

    gen = torch.Generator().manual_seed(4)
    N, L, d, k, r = 6, 3, 256, 192, 8
    B = torch.randn(N, L, d, r, generator=gen, dtype=torch.float64).to("cuda", dtype)
    A = torch.randn(N, L, r, k, generator=gen, dtype=torch.float64).to("cuda", dtype)
    W = torch.zeros(N, N, dtype=torch.float64)  # ring, CPU weights (the op reads them on the host)
    for i in range(N):
        W[i, i] = W[i, (i + 1) % N] = W[i, (i - 1) % N] = 1 / 3
    outs = {}
    for pick in ("nvcc", "nvrtc"):
        monkeypatch.setenv("DECAF_CUDA_SMALL_CORE", pick)
        Bn, An = dk.consensus_tsvd(B, A, W, r, method="exact")
        outs[pick] = (Bn @ An).double()
    ref = outs["nvcc"]
    err = ((outs["nvrtc"] - ref).norm() / ref.norm()).item()
    assert err <= (1e-12 if dtype == torch.float64 else 1e-6), err
