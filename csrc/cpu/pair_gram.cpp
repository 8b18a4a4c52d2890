// Pair Gram blocks on the CPU: one (layer, pair) output block per OpenMP iteration.
#include "prelude.h"  // first: its pragma must precede the decaf/ headers

#include "decaf/pair_gram.h"

#include <cstdint>
#include <vector>

#include "check.h"
#include "isa.h"
#include "ops.h"

namespace decaf {
namespace cpu {
namespace {

using BlockFn = void (*)(const void*, const void*, long long, int, long long, long long, double*, double*);

template <typename T, bool kVec>
DECAF_INLINE void block(const void* xj, const void* xk, long long P, int Q, long long sP, long long sQ, double* out,
                        double* work) {
    pair_gram_block<T, kVec>(static_cast<const T*>(xj), static_cast<const T*>(xk), P, Q, sP, sQ, out, work);
}

void f32_baseline(const void* a, const void* b, long long P, int Q, long long sP, long long sQ, double* o, double* w) {
    block<float, false>(a, b, P, Q, sP, sQ, o, w);
}
void f64_baseline(const void* a, const void* b, long long P, int Q, long long sP, long long sQ, double* o, double* w) {
    block<double, false>(a, b, P, Q, sP, sQ, o, w);
}
DECAF_TARGET_AVX2 void f32_avx2(const void* a, const void* b, long long P, int Q, long long sP, long long sQ, double* o, double* w) {
    block<float, true>(a, b, P, Q, sP, sQ, o, w);
}
DECAF_TARGET_AVX2 void f64_avx2(const void* a, const void* b, long long P, int Q, long long sP, long long sQ, double* o, double* w) {
    block<double, true>(a, b, P, Q, sP, sQ, o, w);
}
DECAF_TARGET_AVX512 void f32_avx512(const void* a, const void* b, long long P, int Q, long long sP, long long sQ,
                                    double* o, double* w) {
    block<float, true>(a, b, P, Q, sP, sQ, o, w);
}
DECAF_TARGET_AVX512 void f64_avx512(const void* a, const void* b, long long P, int Q, long long sP, long long sQ,
                                    double* o, double* w) {
    block<double, true>(a, b, P, Q, sP, sQ, o, w);
}

}  // namespace

void pair_gram(std::int64_t x_ptr, const std::string& dtype, std::int64_t L, std::int64_t P, std::int64_t Q,
               std::int64_t sN, std::int64_t sL, std::int64_t sP, std::int64_t sQ, std::int64_t pairs_ptr,
               std::int64_t npairs, std::int64_t out_ptr, std::int64_t n_agents, const std::string& isa_arg) {
    const char* op = "pair_gram";
    const DType dt = check_x_dtype_and_sizes(op, dtype, L, P, Q);
    const std::int64_t esize = dtype_size(dt);
    check_min(op, "npairs", npairs, 1);
    check_strides(op, {"sN", "sL", "sP", "sQ"}, {sN, sL, sP, sQ});
    if (n_agents != -1) check_min(op, "n_agents", n_agents, 1);
    check_product(op, "L * npairs", L, npairs);
    check_product(op, "L * npairs * Q * Q", L * npairs, Q * Q);
    check_extents(op, {"L * sL", "P * sP", "Q * sQ"}, {L, P, Q}, {sL, sP, sQ});
    check_ptr(op, "x_ptr", x_ptr, esize);
    check_ptr(op, "pairs_ptr", pairs_ptr, alignof(std::int64_t));
    check_ptr(op, "out_ptr", out_ptr, alignof(double));
    const Isa isa = parse_isa(op, isa_arg);

    const std::int64_t* pairs = reinterpret_cast<const std::int64_t*>(pairs_ptr);
    check_agents(op, "pairs", pairs, npairs, 2, n_agents, /*allow_empty=*/false, sN);

    BlockFn fn;
    if (dt == DType::f32) fn = isa == Isa::avx512 ? f32_avx512 : isa == Isa::avx2 ? f32_avx2 : f32_baseline;
    else fn = isa == Isa::avx512 ? f64_avx512 : isa == Isa::avx2 ? f64_avx2 : f64_baseline;

    const char* x = reinterpret_cast<const char*>(x_ptr);
    double* out = reinterpret_cast<double*>(out_ptr);
    const long long items = L * npairs, qq = Q * Q;
    const int qi = static_cast<int>(Q);
    const int nthreads = omp_threads();
    // Packing buffers, one per thread, allocated before the parallel region (see small_core.cpp).
    std::vector<double> work(static_cast<size_t>(nthreads) * kPairGramWorkDoubles);
    // Layer-major order: the pairs of one layer share its N slices, which then stay in cache.
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        double* w = work.data() + static_cast<size_t>(omp_thread()) * kPairGramWorkDoubles;
#ifdef _OPENMP
#pragma omp for schedule(dynamic)
#endif
        for (long long it = 0; it < items; ++it) {
            const long long l = it / npairs, t = it % npairs;
            const char* xl = x + l * sL * esize;
            const void* xj = xl + pairs[2 * t] * sN * esize;
            const void* xk = xl + pairs[2 * t + 1] * sN * esize;
            fn(xj, xk, P, qi, sP, sQ, out + it * qq, w);
        }
    }
}

}  // namespace cpu
}  // namespace decaf
