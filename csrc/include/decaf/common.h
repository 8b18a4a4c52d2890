// Shared macros and small vector helpers for the numerics headers under decaf/.
//
// The per-problem code in these headers is plain loops over raw arrays: no allocation, no
// exceptions, workspace supplied by the caller, so the CPU drivers can call it inside OpenMP
// regions. DECAF_HD marks the few functions a CUDA kernel calls as well (nvcc then compiles them
// as __host__ __device__); everything else is host code.
//
// The short inner loops are also spelled with GCC/Clang vector extensions: at these sizes (columns
// of 8 to 256 doubles) the auto-vectoriser produced scalar reductions. Such code sits behind
// `if constexpr (kVec)` with a plain-loop twin (kVec = false, the baseline-ISA path). The twins
// keep the same summation order where it matters (small_core), so paths differ only by the
// rounding of fused multiply-adds. The vectors are 32 bytes wide: native on AVX2 and AVX-512
// (where 512-bit vectors bought nothing on the Zen 4 we measured), whereas a 64-byte vector type
// compiled for AVX2 is split through memory and ran ten times slower.
#pragma once

#if defined(__CUDACC__)
#define DECAF_HD __host__ __device__
#define DECAF_INLINE __forceinline__
#else
#define DECAF_HD
// Forced inlining: the CPU drivers compile each hot per-problem function once per instruction set
// (target attributes), and only code inlined into those functions gets that instruction set.
#if defined(__GNUC__)
#define DECAF_INLINE inline __attribute__((always_inline))
#else
#define DECAF_INLINE inline
#endif
#endif

#if defined(__GNUC__) || defined(__CUDACC__)
#define DECAF_RESTRICT __restrict__
#else
#define DECAF_RESTRICT
#endif

#if !defined(__CUDACC__) && (defined(__GNUC__) || defined(__clang__))
#define DECAF_HOST_VECTORS 1
#endif

// The rest is host code; NVRTC (which compiles only device code) needs just the macros above.
#if !defined(__CUDACC_RTC__)
namespace decaf {

// Working columns are padded with zeros to a multiple of this many doubles, so vector loops need no
// remainder handling, and the zeros change no dot product.
constexpr int kLanes = 8;

DECAF_INLINE int round_up_lanes(int n) { return (n + kLanes - 1) / kLanes * kLanes; }

// The fixed summation order of the small_core reductions: eight partial sums s0..s7 (lane i takes the
// elements i, i + 8, i + 16, ...), then ((s0 + s4) + (s1 + s5)) + ((s2 + s6) + (s3 + s7)).
DECAF_INLINE double hsum8(const double* s) {
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

#if defined(DECAF_HOST_VECTORS)
// These helpers are always inlined into functions compiled for AVX2 or later, so the note that a
// 32-byte vector return "changes the ABI" without AVX does not apply.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
typedef double vd4 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));
typedef float vf8 __attribute__((vector_size(32)));

DECAF_INLINE vd4 load4(const double* p) {
    vd4 v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}
DECAF_INLINE void store4(double* p, const vd4& v) { __builtin_memcpy(p, &v, sizeof v); }
// Four floats widened to doubles: exact.
DECAF_INLINE vd4 load4(const float* p) {
    vf4 v;
    __builtin_memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, vd4);
}
DECAF_INLINE vd4 splat4(double x) { return vd4{x, x, x, x}; }
// (v0 + v1) + (v2 + v3): applied to lo + hi of two 4-lane accumulators, hsum8's order.
DECAF_INLINE double hsum4(const vd4& v) { return (v[0] + v[1]) + (v[2] + v[3]); }

#if defined(__clang__)
#define DECAF_SHUFFLE4(a, b, i, j, k, l) __builtin_shufflevector(a, b, i, j, k, l)
#else
typedef long long vi4 __attribute__((vector_size(32)));
#define DECAF_SHUFFLE4(a, b, i, j, k, l) __builtin_shuffle(a, b, vi4{i, j, k, l})
#endif

// {hsum4(a), hsum4(b), hsum4(c), hsum4(d)} in six shuffles and three adds, about half the work of
// four separate horizontal sums.
DECAF_INLINE vd4 hsum4x4(const vd4& a, const vd4& b, const vd4& c, const vd4& d) {
    const vd4 ab = DECAF_SHUFFLE4(a, b, 0, 4, 2, 6) + DECAF_SHUFFLE4(a, b, 1, 5, 3, 7);  // a01 b01 a23 b23
    const vd4 cd = DECAF_SHUFFLE4(c, d, 0, 4, 2, 6) + DECAF_SHUFFLE4(c, d, 1, 5, 3, 7);
    return DECAF_SHUFFLE4(ab, cd, 0, 1, 4, 5) + DECAF_SHUFFLE4(ab, cd, 2, 3, 6, 7);
}
#pragma GCC diagnostic pop
#endif

}  // namespace decaf
#endif  // !__CUDACC_RTC__
