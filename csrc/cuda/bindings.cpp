// Python bindings of the CUDA module decaf_kernels._C_cuda (raw device pointers, no libtorch).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "decaf/small_core.h"

namespace decaf {
namespace cuda {
int small_core_block_max_m();
long long small_core_block_work_doubles_host(int m);
void small_core_block_launch(const double* gb, const double* ga, long long batch, int m, int rank, double alpha,
                             double* x, double* y, double* s, int* info, double* work, int target,
                             std::uintptr_t stream);
}  // namespace cuda
}  // namespace decaf

namespace py = pybind11;

namespace {

void check_block(bool ok, const std::string& msg) {
    if (!ok) throw std::invalid_argument("small_core_block: " + msg);
}

long long small_core_block_work(std::int64_t m) {
    const int mmax = decaf::cuda::small_core_block_max_m();
    check_block(m >= 1 && m <= mmax, "m must be in [1, " + std::to_string(mmax) + "], got " + std::to_string(m));
    return decaf::cuda::small_core_block_work_doubles_host(static_cast<int>(m));
}

void small_core_block(std::int64_t gb, std::int64_t ga, std::int64_t batch, std::int64_t m, std::int64_t rank,
                      double alpha, std::int64_t x, std::int64_t y, std::int64_t s, std::int64_t info,
                      std::int64_t work, const std::string& target, std::int64_t stream) {
    const int mmax = decaf::cuda::small_core_block_max_m();
    check_block(batch >= 1 && batch <= 2147483647LL, "batch must be in [1, 2^31 - 1], got " + std::to_string(batch));
    check_block(m >= 1 && m <= mmax, "m must be in [1, " + std::to_string(mmax) + "], got " + std::to_string(m));
    check_block(rank >= 1 && rank <= m, "rank must be in [1, m=" + std::to_string(m) + "], got " + std::to_string(rank));
    check_block(alpha >= 0.0 && alpha <= 1.0, "alpha must be in [0, 1], got " + std::to_string(alpha));
    for (auto p : {gb, ga, x, y, s, info}) check_block(p != 0, "null device pointer");
    for (auto p : {gb, ga, x, y, s, work}) check_block(p % 8 == 0, "pointers must be 8-byte aligned");
    check_block(info % 4 == 0, "info_ptr must be 4-byte aligned");
    int tgt;
    if (target == "float64") tgt = decaf::kSmallCoreTargetFloat64;
    else if (target == "float32") tgt = decaf::kSmallCoreTargetFloat32;
    else throw std::invalid_argument("small_core_block: target must be 'float64' or 'float32', got '" + target + "'");
    const long long wd = decaf::cuda::small_core_block_work_doubles_host(static_cast<int>(m));
    check_block(wd == 0 || work != 0, "m = " + std::to_string(m) + " needs a workspace of batch * " +
                                          std::to_string(wd) + " doubles (small_core_block_work_doubles), got work_ptr = 0");
    decaf::cuda::small_core_block_launch(
        reinterpret_cast<const double*>(gb), reinterpret_cast<const double*>(ga), batch, static_cast<int>(m),
        static_cast<int>(rank), alpha, reinterpret_cast<double*>(x), reinterpret_cast<double*>(y),
        reinterpret_cast<double*>(s), reinterpret_cast<int*>(info), reinterpret_cast<double*>(work), tgt,
        static_cast<std::uintptr_t>(stream));
}

}  // namespace

PYBIND11_MODULE(_C_cuda, mod) {
    mod.doc() = "decaf-kernels CUDA kernels (raw device pointers; launched on the given stream, no host sync)";
    mod.attr("SMALL_CORE_BLOCK_MAX_M") = decaf::cuda::small_core_block_max_m();
    mod.def("small_core_block_work_doubles", &small_core_block_work, py::arg("m"),
            "Global workspace, in doubles per problem, that small_core_block needs for cores of size m on the current "
            "device (0 when everything fits in shared memory; then work_ptr may be 0). Pass batch times this.");
    mod.def("small_core_block", &small_core_block, py::arg("gb_ptr"), py::arg("ga_ptr"), py::arg("batch"),
            py::arg("m"), py::arg("rank"), py::arg("alpha"), py::arg("x_ptr"), py::arg("y_ptr"), py::arg("s_ptr"),
            py::arg("info_ptr"), py::arg("work_ptr"), py::arg("target"), py::arg("stream"),
            "Batched small-core solve on the GPU, one problem per thread block; same contract, tolerances and info "
            "codes as _C.small_core. gb_ptr, ga_ptr: float64 (batch, m, m) contiguous device arrays; x_ptr (batch, m, "
            "rank), y_ptr (batch, rank, m), s_ptr (batch, rank) float64 and info_ptr (batch,) int32, all written; "
            "work_ptr: batch * small_core_block_work_doubles(m) doubles, or 0 when that is 0; target: 'float64' or "
            "'float32' (the CPU float32 null rule; info counts Jacobi sweeps for both targets); stream: a cudaStream_t "
            "as int. Asynchronous: no host synchronisation, no allocation (CUDA-graph capturable). Algorithm: "
            "csrc/include/decaf/small_core.h (its GPU form: csrc/cuda/small_core_block.cu).",
            py::call_guard<py::gil_scoped_release>());
}
