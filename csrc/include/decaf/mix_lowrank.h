// Low-rank reconstruction pass: out = sum_s X_s T_s, X_s a (P x Q) slice of a strided tensor, T_s a
// small (Q x R) matrix, over the active neighbour slots s of one output.
//
// One call computes rows [p0, p1) of one output block (P x R); the CPU driver runs one call per
// OpenMP iteration. Accumulation is in the data type T (float32 data accumulates in float32): each
// output element is a sum of D * Q products taken in the fixed order (s, q), in every path, so the
// vector and plain paths round the same way (up to fused multiply-adds).
//
// Paths: rows of X contiguous (sQ == 1; vectors run along R, as for B' = Bc X) and columns of X
// contiguous (sP == 1; vectors run along P, as for A'^T = Ac^T Y^T written into an R x k row-major
// A'), plus any strides.
#pragma once

#include "decaf/common.h"

namespace decaf {

// Up to this many neighbour slots per output (the drivers reject larger D).
constexpr int kMixMaxSlots = 64;

namespace mix_detail {

#if defined(DECAF_HOST_VECTORS)
template <typename T>
struct Vec;
template <>
struct Vec<float> {
    typedef vf8 type;
    static constexpr int width = 8;
};
template <>
struct Vec<double> {
    typedef vd4 type;
    static constexpr int width = 4;
};

template <typename V, typename T>
DECAF_INLINE V vload(const T* p) {
    V v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}
template <typename V, typename T>
DECAF_INLINE void vstore(T* p, const V& v) {
    __builtin_memcpy(p, &v, sizeof v);
}
// Vector + scalar broadcasts the scalar (one vbroadcast); filling lanes one by one did not.
template <typename V, typename T>
DECAF_INLINE V vsplat(T x) {
    const V zero = {};
    return zero + x;
}
#endif

// Tile of up to 8 output rows (p) x one vector of output columns (r), rows of X contiguous.
template <typename T, bool kVec>
DECAF_INLINE void rows_tile(const T* const* DECAF_RESTRICT xs, const T* const* DECAF_RESTRICT ts, int ns,
                            long long p0, int np, long long sP, int Q, int R, T* DECAF_RESTRICT out,
                            long long oP, long long oR) {
    int r0 = 0;
#if defined(DECAF_HOST_VECTORS)
    if constexpr (kVec) {
        constexpr int kRows = 8;
        typedef typename Vec<T>::type V;
        constexpr int W = Vec<T>::width;
        if (np == kRows) {
            for (; r0 + W <= R; r0 += W) {
                V acc[kRows];
                for (int i = 0; i < kRows; ++i) acc[i] = vsplat<V>(T(0));
                for (int s = 0; s < ns; ++s) {
                    const T* x = xs[s] + p0 * sP;
                    const T* t = ts[s] + r0;
                    for (int q = 0; q < Q; ++q) {
                        const V tv = vload<V>(t + q * R);
                        for (int i = 0; i < kRows; ++i) acc[i] += vsplat<V>(x[i * sP + q]) * tv;
                    }
                }
                for (int i = 0; i < kRows; ++i) {
                    T* o = out + (p0 + i) * oP + r0 * oR;
                    if (oR == 1) {
                        vstore(o, acc[i]);
                    } else {
                        for (int j = 0; j < W; ++j) o[j * oR] = acc[i][j];
                    }
                }
            }
        }
    }
#endif
    for (int i = 0; i < np; ++i)
        for (int r = r0; r < R; ++r) {
            T acc = T(0);
            for (int s = 0; s < ns; ++s) {
                const T* x = xs[s] + (p0 + i) * sP;
                const T* t = ts[s] + r;
                for (int q = 0; q < Q; ++q) acc += x[q] * t[q * R];
            }
            out[(p0 + i) * oP + r * oR] = acc;
        }
}

// Tile of one vector of output rows (p) x all output columns (r), columns of X contiguous.
template <typename T, bool kVec>
DECAF_INLINE void cols_tile(const T* const* DECAF_RESTRICT xs, const T* const* DECAF_RESTRICT ts, int ns,
                            long long p0, int np, long long sQ, int Q, int R, T* DECAF_RESTRICT out,
                            long long oP, long long oR) {
#if defined(DECAF_HOST_VECTORS)
    if constexpr (kVec) {
        constexpr int kCols = 8;  // output columns per register block
        typedef typename Vec<T>::type V;
        constexpr int W = Vec<T>::width;
        if (np == W) {
            int r0 = 0;
            for (; r0 < R; r0 += kCols) {
                const int nr = R - r0 < kCols ? R - r0 : kCols;
                V acc[kCols];
                for (int j = 0; j < kCols; ++j) acc[j] = vsplat<V>(T(0));
                for (int s = 0; s < ns; ++s) {
                    const T* x = xs[s] + p0;
                    const T* t = ts[s] + r0;
                    for (int q = 0; q < Q; ++q) {
                        const V xv = vload<V>(x + q * sQ);
                        const T* tq = t + q * R;
                        if (nr == kCols) {
                            for (int j = 0; j < kCols; ++j) acc[j] += xv * vsplat<V>(tq[j]);
                        } else {
                            for (int j = 0; j < nr; ++j) acc[j] += xv * vsplat<V>(tq[j]);
                        }
                    }
                }
                for (int j = 0; j < nr; ++j) {
                    T* o = out + p0 * oP + (r0 + j) * oR;
                    if (oP == 1) {
                        vstore(o, acc[j]);
                    } else {
                        for (int i = 0; i < W; ++i) o[i * oP] = acc[j][i];
                    }
                }
            }
            return;
        }
    }
#endif
    for (int r = 0; r < R; ++r)
        for (int i = 0; i < np; ++i) {
            T acc = T(0);
            for (int s = 0; s < ns; ++s) {
                const T* x = xs[s] + p0 + i;
                const T* t = ts[s] + r;
                for (int q = 0; q < Q; ++q) acc += x[q * sQ] * t[q * R];
            }
            out[(p0 + i) * oP + r * oR] = acc;
        }
}

template <typename T>
DECAF_INLINE void generic_rows(const T* const* DECAF_RESTRICT xs, const T* const* DECAF_RESTRICT ts, int ns,
                               long long p0, long long p1, long long sP, long long sQ, int Q, int R,
                               T* DECAF_RESTRICT out, long long oP, long long oR) {
    for (long long p = p0; p < p1; ++p)
        for (int r = 0; r < R; ++r) {
            T acc = T(0);
            for (int s = 0; s < ns; ++s) {
                const T* x = xs[s] + p * sP;
                const T* t = ts[s] + r;
                for (int q = 0; q < Q; ++q) acc += x[q * sQ] * t[q * R];
            }
            out[p * oP + r * oR] = acc;
        }
}

}  // namespace mix_detail

// Rows [p0, p1) of one output: out(p, r) = sum_s sum_q X_s(p, q) T_s(q, r) with X_s(p, q) at
// xs[s][p * sP + q * sQ], T_s row-major (Q x R) at ts[s], out(p, r) at out[p * oP + r * oR].
// ns == 0 writes zeros.
template <typename T, bool kVec>
DECAF_INLINE void mix_lowrank_rows(const T* const* DECAF_RESTRICT xs, const T* const* DECAF_RESTRICT ts,
                                   int ns, long long p0, long long p1, long long sP, long long sQ, int Q,
                                   int R, T* DECAF_RESTRICT out, long long oP, long long oR) {
    using namespace mix_detail;
    if (sQ == 1) {
        for (long long p = p0; p < p1; p += 8) {
            const int np = p1 - p < 8 ? static_cast<int>(p1 - p) : 8;
            rows_tile<T, kVec>(xs, ts, ns, p, np, sP, Q, R, out, oP, oR);
        }
        return;
    }
    if (sP == 1) {
#if defined(DECAF_HOST_VECTORS)
        constexpr int W = kVec ? Vec<T>::width : 1;
#else
        constexpr int W = 1;
#endif
        for (long long p = p0; p < p1; p += W) {
            const int np = p1 - p < W ? static_cast<int>(p1 - p) : W;
            cols_tile<T, kVec>(xs, ts, ns, p, np, sQ, Q, R, out, oP, oR);
        }
        return;
    }
    generic_rows<T>(xs, ts, ns, p0, p1, sP, sQ, Q, R, out, oP, oR);
}

}  // namespace decaf
