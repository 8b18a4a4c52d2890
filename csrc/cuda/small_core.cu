// CUDA build of the small-core solver: the same per-problem code as the CPU module (decaf/small_core.h),
// one problem per thread, workspace in global memory supplied by the caller, launched on the caller's stream
// with no host synchronisation. A correct baseline for the GPU; the shared-memory, one-problem-per-block
// kernel of the GPU issue replaces it. Not dispatched to by decaf_kernels until it has been checked on a GPU.
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "decaf/small_core.h"

namespace {

__global__ void small_core_kernel(const double* __restrict__ gb, const double* __restrict__ ga, long long batch,
                                  int m, int rank, double alpha, double* __restrict__ x, double* __restrict__ y,
                                  double* __restrict__ s, int* __restrict__ info, double* __restrict__ work,
                                  int* __restrict__ iwork, long long wd, long long wi) {
    const long long b = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (b >= batch) return;
    const long long mm = static_cast<long long>(m) * m;
    const long long mr = static_cast<long long>(m) * rank;
    info[b] = decaf::small_core_solve<false>(gb + b * mm, ga + b * mm, m, rank, alpha, x + b * mr, y + b * mr,
                                             s + b * rank, work + b * wd, iwork + b * wi);
}

}  // namespace

namespace decaf {
namespace cuda {

long long small_core_work_doubles_host(int m) { return (decaf::small_core_work_doubles(m) + 7) / 8 * 8; }
long long small_core_work_ints_host(int m) { return (decaf::small_core_work_ints(m) + 7) / 8 * 8; }

void small_core_launch(const double* gb, const double* ga, long long batch, int m, int rank, double alpha, double* x,
                       double* y, double* s, int* info, double* work, int* iwork, std::uintptr_t stream) {
    const int threads = 64;
    const long long blocks = (batch + threads - 1) / threads;
    small_core_kernel<<<static_cast<unsigned>(blocks), threads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        gb, ga, batch, m, rank, alpha, x, y, s, info, work, iwork, small_core_work_doubles_host(m),
        small_core_work_ints_host(m));
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        throw std::runtime_error(std::string("small_core_cuda: kernel launch failed: ") + cudaGetErrorString(err));
}

}  // namespace cuda
}  // namespace decaf
