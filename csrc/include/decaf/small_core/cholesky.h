// Building blocks of the small-core solver (decaf/small_core.h), 2 of 4: the rank-revealing pivoted
// Cholesky factorisation of a scaled Gram.
#pragma once

#include <cmath>

#include "decaf/common.h"
#include "decaf/small_core/base.h"

namespace decaf {

namespace small_core_detail {

// Left-looking Cholesky with diagonal pivoting of the PSD matrix G (column-major, ld), stopped when
// the largest remaining diagonal is <= tol. Row k of R (length ld, zero padded) is stored in the
// original column order, so R^T R ~= G without a permutation; perm (m ints) receives the pivots in
// order, then the never-pivoted indices: row k of R is zero outside perm[k..m-1]. Returns the
// numerical rank. diag and mask are ld-long scratch vectors.
template <bool kVec>
DECAF_INLINE int pivoted_cholesky(const double* DECAF_RESTRICT G, int m, int ld, double tol,
                                  double* DECAF_RESTRICT R, int* DECAF_RESTRICT perm,
                                  double* DECAF_RESTRICT diag, double* DECAF_RESTRICT mask) {
    for (int i = 0; i < ld; ++i) {
        mask[i] = i < m ? 1.0 : 0.0;
        diag[i] = i < m ? G[(long long)i * ld + i] : -1.0;
    }
    int k = 0;
    for (; k < m; ++k) {
        // The first index of the largest diagonal above tol, in four interleaved chains merged with
        // ties to the lower index: the same winner as one pass. Selects, not branches (the winner is
        // unpredictable; the vector form keeps the compiler from turning them into branches). NaN
        // never wins, so broken input ends the factorisation. diag is padded with -1 to ld.
        double bq[4] = {tol, tol, tol, tol}, pq[4] = {-1.0, -1.0, -1.0, -1.0};
#if defined(DECAF_HOST_VECTORS)
        if constexpr (kVec) {
            vd4 bv = splat4(tol), pv = splat4(-1.0), iv = vd4{0.0, 1.0, 2.0, 3.0};
            for (int i = 0; i < ld; i += 4) {
                const vd4 dv = load4(diag + i);
                const auto better = dv > bv;
                bv = better ? dv : bv;
                pv = better ? iv : pv;
                iv += 4.0;
            }
            store4(bq, bv);
            store4(pq, pv);
        } else
#endif
        {
            for (int i = 0; i < ld; i += 4) {
                for (int u = 0; u < 4; ++u) {
                    const bool better = diag[i + u] > bq[u];
                    bq[u] = better ? diag[i + u] : bq[u];
                    pq[u] = better ? i + u : pq[u];
                }
            }
        }
        int p = -1;
        double best = tol;
        for (int u = 0; u < 4; ++u) {
            const int pu = (int)pq[u];
            if (pu >= 0 && (bq[u] > best || (bq[u] == best && pu < p))) best = bq[u], p = pu;
        }
        if (p < 0) break;
        perm[k] = p;
        double* DECAF_RESTRICT rk = R + (long long)k * ld;
        const double* DECAF_RESTRICT gp = G + (long long)p * ld;
        for (int i = 0; i < ld; ++i) rk[i] = gp[i];
        axpy_chain<kVec>(
            k, [](int t) { return (long long)t; }, [&](int t) { return -R[(long long)t * ld + p]; }, R, ld, rk, ld);
        // The pivot comes from the running diagonal, as in LAPACK's dpstrf: it is the Schur
        // complement entry computed with the fewest cancellations.
        const double rkk = std::sqrt(best);
        const double inv = 1.0 / rkk;
        mask[p] = 0.0;
        for (int i = 0; i < ld; ++i) {
            // Eliminated columns are exactly zero in exact arithmetic; the mask makes them so.
            const double v = rk[i] * inv * mask[i];
            rk[i] = v;
            diag[i] -= v * v;
        }
        rk[p] = rkk;
        diag[p] = -1.0;
    }
    for (int i = 0, t = k; i < m; ++i)
        if (mask[i] != 0.0) perm[t++] = i;
    return k;
}

}  // namespace small_core_detail

}  // namespace decaf
