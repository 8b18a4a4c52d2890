// Python bindings of the CUDA module decaf_kernels._C_cuda (raw device pointers, no libtorch).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace decaf {
namespace cuda {
long long small_core_work_doubles_host(int m);
long long small_core_work_ints_host(int m);
void small_core_launch(const double* gb, const double* ga, long long batch, int m, int rank, double alpha, double* x,
                       double* y, double* s, int* info, double* work, int* iwork, std::uintptr_t stream);
}  // namespace cuda
}  // namespace decaf

namespace py = pybind11;

namespace {

void check(bool ok, const std::string& msg) {
    if (!ok) throw std::invalid_argument("small_core_cuda: " + msg);
}

void small_core_cuda(std::int64_t gb, std::int64_t ga, std::int64_t batch, std::int64_t m, std::int64_t rank,
                     double alpha, std::int64_t x, std::int64_t y, std::int64_t s, std::int64_t info,
                     std::int64_t work, std::int64_t iwork, std::int64_t stream) {
    check(batch >= 1, "batch must be >= 1, got " + std::to_string(batch));
    check(m >= 1 && m <= 256, "m must be in [1, 256], got " + std::to_string(m));
    check(rank >= 1 && rank <= m, "rank must be in [1, m=" + std::to_string(m) + "], got " + std::to_string(rank));
    check(alpha >= 0.0 && alpha <= 1.0, "alpha must be in [0, 1], got " + std::to_string(alpha));
    for (auto p : {gb, ga, x, y, s, info, work, iwork}) check(p != 0, "null device pointer");
    decaf::cuda::small_core_launch(reinterpret_cast<const double*>(gb), reinterpret_cast<const double*>(ga), batch,
                                   static_cast<int>(m), static_cast<int>(rank), alpha, reinterpret_cast<double*>(x),
                                   reinterpret_cast<double*>(y), reinterpret_cast<double*>(s),
                                   reinterpret_cast<int*>(info), reinterpret_cast<double*>(work),
                                   reinterpret_cast<int*>(iwork), static_cast<std::uintptr_t>(stream));
}

}  // namespace

PYBIND11_MODULE(_C_cuda, mod) {
    mod.doc() = "decaf-kernels CUDA kernels (raw device pointers; launched on the given stream, no host sync)";
    mod.def("small_core_work_sizes",
            [](int m) { return py::make_tuple(decaf::cuda::small_core_work_doubles_host(m),
                                              decaf::cuda::small_core_work_ints_host(m)); },
            py::arg("m"), "Per-problem workspace (doubles, ints) the small_core kernel needs for cores of size m.");
    mod.def("small_core", &small_core_cuda, py::arg("gb_ptr"), py::arg("ga_ptr"), py::arg("batch"), py::arg("m"),
            py::arg("rank"), py::arg("alpha"), py::arg("x_ptr"), py::arg("y_ptr"), py::arg("s_ptr"),
            py::arg("info_ptr"), py::arg("work_ptr"), py::arg("iwork_ptr"), py::arg("stream"),
            "Batched small-core solve on the GPU, one problem per thread; same contract as _C.small_core. "
            "Workspace: batch * small_core_work_sizes(m). Asynchronous on `stream` (a cudaStream_t as int).",
            py::call_guard<py::gil_scoped_release>());
}
