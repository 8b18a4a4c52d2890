// Building blocks of the small-core solver (decaf/small_core.h), 1 of 4: the operations on
// zero-padded float64 columns that the other blocks are made of (each with a vector path, kVec = true,
// and a plain-loop twin; see decaf/common.h).
#pragma once

#include "decaf/common.h"
#include "decaf/small_core/shared.h"

namespace decaf {

namespace small_core_detail {

// Reductions and updates over n doubles, n a multiple of kLanes (working columns are zero padded).

template <bool kVec>
DECAF_INLINE double dot(const double* DECAF_RESTRICT x, const double* DECAF_RESTRICT y, int n) {
#if defined(DECAF_HOST_VECTORS)
    if constexpr (kVec) {
        vd4 a0 = splat4(0.0), a1 = a0;
        for (int i = 0; i < n; i += kLanes) {
            a0 += load4(x + i) * load4(y + i);
            a1 += load4(x + i + 4) * load4(y + i + 4);
        }
        return hsum4(a0 + a1);
    }
#endif
    double acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int i = 0; i < n; i += kLanes)
        for (int k = 0; k < kLanes; ++k) acc[k] += x[i + k] * y[i + k];
    return hsum8(acc);
}

// y += a x
template <bool kVec>
DECAF_INLINE void axpy(double a, const double* DECAF_RESTRICT x, double* DECAF_RESTRICT y, int n) {
#if defined(DECAF_HOST_VECTORS)
    if constexpr (kVec) {
        const vd4 va = splat4(a);
        for (int i = 0; i < n; i += 4) store4(y + i, load4(y + i) + va * load4(x + i));
        return;
    }
#endif
    for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

// y += sum_t a_t x_t for t = 0, 1, ..., nt - 1 (x_t = x + idx(t) * ldx, a_t = coef(t)), each entry
// accumulated in that order exactly as nt successive axpy calls would, but with y held in registers
// across the nt updates (up to eight 4-entry chunks per pass: independent chains) instead of going
// through memory each time (a chain of store-to-load forwarding). n a multiple of 4.
#if defined(DECAF_HOST_VECTORS)
template <int kChunks, class Idx, class Coef>
DECAF_INLINE void axpy_chain_block(int nt, Idx idx, Coef coef, const double* DECAF_RESTRICT x, long long ldx,
                                   double* DECAF_RESTRICT y) {
    vd4 acc[kChunks];
    for (int u = 0; u < kChunks; ++u) acc[u] = load4(y + 4 * u);
    for (int t = 0; t < nt; ++t) {
        const vd4 a = splat4(coef(t));
        const double* DECAF_RESTRICT xt = x + idx(t) * ldx;
        for (int u = 0; u < kChunks; ++u) acc[u] = acc[u] + a * load4(xt + 4 * u);
    }
    for (int u = 0; u < kChunks; ++u) store4(y + 4 * u, acc[u]);
}
#endif

template <bool kVec, class Idx, class Coef>
DECAF_INLINE void axpy_chain(int nt, Idx idx, Coef coef, const double* DECAF_RESTRICT x, long long ldx,
                             double* DECAF_RESTRICT y, int n) {
#if defined(DECAF_HOST_VECTORS)
    if constexpr (kVec) {
        int i = 0;
        for (; i + 32 <= n; i += 32) axpy_chain_block<8>(nt, idx, coef, x + i, ldx, y + i);
        switch ((n - i) / 4) {
            case 7: axpy_chain_block<7>(nt, idx, coef, x + i, ldx, y + i); break;
            case 6: axpy_chain_block<6>(nt, idx, coef, x + i, ldx, y + i); break;
            case 5: axpy_chain_block<5>(nt, idx, coef, x + i, ldx, y + i); break;
            case 4: axpy_chain_block<4>(nt, idx, coef, x + i, ldx, y + i); break;
            case 3: axpy_chain_block<3>(nt, idx, coef, x + i, ldx, y + i); break;
            case 2: axpy_chain_block<2>(nt, idx, coef, x + i, ldx, y + i); break;
            case 1: axpy_chain_block<1>(nt, idx, coef, x + i, ldx, y + i); break;
            default: break;
        }
        return;
    }
#endif
    for (int i = 0; i < n; ++i) {
        double acc = y[i];
        for (int t = 0; t < nt; ++t) acc += coef(t) * x[idx(t) * ldx + i];
        y[i] = acc;
    }
}

// (u, v) <- (cs u - sn v, sn u + cs v) over n entries, returning the new squared norms of the
// first nw of them (nw <= n, both multiples of kLanes): measured from registers on the way.
template <bool kVec>
DECAF_INLINE void rotate_and_measure(double cs, double sn, double* DECAF_RESTRICT u,
                                     double* DECAF_RESTRICT v, int nw, int n, double& uu,
                                     double& vv) {
#if defined(DECAF_HOST_VECTORS)
    if constexpr (kVec) {
        const vd4 c = splat4(cs), s = splat4(sn);
        vd4 au0 = splat4(0.0), au1 = au0, av0 = au0, av1 = au0;
        int i = 0;
        for (; i < nw; i += kLanes) {
            const vd4 a0 = load4(u + i), b0 = load4(v + i), a1 = load4(u + i + 4), b1 = load4(v + i + 4);
            const vd4 x0 = c * a0 - s * b0, y0 = s * a0 + c * b0;
            const vd4 x1 = c * a1 - s * b1, y1 = s * a1 + c * b1;
            store4(u + i, x0);
            store4(v + i, y0);
            store4(u + i + 4, x1);
            store4(v + i + 4, y1);
            au0 += x0 * x0;
            av0 += y0 * y0;
            au1 += x1 * x1;
            av1 += y1 * y1;
        }
        for (; i < n; i += 4) {
            const vd4 a = load4(u + i), b = load4(v + i);
            store4(u + i, c * a - s * b);
            store4(v + i, s * a + c * b);
        }
        const vd4 au = au0 + au1, av = av0 + av1;
        const vd4 r = hsum4x4(au, av, au, av);
        uu = r[0];
        vv = r[1];
        return;
    }
#endif
    double su[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0}, sv[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int i = 0; i < n; ++i) {
        const double a = u[i], b = v[i];
        const double x = cs * a - sn * b, y = sn * a + cs * b;
        u[i] = x;
        v[i] = y;
        if (i < nw) su[i % kLanes] += x * x, sv[i % kLanes] += y * y;
    }
    uu = hsum8(su);
    vv = hsum8(sv);
}

#if defined(DECAF_HOST_VECTORS)
// out[u] = x[u] . y[u] for four columns of length n (a multiple of kLanes), each summed in hsum8's order,
// the four horizontal sums batched in one hsum4x4.
DECAF_INLINE void dot4(const double* const x[4], const double* const y[4], int n, double* out) {
    vd4 acc[4];
    for (int u = 0; u < 4; ++u) {
        vd4 a0 = splat4(0.0), a1 = a0;
        for (int i = 0; i < n; i += kLanes) {
            a0 += load4(x[u] + i) * load4(y[u] + i);
            a1 += load4(x[u] + i + 4) * load4(y[u] + i + 4);
        }
        acc[u] = a0 + a1;
    }
    store4(out, hsum4x4(acc[0], acc[1], acc[2], acc[3]));
}
#endif

// out[k] = x_k . y_k for the column pairs (x_k, y_k) = (J + p[k] * ldc, J + q[k] * ldc), k < npairs;
// four pairs at a time share one batched horizontal sum. Entries are summed in hsum8's order.
template <bool kVec>
DECAF_INLINE void pair_dots(const double* DECAF_RESTRICT J, long long ldc, const int* DECAF_RESTRICT p,
                            const int* DECAF_RESTRICT q, int npairs, int n, double* DECAF_RESTRICT out) {
    int k = 0;
#if defined(DECAF_HOST_VECTORS)
    if constexpr (kVec) {
        for (; k + 4 <= npairs; k += 4) {
            const double* x[4] = {J + p[k] * ldc, J + p[k + 1] * ldc, J + p[k + 2] * ldc, J + p[k + 3] * ldc};
            const double* y[4] = {J + q[k] * ldc, J + q[k + 1] * ldc, J + q[k + 2] * ldc, J + q[k + 3] * ldc};
            dot4(x, y, n, out + k);
        }
    }
#endif
    for (; k < npairs; ++k) out[k] = dot<kVec>(J + p[k] * ldc, J + q[k] * ldc, n);
}

// (u, v) <- (c u - s v, s u + c v) over n entries, n a multiple of 4.
template <bool kVec>
DECAF_INLINE void rotate(double c, double s, double* DECAF_RESTRICT u, double* DECAF_RESTRICT v, int n) {
#if defined(DECAF_HOST_VECTORS)
    if constexpr (kVec) {
        const vd4 vc = splat4(c), vs = splat4(s);
        for (int i = 0; i < n; i += 4) {
            const vd4 a = load4(u + i), b = load4(v + i);
            store4(u + i, vc * a - vs * b);
            store4(v + i, vs * a + vc * b);
        }
        return;
    }
#endif
    for (int i = 0; i < n; ++i) {
        const double a = u[i], b = v[i];
        u[i] = c * a - s * b;
        v[i] = s * a + c * b;
    }
}

// y -= a x + b z over n entries, n a multiple of 4 (the rank-2 update of the tridiagonalisation).
template <bool kVec>
DECAF_INLINE void sub_rank2(double a, const double* DECAF_RESTRICT x, double b, const double* DECAF_RESTRICT z,
                            double* DECAF_RESTRICT y, int n) {
#if defined(DECAF_HOST_VECTORS)
    if constexpr (kVec) {
        const vd4 va = splat4(a), vb = splat4(b);
        for (int i = 0; i < n; i += 4) store4(y + i, load4(y + i) - (va * load4(x + i) + vb * load4(z + i)));
        return;
    }
#endif
    for (int i = 0; i < n; ++i) y[i] -= a * x[i] + b * z[i];
}

// ---- Small dense products of the squared path (target float32). ----

// K = Cw^T Cw for the nc columns of Cw (stride and length ldw, zero padded), stored in full
// (both triangles) column-major with leading dimension ldk; rows nc..ldk-1 are zeroed. Four entries
// of a column share one batched horizontal sum.
template <bool kVec>
DECAF_INLINE void core_gram(const double* DECAF_RESTRICT Cw, int nc, int ldw, double* DECAF_RESTRICT K,
                            int ldk) {
    for (int j = 0; j < nc; ++j) {
        const double* DECAF_RESTRICT cj = Cw + (long long)j * ldw;
        double* DECAF_RESTRICT kj = K + (long long)j * ldk;
        int i = 0;
#if defined(DECAF_HOST_VECTORS)
        if constexpr (kVec) {
            for (; i + 4 <= j + 1; i += 4) {
                const double* x[4] = {Cw + (long long)i * ldw, Cw + (long long)(i + 1) * ldw,
                                      Cw + (long long)(i + 2) * ldw, Cw + (long long)(i + 3) * ldw};
                const double* y[4] = {cj, cj, cj, cj};
                dot4(x, y, ldw, kj + i);
            }
        }
#endif
        for (; i <= j; ++i) kj[i] = dot<kVec>(Cw + (long long)i * ldw, cj, ldw);
        for (i = 0; i < j; ++i) K[(long long)i * ldk + j] = kj[i];
    }
    for (int j = 0; j < nc; ++j)
        for (int i = nc; i < ldk; ++i) K[(long long)j * ldk + i] = 0.0;
}

// P = A^T V for the squared path's back end: P[i][t] = sum_{c < nsum} A[c * lda + i] V[c * ldv + t]
// for rows i < round4(nrows) (A must be readable, e.g. zero padded, that far; lda, ldv multiples of
// 4). Blocks of 4 rows x 8 columns keep 8 independent accumulators in registers.
template <bool kVec>
DECAF_INLINE void rows_product(const double* DECAF_RESTRICT A, long long lda, int nsum, int nrows,
                               const double* DECAF_RESTRICT V, int ldv, double* DECAF_RESTRICT P) {
    const int nr4 = (nrows + 3) & ~3;
#if defined(DECAF_HOST_VECTORS)
    if constexpr (kVec) {
        for (int i0 = 0; i0 < nr4; i0 += 4) {
            int j = 0;
            for (; j + 8 <= ldv; j += 8) {
                vd4 acc[4][2];
                for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = splat4(0.0);
                for (int c = 0; c < nsum; ++c) {
                    const double* DECAF_RESTRICT vc = V + (long long)c * ldv + j;
                    const vd4 v0 = load4(vc), v1 = load4(vc + 4);
                    const double* DECAF_RESTRICT ac = A + c * lda + i0;
                    for (int r = 0; r < 4; ++r) {
                        const vd4 a = splat4(ac[r]);
                        acc[r][0] += a * v0;
                        acc[r][1] += a * v1;
                    }
                }
                for (int r = 0; r < 4; ++r) {
                    store4(P + (long long)(i0 + r) * ldv + j, acc[r][0]);
                    store4(P + (long long)(i0 + r) * ldv + j + 4, acc[r][1]);
                }
            }
            if (j < ldv) {  // a last 4 columns
                vd4 acc[4];
                for (int r = 0; r < 4; ++r) acc[r] = splat4(0.0);
                for (int c = 0; c < nsum; ++c) {
                    const vd4 v0 = load4(V + (long long)c * ldv + j);
                    const double* DECAF_RESTRICT ac = A + c * lda + i0;
                    for (int r = 0; r < 4; ++r) acc[r] += splat4(ac[r]) * v0;
                }
                for (int r = 0; r < 4; ++r) store4(P + (long long)(i0 + r) * ldv + j, acc[r]);
            }
        }
        return;
    }
#endif
    for (int i = 0; i < nr4; ++i) {
        double* DECAF_RESTRICT pi = P + (long long)i * ldv;
        for (int t = 0; t < ldv; ++t) pi[t] = 0.0;
        for (int c = 0; c < nsum; ++c) {
            const double a = A[c * lda + i];
            const double* DECAF_RESTRICT vc = V + (long long)c * ldv;
            for (int t = 0; t < ldv; ++t) pi[t] += a * vc[t];
        }
    }
}

}  // namespace small_core_detail

}  // namespace decaf
