// Low-rank reconstruction on the CPU: one (output, layer, block of rows) per OpenMP iteration.
#include "prelude.h"  // first: its pragma must precede the decaf/ headers

#include "decaf/mix_lowrank.h"

#include <cstdint>

#include "check.h"
#include "isa.h"
#include "ops.h"

namespace decaf {
namespace cpu {
namespace {

template <typename T>
using RowsFn = void (*)(const T* const*, const T* const*, int, long long, long long, long long, long long, int, int, T*,
                        long long, long long);

#define DECAF_MIX_VARIANT(NAME, T, KVEC, ATTR)                                                                     \
    ATTR void NAME(const T* const* xs, const T* const* ts, int ns, long long p0, long long p1, long long sP,        \
                   long long sQ, int Q, int R, T* out, long long oP, long long oR) {                              \
        mix_lowrank_rows<T, KVEC>(xs, ts, ns, p0, p1, sP, sQ, Q, R, out, oP, oR);                                  \
    }
DECAF_MIX_VARIANT(f32_baseline, float, false, )
DECAF_MIX_VARIANT(f64_baseline, double, false, )
DECAF_MIX_VARIANT(f32_avx2, float, true, DECAF_TARGET_AVX2)
DECAF_MIX_VARIANT(f64_avx2, double, true, DECAF_TARGET_AVX2)
DECAF_MIX_VARIANT(f32_avx512, float, true, DECAF_TARGET_AVX512)
DECAF_MIX_VARIANT(f64_avx512, double, true, DECAF_TARGET_AVX512)
#undef DECAF_MIX_VARIANT

template <typename T>
void run(RowsFn<T> fn, const T* x, long long L, long long P, int Q, long long sN, long long sL, long long sP,
         long long sQ, const std::int64_t* idx, long long n_out, int D, const T* t, int R, T* out, long long oN,
         long long oL, long long oP, long long oR) {
    const int nthreads = omp_threads();
    // Split the rows of each output only as far as needed to give every thread several items:
    // whole blocks keep the neighbour slices streaming from memory once per output.
    const long long outputs = n_out * L;
    long long nblk = (8LL * nthreads + outputs - 1) / outputs;
    const long long max_blk = (P + 63) / 64;
    nblk = nblk < 1 ? 1 : nblk > max_blk ? max_blk : nblk;
    const long long pb = ((P + nblk - 1) / nblk + 15) / 16 * 16;
    nblk = (P + pb - 1) / pb;
    const long long items = outputs * nblk;
    const long long tsz = static_cast<long long>(Q) * R;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic)
#endif
    for (long long it = 0; it < items; ++it) {
        const long long b = it % nblk, il = it / nblk;
        const long long i = il / L, l = il % L;
        const T* xs[kMixMaxSlots];
        const T* ts[kMixMaxSlots];
        int ns = 0;
        for (int s = 0; s < D; ++s) {
            const std::int64_t j = idx[i * D + s];
            if (j < 0) continue;  // empty slot
            xs[ns] = x + j * sN + l * sL;
            ts[ns] = t + ((i * L + l) * D + s) * tsz;
            ++ns;
        }
        const long long p0 = b * pb, p1 = p0 + pb < P ? p0 + pb : P;
        fn(xs, ts, ns, p0, p1, sP, sQ, Q, R, out + i * oN + l * oL, oP, oR);
    }
}

}  // namespace

void mix_lowrank(std::int64_t x_ptr, const std::string& dtype, std::int64_t L, std::int64_t P, std::int64_t Q,
                 std::int64_t sN, std::int64_t sL, std::int64_t sP, std::int64_t sQ, std::int64_t idx_ptr,
                 std::int64_t n_out, std::int64_t D, std::int64_t t_ptr, std::int64_t R, std::int64_t out_ptr,
                 std::int64_t oN, std::int64_t oL, std::int64_t oP, std::int64_t oR, std::int64_t n_agents,
                 const std::string& isa_arg) {
    const char* op = "mix_lowrank";
    const DType dt = check_x_dtype_and_sizes(op, dtype, L, P, Q);
    const std::int64_t esize = dtype_size(dt);
    check_min(op, "n_out", n_out, 1);
    check_range(op, "D", D, 1, kMixMaxSlots);
    check_range(op, "R", R, 1, 1 << 16);
    check_strides(op, {"sN", "sL", "sP", "sQ"}, {sN, sL, sP, sQ});
    check_strides(op, {"oN", "oL", "oP", "oR"}, {oN, oL, oP, oR});
    if (n_agents != -1) check_min(op, "n_agents", n_agents, 1);
    check_product(op, "n_out * L", n_out, L);
    check_product(op, "n_out * L * D * Q * R (size of T)", n_out * L, D * Q * R);
    check_extents(op, {"L * sL", "P * sP", "Q * sQ"}, {L, P, Q}, {sL, sP, sQ});
    check_extents(op, {"n_out * oN", "L * oL", "P * oP", "R * oR"}, {n_out, L, P, R}, {oN, oL, oP, oR});
    {
        // Every output element is written by exactly one thread only if no two share memory.
        const std::int64_t size[4] = {n_out, L, P, R}, stride[4] = {oN, oL, oP, oR};
        if (!non_overlapping(4, size, stride))
            fail(op, "out strides (oN, oL, oP, oR) = (" + std::to_string(oN) + ", " + std::to_string(oL) + ", " +
                         std::to_string(oP) + ", " + std::to_string(oR) + ") must not overlap for sizes (" +
                         std::to_string(n_out) + ", " + std::to_string(L) + ", " + std::to_string(P) + ", " +
                         std::to_string(R) + ")");
    }
    check_ptr(op, "x_ptr", x_ptr, esize);
    check_ptr(op, "idx_ptr", idx_ptr, alignof(std::int64_t));
    check_ptr(op, "t_ptr", t_ptr, esize);
    check_ptr(op, "out_ptr", out_ptr, esize);
    const Isa isa = parse_isa(op, isa_arg);

    const std::int64_t* idx = reinterpret_cast<const std::int64_t*>(idx_ptr);
    check_agents(op, "idx", idx, n_out, D, n_agents, /*allow_empty=*/true, sN);

    const int qi = static_cast<int>(Q), ri = static_cast<int>(R), di = static_cast<int>(D);
    if (dt == DType::f32) {
        const RowsFn<float> fn = isa == Isa::avx512 ? f32_avx512 : isa == Isa::avx2 ? f32_avx2 : f32_baseline;
        run<float>(fn, reinterpret_cast<const float*>(x_ptr), L, P, qi, sN, sL, sP, sQ, idx, n_out, di,
                   reinterpret_cast<const float*>(t_ptr), ri, reinterpret_cast<float*>(out_ptr), oN, oL, oP, oR);
    } else {
        const RowsFn<double> fn = isa == Isa::avx512 ? f64_avx512 : isa == Isa::avx2 ? f64_avx2 : f64_baseline;
        run<double>(fn, reinterpret_cast<const double*>(x_ptr), L, P, qi, sN, sL, sP, sQ, idx, n_out, di,
                    reinterpret_cast<const double*>(t_ptr), ri, reinterpret_cast<double*>(out_ptr), oN, oL, oP, oR);
    }
}

}  // namespace cpu
}  // namespace decaf
