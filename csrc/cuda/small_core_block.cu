// Host side of the block-per-problem small-core kernel (csrc/cuda/small_core_block_kernel.cuh): picks the
// instantiation by m and where its matrices live (shared memory or the caller's workspace), sets the
// shared-memory limit, launches. decaf_kernels/_nvrtc.py mirrors these choices for the NVRTC build; a GPU test
// checks that both give the same workspace sizes.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "small_core_block_kernel.cuh"

namespace decaf {
namespace cuda {
namespace {

// ---- host side ----

int max_smem_optin() {
    if (const char* v = std::getenv("DECAF_SMALL_CORE_BLOCK_SMEM")) {  // testing aid: pretend less shared memory
        const long long lim = std::atoll(v);
        if (lim > 0) return (int)lim;
    }
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) {
        (void)cudaGetLastError();
        return 48 * 1024;
    }
    static std::atomic<int> cache[64];
    if (dev >= 0 && dev < 64) {
        const int c = cache[dev].load(std::memory_order_relaxed);
        if (c > 0) return c;
    }
    int v = 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess || v <= 0) {
        (void)cudaGetLastError();
        v = 48 * 1024;
    }
    if (dev >= 0 && dev < 64) cache[dev].store(v, std::memory_order_relaxed);
    return v;
}

// Placements in order of preference; the first that fits in the shared memory available is used.
constexpr int kMasks[4] = {kSmemRb | kSmemRa | kSmemW | kSmemV, kSmemW | kSmemV, kSmemW, 0};

int choose_mask(int m) {
    const long long lim = max_smem_optin();
    for (int mask : kMasks)
        if (smem_bytes(m, mask) <= lim) return mask;
    return 0;
}

template <int NT, int kGroup, int kMax, int kMask>
void launch_one(const double* gb, const double* ga, long long batch, int m, int rank, double alpha, int target,
                double* x, double* y, double* s, int* info, double* work, cudaStream_t stream) {
    auto kernel = small_core_block_kernel<NT, kGroup, kMax, kMask>;
    const long long bytes = smem_bytes(m, kMask);
    static std::atomic<int> configured[64];  // per device: the dynamic shared memory limit set so far
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) dev = 0;
    std::atomic<int>* flag = dev >= 0 && dev < 64 ? &configured[dev] : nullptr;
    if (bytes > 48 * 1024 && (!flag || flag->load() < bytes)) {
        const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
        if (err != cudaSuccess)
            throw std::runtime_error(std::string("small_core_block: cannot set the shared memory size (") +
                                     std::to_string(bytes) + " bytes): " + cudaGetErrorString(err));
        if (flag) flag->store((int)bytes);
    }
    const long long wstride = (4 - popcount4(kMask)) * (long long)m * pad_ld(m);
    kernel<<<static_cast<unsigned>(batch), NT, static_cast<size_t>(bytes), stream>>>(gb, ga, m, rank, alpha, target, x, y,
                                                                                    s, info, work, wstride);
}

template <int NT, int kGroup, int kMax>
void launch_bucket(int mask, const double* gb, const double* ga, long long batch, int m, int rank, double alpha,
                   int target, double* x, double* y, double* s, int* info, double* work, cudaStream_t stream) {
    switch (mask) {
        case kSmemRb | kSmemRa | kSmemW | kSmemV:
            launch_one<NT, kGroup, kMax, kSmemRb | kSmemRa | kSmemW | kSmemV>(gb, ga, batch, m, rank, alpha, target, x,
                                                                               y, s, info, work, stream);
            break;
        case kSmemW | kSmemV:
            launch_one<NT, kGroup, kMax, kSmemW | kSmemV>(gb, ga, batch, m, rank, alpha, target, x, y, s, info, work,
                                                          stream);
            break;
        case kSmemW:
            launch_one<NT, kGroup, kMax, kSmemW>(gb, ga, batch, m, rank, alpha, target, x, y, s, info, work, stream);
            break;
        default:
            launch_one<NT, kGroup, kMax, 0>(gb, ga, batch, m, rank, alpha, target, x, y, s, info, work, stream);
            break;
    }
}

}  // namespace

constexpr int kSmallCoreBlockMaxM = 256;

int small_core_block_max_m() { return kSmallCoreBlockMaxM; }

long long small_core_block_work_doubles_host(int m) {
    if (m < 1 || m > kSmallCoreBlockMaxM) return 0;
    const int mask = choose_mask(m);
    return (4 - popcount4(mask)) * (long long)m * pad_ld(m);
}

void small_core_block_launch(const double* gb, const double* ga, long long batch, int m, int rank, double alpha,
                             double* x, double* y, double* s, int* info, double* work, int target,
                             std::uintptr_t stream_handle) {
    if (m < 1 || m > kSmallCoreBlockMaxM) throw std::invalid_argument("small_core_block: m out of range");
    const int mask = choose_mask(m);
    if (mask != (kSmemRb | kSmemRa | kSmemW | kSmemV) && work == nullptr)
        throw std::invalid_argument("small_core_block: m = " + std::to_string(m) +
                                    " needs a workspace of batch * small_core_block_work_doubles(m) doubles");
    cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
    if (m <= 16) launch_bucket<64, 8, 16>(mask, gb, ga, batch, m, rank, alpha, target, x, y, s, info, work, stream);
    else if (m <= 32) launch_bucket<128, 8, 32>(mask, gb, ga, batch, m, rank, alpha, target, x, y, s, info, work, stream);
    else if (m <= 48) launch_bucket<192, 8, 48>(mask, gb, ga, batch, m, rank, alpha, target, x, y, s, info, work, stream);
    else if (m <= 64) launch_bucket<256, 8, 64>(mask, gb, ga, batch, m, rank, alpha, target, x, y, s, info, work, stream);
    else if (m <= 96) launch_bucket<384, 8, 96>(mask, gb, ga, batch, m, rank, alpha, target, x, y, s, info, work, stream);
    else if (m <= 128) launch_bucket<512, 8, 128>(mask, gb, ga, batch, m, rank, alpha, target, x, y, s, info, work, stream);
    else launch_bucket<512, 16, 256>(mask, gb, ga, batch, m, rank, alpha, target, x, y, s, info, work, stream);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        throw std::runtime_error(std::string("small_core_block: kernel launch failed (m = ") + std::to_string(m) +
                                 ", batch = " + std::to_string(batch) + "): " + cudaGetErrorString(err));
}

}  // namespace cuda
}  // namespace decaf
