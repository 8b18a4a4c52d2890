// Pair Gram blocks in float64: out = Xj^T Xk for two (P x Q) slices of a strided tensor.
//
// One call computes one output block (one layer l, one pair t); the CPU driver runs one call per
// OpenMP iteration. Every element is widened to double before it is multiplied, so float32 data
// gives exact products and only the (double) sums round: that is the point of the kernel, since the
// Grams feed a solver that squares condition numbers.
//
// Paths: rows contiguous (sQ == 1) with Q in {4, 8, 16}: outer products of rows into register-blocked
// accumulators; columns contiguous (sP == 1): blocked dot products of columns; otherwise Q in
// {4, 8, 16} packs rows into float64 256 at a time for the rows kernel, and the rest is a generic loop.
#pragma once

#include "decaf/common.h"

namespace decaf {

// Rows per packing chunk, and the float64 workspace one pair_gram_block call needs (for Q <= 16).
constexpr int kPackRows = 256;
constexpr int kPairGramWorkDoubles = 2 * kPackRows * 16;

namespace pair_gram_detail {

// Rows contiguous, Q a compile-time 4, 8 or 16: acc(a, b) += xj(p, a) xk(p, b) over all rows p, for a
// QA x QB block of the output held in registers. QA = 4, QB = 8 is 8 vector accumulators plus three
// operands: within the 16 registers of AVX2. Larger Q re-reads the (cache-resident) rows per block.
template <typename T, int Q, int QA, int QB, bool kVec>
DECAF_INLINE void rows_fixed_block(const T* DECAF_RESTRICT xj, const T* DECAF_RESTRICT xk, long long P,
                                   long long sP, int a0, int b0, bool accumulate, double* DECAF_RESTRICT out) {
#if defined(DECAF_HOST_VECTORS)
    if constexpr (kVec && QB % 4 == 0) {
        constexpr int NV = QB / 4;
        vd4 acc[QA][NV];
        for (int a = 0; a < QA; ++a)
            for (int v = 0; v < NV; ++v)
                acc[a][v] = accumulate ? load4(out + (a0 + a) * Q + b0 + 4 * v) : splat4(0.0);
        for (long long p = 0; p < P; ++p) {
            const T* rj = xj + p * sP + a0;
            const T* rk = xk + p * sP + b0;
            vd4 bk[NV];
            for (int v = 0; v < NV; ++v) bk[v] = load4(rk + 4 * v);
            for (int a = 0; a < QA; ++a) {
                const vd4 ja = splat4(static_cast<double>(rj[a]));
                for (int v = 0; v < NV; ++v) acc[a][v] += ja * bk[v];
            }
        }
        for (int a = 0; a < QA; ++a)
            for (int v = 0; v < NV; ++v) store4(out + (a0 + a) * Q + b0 + 4 * v, acc[a][v]);
        return;
    }
#endif
    double acc[QA][QB];
    for (int a = 0; a < QA; ++a)
        for (int b = 0; b < QB; ++b) acc[a][b] = accumulate ? out[(a0 + a) * Q + b0 + b] : 0.0;
    for (long long p = 0; p < P; ++p) {
        const T* rj = xj + p * sP + a0;
        const T* rk = xk + p * sP + b0;
        for (int a = 0; a < QA; ++a) {
            const double ja = static_cast<double>(rj[a]);
            for (int b = 0; b < QB; ++b) acc[a][b] += ja * static_cast<double>(rk[b]);
        }
    }
    for (int a = 0; a < QA; ++a)
        for (int b = 0; b < QB; ++b) out[(a0 + a) * Q + b0 + b] = acc[a][b];
}

template <typename T, int Q, bool kVec>
DECAF_INLINE void rows_fixed(const T* DECAF_RESTRICT xj, const T* DECAF_RESTRICT xk, long long P,
                             long long sP, bool accumulate, double* DECAF_RESTRICT out) {
    constexpr int QA = 4;
    constexpr int QB = Q < 8 ? Q : 8;
    for (int a0 = 0; a0 < Q; a0 += QA)
        for (int b0 = 0; b0 < Q; b0 += QB)
            rows_fixed_block<T, Q, QA, QB, kVec>(xj, xk, P, sP, a0, b0, accumulate, out);
}

// Copies rows [p0, p0 + n) of a strided (P x Q) slice into a row-major float64 buffer: a transpose
// for column-major slices, a widening for float32. Each element is converted once here instead of
// once per register block of the product.
template <typename T, int Q>
DECAF_INLINE void pack_rows(const T* DECAF_RESTRICT x, long long p0, int n, long long sP, long long sQ,
                            double* DECAF_RESTRICT buf) {
    if (sP == 1) {  // column by column: contiguous reads
        for (int q = 0; q < Q; ++q) {
            const T* col = x + q * sQ + p0;
            for (int i = 0; i < n; ++i) buf[i * Q + q] = static_cast<double>(col[i]);
        }
    } else {
        for (int i = 0; i < n; ++i) {
            const T* row = x + (p0 + i) * sP;
            for (int q = 0; q < Q; ++q) buf[i * Q + q] = static_cast<double>(row[q * sQ]);
        }
    }
}

template <typename T, int Q, bool kVec>
DECAF_INLINE void packed_fixed(const T* DECAF_RESTRICT xj, const T* DECAF_RESTRICT xk, long long P,
                               long long sP, long long sQ, double* DECAF_RESTRICT out,
                               double* DECAF_RESTRICT work) {
    double* bj = work;
    double* bk = work + kPackRows * Q;
    for (long long p0 = 0; p0 < P; p0 += kPackRows) {
        const int n = P - p0 < kPackRows ? static_cast<int>(P - p0) : kPackRows;
        pack_rows<T, Q>(xj, p0, n, sP, sQ, bj);
        const bool same = xj == xk;  // diagonal pairs (j, j): one copy serves both sides
        if (!same) pack_rows<T, Q>(xk, p0, n, sP, sQ, bk);
        rows_fixed<double, Q, kVec>(bj, same ? bj : bk, n, Q, p0 > 0, out);
    }
}

// Columns contiguous: out(a, b) = sum_p xj(p, a) xk(p, b) as dot products of columns, a 2 x 4 block
// of outputs at a time: six column loads feed eight fused multiply-adds, with eight accumulators (in
// the 16 registers of AVX2). The vector path keeps four partial sums per output (p mod 4), the plain
// path eight (p mod 8): paths agree to rounding, each is deterministic.
template <typename T, bool kVec>
DECAF_INLINE void cols(const T* DECAF_RESTRICT xj, const T* DECAF_RESTRICT xk, long long P, long long sQ,
                       int Q, double* DECAF_RESTRICT out) {
    int a0 = 0;
#if defined(DECAF_HOST_VECTORS)
    if constexpr (kVec) {
        const long long P4 = P / 4 * 4;
        for (; a0 + 2 <= Q; a0 += 2) {
            const T* ca[2] = {xj + a0 * sQ, xj + (a0 + 1) * sQ};
            int b0 = 0;
            for (; b0 < Q; b0 += 4) {
                const int nb = Q - b0 < 4 ? Q - b0 : 4;
                const T* cb[4];
                for (int u = 0; u < 4; ++u) cb[u] = xk + (b0 + (u < nb ? u : 0)) * sQ;
                vd4 acc[2][4];
                for (int i = 0; i < 2; ++i)
                    for (int u = 0; u < 4; ++u) acc[i][u] = splat4(0.0);
                for (long long p = 0; p < P4; p += 4) {
                    const vd4 va0 = load4(ca[0] + p), va1 = load4(ca[1] + p);
                    for (int u = 0; u < 4; ++u) {
                        const vd4 vb = load4(cb[u] + p);
                        acc[0][u] += va0 * vb;
                        acc[1][u] += va1 * vb;
                    }
                }
                for (int i = 0; i < 2; ++i)
                    for (int u = 0; u < nb; ++u) {
                        double tail = 0.0;
                        for (long long p = P4; p < P; ++p)
                            tail += static_cast<double>(ca[i][p]) * static_cast<double>(cb[u][p]);
                        out[(a0 + i) * Q + b0 + u] = hsum4(acc[i][u]) + tail;
                    }
            }
        }
    }
#endif
    const long long P8 = P / kLanes * kLanes;
    for (int a = a0; a < Q; ++a) {
        const T* ca = xj + a * sQ;
        for (int b = 0; b < Q; ++b) {
            const T* cb = xk + b * sQ;
            double acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (long long p = 0; p < P8; p += kLanes)
                for (int k = 0; k < kLanes; ++k)
                    acc[k] += static_cast<double>(ca[p + k]) * static_cast<double>(cb[p + k]);
            for (long long p = P8; p < P; ++p) acc[p - P8] += static_cast<double>(ca[p]) * static_cast<double>(cb[p]);
            out[a * Q + b] = hsum8(acc);
        }
    }
}

// Any strides (including sP == sQ == 0 broadcasts): row by row into a Q x Q accumulator in out.
template <typename T>
DECAF_INLINE void generic(const T* DECAF_RESTRICT xj, const T* DECAF_RESTRICT xk, long long P, long long sP,
                          long long sQ, int Q, double* DECAF_RESTRICT out) {
    for (int i = 0; i < Q * Q; ++i) out[i] = 0.0;
    for (long long p = 0; p < P; ++p) {
        const T* rj = xj + p * sP;
        const T* rk = xk + p * sP;
        for (int a = 0; a < Q; ++a) {
            const double ja = static_cast<double>(rj[a * sQ]);
            double* o = out + a * Q;
            for (int b = 0; b < Q; ++b) o[b] += ja * static_cast<double>(rk[b * sQ]);
        }
    }
}

}  // namespace pair_gram_detail

// out (Q x Q, row-major) = Xj^T Xk, where Xj(p, q) = xj[p * sP + q * sQ] (same for Xk).
// work: kPairGramWorkDoubles doubles, used only by the packed path (Q in {4, 8, 16}, both strides > 1).
template <typename T, bool kVec>
DECAF_INLINE void pair_gram_block(const T* DECAF_RESTRICT xj, const T* DECAF_RESTRICT xk, long long P,
                                  int Q, long long sP, long long sQ, double* DECAF_RESTRICT out,
                                  double* DECAF_RESTRICT work) {
    using namespace pair_gram_detail;
    if (sQ == 1) {
        switch (Q) {
            case 4: return rows_fixed<T, 4, kVec>(xj, xk, P, sP, false, out);
            case 8: return rows_fixed<T, 8, kVec>(xj, xk, P, sP, false, out);
            case 16: return rows_fixed<T, 16, kVec>(xj, xk, P, sP, false, out);
            default: break;
        }
    }
    if (sP == 1) return cols<T, kVec>(xj, xk, P, sQ, Q, out);
    switch (Q) {
        case 4: return packed_fixed<T, 4, kVec>(xj, xk, P, sP, sQ, out, work);
        case 8: return packed_fixed<T, 8, kVec>(xj, xk, P, sP, sQ, out, work);
        case 16: return packed_fixed<T, 16, kVec>(xj, xk, P, sP, sQ, out, work);
        default: break;
    }
    generic<T>(xj, xk, P, sP, sQ, Q, out);
}

}  // namespace decaf
