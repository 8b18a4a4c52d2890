// Python bindings of the CPU module decaf_kernels._C.
//
// Plain pybind11 over raw pointers: every array argument is an address (tensor.data_ptr()) plus
// sizes and element strides, so this module neither includes nor links libtorch. The Python op
// layer owns dtype/device/shape/extent checks of its tensors; the functions here check every
// argument they can see (sizes, strides, dtype strings, null or misaligned addresses, index
// values) and raise ValueError naming the argument, before touching any output.
// The GIL is released while a kernel runs.
#include "prelude.h"  // first, as in every source of this module

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "decaf/mix_lowrank.h"
#include "decaf/small_core.h"
#include "isa.h"
#include "ops.h"

namespace py = pybind11;

namespace {

const char* kSmallCoreDoc = R"doc(Batched truncated SVD of M = Bc Ac from the Grams Gb = Bc^T Bc and Ga = Ac Ac^T.

For each problem b, with M = U S V^T the SVD of the (never formed) product of an unknown tall Bc
(d x m) and wide Ac (m x k), computes the top-`rank` singular values S and small matrices X, Y with

    Bc X = U_r S_r^alpha,    Y Ac = S_r^(1 - alpha) V_r^T,

so Bc X Y Ac is a best rank-`rank` approximation of M. Float64 throughout, OpenMP over the batch,
workspace allocated internally. Algorithm: csrc/include/decaf/small_core.h.

Args:
    gb_ptr, ga_ptr: float64 (batch, m, m) contiguous; only the symmetric part is read.
    batch, m: >= 1, m <= SMALL_CORE_MAX_M.
    rank: 1 <= rank <= m.
    alpha: split exponent in [0, 1] (0.5 balanced, 1 puts S in B', 0 in A').
    x_ptr: float64 (batch, m, rank) contiguous, written.
    y_ptr: float64 (batch, rank, m) contiguous, written.
    s_ptr: float64 (batch, rank) contiguous, written: descending; directions with
        s <= max(m, 2) * eps * s_1 (target 'float32': s <= sqrt(max(m, 2) * eps) * s_1), and those
        beyond min(kb, ka), are exact zeros with zero X columns and Y rows.
    info_ptr: int32 (batch,) contiguous, written: Jacobi sweeps used (target 'float64') or QL
        iterations summed over all eigenvalues (target 'float32'; about 2.2 per eigenvalue),
        INFO_NON_FINITE (-1: a NaN/Inf in Gb or Ga; X, Y, S are NaN) or INFO_NO_CONVERGENCE (-2:
        SMALL_CORE_MAX_SWEEPS sweeps, or SMALL_CORE_MAX_QL_ITERATIONS * min(kb, ka) QL
        iterations; X, Y, S are the best available). A zero Gram (Bc = 0 or Ac = 0) gives zeros
        and info 0.
    isa: 'auto' (best this CPU supports), 'avx512', 'avx2' or 'baseline' (the plain-loop code); a
        named ISA the CPU lacks raises ValueError.
    target: 'float64' (default: singular values to ~eps * s_1) or 'float32' (for results rounded to
        fp32 anyway, 2-3x faster: singular values resolved down to ~sqrt(m * eps) * s_1; the product
        B'A' accurate to ~m * eps * s_1 / s_r relative, e.g. <= 1e-9 for a condition number of 1e6);
        anything else raises ValueError. Results do not depend on the batch-mates of a problem, for
        either target.

Example:
    >>> x = torch.empty(b, m, r, dtype=torch.float64); ...
    >>> _C.small_core(gb.data_ptr(), ga.data_ptr(), b, m, r, 0.5,
    ...               x.data_ptr(), y.data_ptr(), s.data_ptr(), info.data_ptr())
)doc";

const char* kPairGramDoc = R"doc(Float64 Gram blocks of pairs of slices: out[l, t] = X[j_t, l]^T X[k_t, l].

X is a strided (N, L, P, Q) tensor: element (n, l, p, q) at x + n*sN + l*sL + p*sP + q*sQ (strides in
elements, any non-negative values). Each element is widened to float64 before it is multiplied, so
float32 products are exact and only the float64 sums round. One (l, t) block per OpenMP iteration.
Fast paths: sQ == 1 (rows contiguous; register-blocked for Q in {4, 8, 16}) and sP == 1 (columns
contiguous); anything else takes the generic strided path.

Args:
    x_ptr: data of X; dtype: 'float32' or 'float64'.
    L, P, Q: >= 1 (Q <= 65536). sN, sL, sP, sQ: element strides >= 0.
    pairs_ptr: int64 (npairs, 2) contiguous agent indices (j, k), each >= 0 (and < n_agents).
    npairs: >= 1.
    out_ptr: float64 (L, npairs, Q, Q) contiguous, written.
    n_agents: N, to bounds-check the indices; -1 (default) checks only that they are >= 0.
    isa: as for small_core.

Example:
    >>> out = torch.empty(L, len(pairs), r, r, dtype=torch.float64)
    >>> _C.pair_gram(b.data_ptr(), 'float32', L, d, r, *b.stride(), pairs.data_ptr(), len(pairs),
    ...              out.data_ptr(), n_agents=b.shape[0])
)doc";

const char* kMixLowrankDoc = R"doc(Low-rank mixing: out[i, l] = sum over slots s with idx[i, s] >= 0 of X[idx[i, s], l] @ T[i, l, s].

X is a strided (N, L, P, Q) tensor as in pair_gram; T is contiguous (n_out, L, D, Q, R) of the same
dtype; out (n_out, L, P, R) of the same dtype, with element strides (oN, oL, oP, oR) (a transposed
view is fine). Accumulates in the dtype of X, each output element summed in the order (s, q); out is
written once and never read. One (i, l, block of P rows) per OpenMP iteration. Fast paths: sQ == 1
(rows contiguous, vectors along R; best with oR == 1) and sP == 1 (columns contiguous, vectors
along P; best with oP == 1, e.g. A' = (R x k) written row by row); else generic.

Args:
    x_ptr: data of X; dtype: 'float32' or 'float64' (of X, T and out).
    L, P, Q: >= 1 (Q <= 65536). sN, sL, sP, sQ: element strides >= 0.
    idx_ptr: int64 (n_out, D) contiguous neighbour indices; -1 marks an empty slot (skipped).
    n_out: >= 1. D: 1 <= D <= MIX_MAX_SLOTS.
    t_ptr: data of T. R: >= 1 (<= 65536).
    out_ptr: data of out; oN, oL, oP, oR: its element strides >= 0.
    n_agents: N, to bounds-check idx; -1 (default) checks only that entries are >= -1.
    isa: as for small_core.

Example:
    >>> _C.mix_lowrank(b.data_ptr(), 'float32', L, d, r, *b.stride(), idx.data_ptr(), n, D,
    ...                t.data_ptr(), r, out.data_ptr(), *out.stride(), n_agents=n)
)doc";

std::string cpu_isa() { return decaf::cpu::isa_name(decaf::cpu::best_isa()); }

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() =
        "CPU kernels of decaf-kernels: batched small-core truncated SVD (small_core), float64 pair Grams "
        "(pair_gram) and low-rank reconstruction (mix_lowrank). Raw-pointer pybind11 module; no libtorch.";

    m.def("small_core", &decaf::cpu::small_core, kSmallCoreDoc, py::arg("gb_ptr"), py::arg("ga_ptr"), py::arg("batch"),
          py::arg("m"), py::arg("rank"), py::arg("alpha"), py::arg("x_ptr"), py::arg("y_ptr"), py::arg("s_ptr"),
          py::arg("info_ptr"), py::arg("isa") = "auto", py::arg("target") = "float64",
          py::call_guard<py::gil_scoped_release>());

    m.def("pair_gram", &decaf::cpu::pair_gram, kPairGramDoc, py::arg("x_ptr"), py::arg("dtype"), py::arg("L"),
          py::arg("P"), py::arg("Q"), py::arg("sN"), py::arg("sL"), py::arg("sP"), py::arg("sQ"), py::arg("pairs_ptr"),
          py::arg("npairs"), py::arg("out_ptr"), py::arg("n_agents") = -1, py::arg("isa") = "auto",
          py::call_guard<py::gil_scoped_release>());

    m.def("mix_lowrank", &decaf::cpu::mix_lowrank, kMixLowrankDoc, py::arg("x_ptr"), py::arg("dtype"), py::arg("L"),
          py::arg("P"), py::arg("Q"), py::arg("sN"), py::arg("sL"), py::arg("sP"), py::arg("sQ"), py::arg("idx_ptr"),
          py::arg("n_out"), py::arg("D"), py::arg("t_ptr"), py::arg("R"), py::arg("out_ptr"), py::arg("oN"),
          py::arg("oL"), py::arg("oP"), py::arg("oR"), py::arg("n_agents") = -1, py::arg("isa") = "auto",
          py::call_guard<py::gil_scoped_release>());

    m.def("cpu_isa", &cpu_isa,
          "The instruction set the kernels use by default on this CPU: 'avx512', 'avx2' or 'baseline'.");
    m.def("max_threads", &decaf::cpu::omp_threads,
          "OpenMP threads a kernel call may use (1 when built without OpenMP).");

    m.attr("SMALL_CORE_MAX_M") = decaf::cpu::kSmallCoreMaxM;
    m.attr("SMALL_CORE_MAX_SWEEPS") = decaf::kSmallCoreMaxSweeps;
    m.attr("SMALL_CORE_MAX_QL_ITERATIONS") = decaf::kSmallCoreMaxQLIterations;
    m.attr("INFO_NON_FINITE") = decaf::kSmallCoreNonFinite;
    m.attr("INFO_NO_CONVERGENCE") = decaf::kSmallCoreNoConvergence;
    m.attr("MIX_MAX_SLOTS") = decaf::kMixMaxSlots;
#ifdef _OPENMP
    m.attr("OPENMP") = true;
#else
    m.attr("OPENMP") = false;
#endif
}
