// Consensus small-core solver: truncated SVD of M = Bc Ac from the two Gram matrices alone.
//
// One call of small_core_solve() handles one problem. It touches only the arrays it is given
// (inputs, outputs, a caller-provided workspace), allocates nothing and throws nothing, so the same
// source can become the body of a CUDA one-problem-per-thread kernel (it compiles with nvcc as
// __host__ __device__; kVec = false is the plain-loop path, the one a GPU thread would run).
//
// Maths (all exact in exact arithmetic):
//   Gb = Bc^T Bc = Rb^T Rb, Ga = Ac Ac^T = Ra^T Ra   (rank-revealing pivoted Cholesky; Rb: kb x m)
//   Bc = Qb Rb, Ac = Ra^T Qa^T with orthonormal Qb, Qa that are never formed, so
//   M = Qb (Rb Ra^T) Qa^T and the SVD of M is the SVD of the small core C = Rb Ra^T rotated by Qb, Qa.
//   With C = Uc S Vc^T:  Bc (Ra^T Vc S^(a-1)) = U S^a  and  (S^-a Uc^T Rb) Ac = S^(1-a) V^T.
// No factor is ever inverted: singular Grams (zero or duplicated agents) only lower kb / ka.
//
// Accuracy: the Grams square the condition numbers of Bc and Ac, so directions of Bc (or Ac)
// weaker than about sqrt(m eps) times its strongest are lost; everything the Grams do resolve is
// treated with backward-stable steps (pivoted Cholesky, one-sided Jacobi).
#pragma once

#include <cfloat>
#include <cmath>

#include "decaf/common.h"

namespace decaf {

// Sweep limit of the one-sided Jacobi iteration. Random 24 x 24 cores need 8-9 sweeps, cores with
// condition numbers 1e10-1e14 15-18, m = 1024 about 22; 60 only trips on broken (non-PSD) input.
constexpr int kSmallCoreMaxSweeps = 60;

// info codes written per problem (a non-negative info is the number of Jacobi sweeps used).
constexpr int kSmallCoreNonFinite = -1;
constexpr int kSmallCoreNoConvergence = -2;

// Workspace of one problem of size m, in doubles and in ints. The double workspace must be
// aligned to at least 8 bytes (64 is what the CPU driver uses).
DECAF_HD DECAF_INLINE long long small_core_work_doubles(int m) {
    const long long ld = round_up_lanes(m);
    // G, Rb, Ra: m x ld each; Jacobi columns: m x (2 ld); seven vectors of ld.
    return 5 * (long long)m * ld + 7 * ld;
}
DECAF_HD DECAF_INLINE long long small_core_work_ints(int m) { return 6 * (long long)m + 4; }

namespace small_core_detail {

// Reductions and updates over n doubles, n a multiple of kLanes (working columns are zero padded).

template <bool kVec>
DECAF_HD DECAF_INLINE double dot(const double* DECAF_RESTRICT x, const double* DECAF_RESTRICT y, int n) {
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
DECAF_HD DECAF_INLINE void axpy(double a, const double* DECAF_RESTRICT x, double* DECAF_RESTRICT y, int n) {
#if defined(DECAF_HOST_VECTORS)
    if constexpr (kVec) {
        const vd4 va = splat4(a);
        for (int i = 0; i < n; i += 4) store4(y + i, load4(y + i) + va * load4(x + i));
        return;
    }
#endif
    for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

// (u, v) <- (cs u - sn v, sn u + cs v) over n entries, returning the new squared norms of the
// first nw of them (nw <= n, both multiples of kLanes): measured from registers on the way.
template <bool kVec>
DECAF_HD DECAF_INLINE void rotate_and_measure(double cs, double sn, double* DECAF_RESTRICT u,
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

// out[k] = x_k . y_k for the column pairs (x_k, y_k) = (J + p[k] * ldc, J + q[k] * ldc), k < npairs;
// four pairs at a time share one batched horizontal sum. Entries are summed in hsum8's order.
template <bool kVec>
DECAF_HD DECAF_INLINE void pair_dots(const double* DECAF_RESTRICT J, long long ldc, const int* DECAF_RESTRICT p,
                                     const int* DECAF_RESTRICT q, int npairs, int n, double* DECAF_RESTRICT out) {
    int k = 0;
#if defined(DECAF_HOST_VECTORS)
    if constexpr (kVec) {
        for (; k + 4 <= npairs; k += 4) {
            vd4 acc[4];
            for (int u = 0; u < 4; ++u) {
                const double* x = J + p[k + u] * ldc;
                const double* y = J + q[k + u] * ldc;
                vd4 a0 = splat4(0.0), a1 = a0;
                for (int i = 0; i < n; i += kLanes) {
                    a0 += load4(x + i) * load4(y + i);
                    a1 += load4(x + i + 4) * load4(y + i + 4);
                }
                acc[u] = a0 + a1;
            }
            store4(out + k, hsum4x4(acc[0], acc[1], acc[2], acc[3]));
        }
    }
#endif
    for (; k < npairs; ++k) out[k] = dot<kVec>(J + p[k] * ldc, J + q[k] * ldc, n);
}

// True when every entry is finite. x - x is NaN exactly for a NaN or an infinity, so the sum is a
// branch-free scan that vectorises.
DECAF_HD DECAF_INLINE bool all_finite(const double* DECAF_RESTRICT g, long long n) {
    double poison = 0.0;
    for (long long i = 0; i < n; ++i) poison += g[i] - g[i];
    return poison == 0.0;
}

DECAF_HD DECAF_INLINE double max_diag(const double* DECAF_RESTRICT g, int m) {
    double dmax = 0.0;
    for (int i = 0; i < m; ++i) dmax = g[(long long)i * m + i] > dmax ? g[(long long)i * m + i] : dmax;
    return dmax;
}

// Copies the symmetric part of the row-major m x m Gram g into the column-major, zero-padded G
// (leading dimension ld), scaled by 2^-e2 with 2^(e2-1) <= dmax < 2^e2, so that its largest diagonal
// lies in [0.5, 1) (that diagonal is returned): the scaling is exact, and later squares and
// products of entries can neither overflow nor underflow. Needs dmax > 0 (g's largest diagonal).
DECAF_HD DECAF_INLINE double load_scaled_gram(const double* DECAF_RESTRICT g, int m, int ld, double dmax,
                                              double* DECAF_RESTRICT G, int& e2) {
    const double dmax_scaled = std::frexp(dmax, &e2);
    // Two factors, because 2^-e2 alone overflows for a subnormal dmax; the 0.5 symmetrises.
    const double s1 = std::ldexp(1.0, -(e2 / 2));
    const double s2 = std::ldexp(0.5, -(e2 - e2 / 2));
    for (int j = 0; j < m; ++j) {
        double* DECAF_RESTRICT col = G + (long long)j * ld;
        for (int i = 0; i < m; ++i)
            col[i] = (g[(long long)j * m + i] * s1 + g[(long long)i * m + j] * s1) * s2;
        for (int i = m; i < ld; ++i) col[i] = 0.0;
    }
    return dmax_scaled;
}

// v *= 2^-e, exactly, in two factors so that neither overflows.
DECAF_HD DECAF_INLINE void scale_pow2(double* DECAF_RESTRICT v, long long n, int e) {
    const double s1 = std::ldexp(1.0, -(e / 2));
    const double s2 = std::ldexp(1.0, -(e - e / 2));
    for (long long i = 0; i < n; ++i) v[i] = v[i] * s1 * s2;
}

// Left-looking Cholesky with diagonal pivoting of the PSD matrix G (column-major, ld), stopped when
// the largest remaining diagonal is <= tol. Row k of R (length ld, zero padded) is stored in the
// original column order, so R^T R ~= G without a permutation; perm (m ints) receives the pivots in
// order, then the never-pivoted indices: row k of R is zero outside perm[k..m-1]. Returns the
// numerical rank. diag and mask are ld-long scratch vectors.
template <bool kVec>
DECAF_HD DECAF_INLINE int pivoted_cholesky(const double* DECAF_RESTRICT G, int m, int ld, double tol,
                                           double* DECAF_RESTRICT R, int* DECAF_RESTRICT perm,
                                           double* DECAF_RESTRICT diag, double* DECAF_RESTRICT mask) {
    for (int i = 0; i < ld; ++i) {
        mask[i] = i < m ? 1.0 : 0.0;
        diag[i] = i < m ? G[(long long)i * ld + i] : -1.0;
    }
    int k = 0;
    for (; k < m; ++k) {
        int p = -1;
        double best = tol;
        for (int i = 0; i < m; ++i) {  // selects, not branches: the winner is unpredictable
            const bool better = diag[i] > best;  // NaN never wins, so broken input ends the factorisation
            best = better ? diag[i] : best;
            p = better ? i : p;
        }
        if (p < 0) break;
        perm[k] = p;
        double* DECAF_RESTRICT rk = R + (long long)k * ld;
        const double* DECAF_RESTRICT gp = G + (long long)p * ld;
        for (int i = 0; i < ld; ++i) rk[i] = gp[i];
        for (int t = 0; t < k; ++t) axpy<kVec>(-R[(long long)t * ld + p], R + (long long)t * ld, rk, ld);
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

// 1/sqrt(x) for x in [1, 2], by a quadratic first guess (0.7% off) and three Newton steps (to
// within an ulp or two). Arithmetic only: unlike std::sqrt, which may set errno, this lets the
// compiler vectorise the angle loop below without -fno-math-errno.
DECAF_HD DECAF_INLINE double rsqrt_1_2(double x) {
    double y = (0.14632082 * x - 0.72323499) * x + 1.57186441;
    for (int i = 0; i < 3; ++i) y += 0.5 * y * (1.0 - (x * y) * y);
    return y;
}

// Rotation (cs, sn) that makes columns p and q orthogonal, from a = |w_p|^2, b = |w_q|^2,
// c = w_p . w_q: tan = t, the smaller root of t^2 + 2 zeta t - 1 = 0 with zeta = (b - a) / (2c),
// i.e. t = sign(zeta) / (|zeta| + sqrt(1 + zeta^2)), the rotation by at most 45 degrees that the
// convergence theory is about. Written with r = min(|zeta|, 1/|zeta|), so that every square
// root has its argument in [1, 2] and nothing overflows however small c is.
// Returns sn = 0 when the pair needs no rotation.
DECAF_HD DECAF_INLINE void jacobi_angle(double a, double b, double c, double null2, double& cs, double& sn) {
    const double tol = DBL_EPSILON;
    const double smaller = a < b ? a : b;
    const bool go = (smaller > null2) & (c * c > (tol * tol) * (a * b));
    const double d = b - a;
    const double ad = std::fabs(d), ac2 = 2.0 * std::fabs(c);
    const bool big = ad >= ac2;  // |zeta| >= 1
    double den = big ? ad : ac2;
    den = den > 0.0 ? den : 1.0;
    const double r = (big ? ac2 : ad) / den;
    const double q = 1.0 + r * r;
    const double h = q * rsqrt_1_2(q);  // sqrt(1 + r^2)
    const double t = ((d < 0.0) != (c < 0.0) ? -1.0 : 1.0) * (big ? r : 1.0) / (big ? 1.0 + h : r + h);
    const double cs_t = rsqrt_1_2(1.0 + t * t);
    cs = go ? cs_t : 1.0;
    sn = go ? cs_t * t : 0.0;
}

// One-sided Jacobi on the nc columns of J (stride ldc). The first ldw entries of a column are the
// matrix being orthogonalised; the next entries start as the identity and accumulate the right
// rotations, so one loop rotates both. Pairs are visited in round-robin ("tournament") order: the
// nc/2 pairs of a round are disjoint, so their dot products, rotation angles and rotations are each
// computed in one batch with no dependency between pairs. (A row-cyclic order chains every pair to
// the previous one through their shared column; measured twice as slow here.)
//
// A pair is skipped when |w_p . w_q| <= eps |w_p| |w_q|, with both norms measured on the columns
// as they are (at the start of each sweep and, after every rotation, from the rotated values), or
// when either column is below the null threshold null_rel * (largest column norm): such a column
// is discarded as numerically null at the end anyway (its norm never grows: a rotation moves weight
// towards the heavier column of the pair), and rotating it would only orthogonalise rounding noise.
// kLdw / kLdc, when non-zero, fix ldw / ldc at compile time (fully unrolled column loops: about 12%
// faster for the common small cores). Returns the number of sweeps (the last one rotates nothing)
// or kSmallCoreNoConvergence. iw: 2 (nc + 1) ints; dw: 4 (nc + 1) doubles.
template <bool kVec, int kLdw = 0, int kLdc = 0>
DECAF_HD DECAF_INLINE int one_sided_jacobi(double* DECAF_RESTRICT J, int nc, int ldw_arg, int ldc_arg,
                                           double null_rel, int* DECAF_RESTRICT iw, double* DECAF_RESTRICT dw) {
    if (nc < 2) return 0;
    const int ldw = kLdw ? kLdw : ldw_arg;
    const int ldc = kLdc ? kLdc : ldc_arg;
    const int nn = nc + (nc & 1);  // odd counts get a dummy column (index nc) that sits out
    const int half = nn / 2;
    int* DECAF_RESTRICT seat = iw;
    int* DECAF_RESTRICT pp = iw + nn;  // the real pairs of a round
    int* DECAF_RESTRICT qq = pp + half;
    double* DECAF_RESTRICT nrm = dw;  // squared column norms
    double* DECAF_RESTRICT ca = dw + nn;  // a, then cs
    double* DECAF_RESTRICT cb = ca + half;  // b, then sn
    double* DECAF_RESTRICT cc = cb + half;  // c
    for (int sweep = 1; sweep <= kSmallCoreMaxSweeps; ++sweep) {
        double maxnorm2 = 0.0;
        for (int c = 0; c < nc; ++c) {
            const double* col = J + (long long)c * ldc;
            nrm[c] = dot<kVec>(col, col, ldw);
            maxnorm2 = nrm[c] > maxnorm2 ? nrm[c] : maxnorm2;
        }
        const double null2 = null_rel * null_rel * maxnorm2;
        for (int i = 0; i < nn; ++i) seat[i] = i;
        int rotations = 0;
        for (int round = 0; round < nn - 1; ++round) {
            int np = 0;
            for (int k = 0; k < half; ++k) {
                const int p = seat[k], q = seat[nn - 1 - k];
                if (p < nc && q < nc) pp[np] = p, qq[np] = q, ++np;
            }
            pair_dots<kVec>(J, ldc, pp, qq, np, ldw, cc);
            for (int k = 0; k < np; ++k) ca[k] = nrm[pp[k]], cb[k] = nrm[qq[k]];
            for (int k = 0; k < np; ++k) {
                double cs, sn;
                jacobi_angle(ca[k], cb[k], cc[k], null2, cs, sn);
                ca[k] = cs;
                cb[k] = sn;
            }
            for (int k = 0; k < np; ++k) {
                if (cb[k] == 0.0) continue;
                ++rotations;
                const int p = pp[k], q = qq[k];
                rotate_and_measure<kVec>(ca[k], cb[k], J + (long long)p * ldc, J + (long long)q * ldc, ldw, ldc, nrm[p],
                                         nrm[q]);
            }
            // Circle method: seat 0 stays, everybody else moves one seat along.
            const int last = seat[nn - 1];
            for (int i = nn - 1; i > 1; --i) seat[i] = seat[i - 1];
            seat[1] = last;
        }
        if (rotations == 0) return sweep;
    }
    return kSmallCoreNoConvergence;
}

}  // namespace small_core_detail


// Solves one problem. gb, ga: row-major m x m Grams (only their symmetric part is used);
// x: row-major m x rank; y: row-major rank x m; s: rank; 0 <= alpha <= 1 and 1 <= rank <= m are
// the caller's to check. work / iwork: small_core_work_doubles(m) / small_core_work_ints(m)
// entries. Returns the number of Jacobi sweeps, kSmallCoreNonFinite or kSmallCoreNoConvergence.
template <bool kVec>
DECAF_HD DECAF_INLINE int small_core_solve(const double* DECAF_RESTRICT gb, const double* DECAF_RESTRICT ga, int m,
                                           int rank, double alpha, double* DECAF_RESTRICT x,
                                           double* DECAF_RESTRICT y, double* DECAF_RESTRICT s,
                                           double* DECAF_RESTRICT work, int* DECAF_RESTRICT iwork) {
    using namespace small_core_detail;
    const long long ld = round_up_lanes(m);
    double* DECAF_RESTRICT G = work;       // m x ld: a scaled Gram, later the transposed Rr
    double* DECAF_RESTRICT Rb = G + m * ld;  // kb rows of length ld
    double* DECAF_RESTRICT Ra = Rb + m * ld;
    double* DECAF_RESTRICT J = Ra + m * ld;  // nc Jacobi columns of length ldw + ldv <= 2 ld
    double* DECAF_RESTRICT v0 = J + 2 * m * ld;
    double* DECAF_RESTRICT v1 = v0 + ld;
    double* DECAF_RESTRICT vjac = v1 + ld;  // 4 ld
    double* DECAF_RESTRICT sv = vjac + 4 * ld;
    int* DECAF_RESTRICT order = iwork;     // m
    int* DECAF_RESTRICT taken = iwork + m;  // m
    int* DECAF_RESTRICT seat = iwork + 2 * m;  // 2 (m + 1)
    int* DECAF_RESTRICT permb = seat + 2 * (m + 1);  // m
    int* DECAF_RESTRICT perma = permb + m;  // m

    const long long mm = (long long)m * m;
    const long long nx = (long long)m * rank;
    if (!all_finite(gb, mm) || !all_finite(ga, mm)) {
        for (long long i = 0; i < nx; ++i) x[i] = NAN, y[i] = NAN;
        for (int j = 0; j < rank; ++j) s[j] = NAN;
        return kSmallCoreNonFinite;
    }
    const double db = max_diag(gb, m), da = max_diag(ga, m);
    if (!(db > 0.0) || !(da > 0.0)) {  // Bc = 0 or Ac = 0, so M = 0
        for (long long i = 0; i < nx; ++i) x[i] = 0.0, y[i] = 0.0;
        for (int j = 0; j < rank; ++j) s[j] = 0.0;
        return 0;
    }

    // Rank-revealing square roots of both Grams. The largest scaled diagonal is >= 0.5, far above
    // the stopping tolerance, so kb, ka >= 1.
    int eb = 0, ea = 0;
    const double fb = load_scaled_gram(gb, m, (int)ld, db, G, eb);
    const int kb = pivoted_cholesky<kVec>(G, m, (int)ld, m * DBL_EPSILON * fb, Rb, permb, v0, v1);
    const double fa = load_scaled_gram(ga, m, (int)ld, da, G, ea);
    const int ka = pivoted_cholesky<kVec>(G, m, (int)ld, m * DBL_EPSILON * fa, Ra, perma, v0, v1);

    // Core C = Rb Ra^T (kb x ka). Jacobi orthogonalises the columns of C or of C^T, whichever has
    // fewer: nc columns of length nr. Rr holds the factor whose rows index the column entries.
    const bool transposed = kb < ka;
    const double* DECAF_RESTRICT Rr = transposed ? Ra : Rb;
    const double* DECAF_RESTRICT Rc = transposed ? Rb : Ra;
    const int* DECAF_RESTRICT permc = transposed ? permb : perma;
    const int nr = transposed ? ka : kb;
    const int nc = transposed ? kb : ka;
    const int ldw = round_up_lanes(nr);
    const int ldc = ldw + round_up_lanes(nc);
    // Column c of the core is Rr * Rc[c]^T; with Rr transposed into G it is a sum of columns of G,
    // which vectorises along the column; row c of Rc is zero outside permc[c..m-1].
    for (int i = 0; i < m; ++i) {
        double* DECAF_RESTRICT gi = G + (long long)i * ldw;
        for (int r = 0; r < nr; ++r) gi[r] = Rr[r * ld + i];
        for (int r = nr; r < ldw; ++r) gi[r] = 0.0;
    }
    double cmax = 0.0;
    for (int c = 0; c < nc; ++c) {
        double* DECAF_RESTRICT col = J + (long long)c * ldc;
        for (int r = 0; r < ldc; ++r) col[r] = 0.0;
        col[ldw + c] = 1.0;
        const double* DECAF_RESTRICT rc = Rc + c * ld;
        for (int t = c; t < m; ++t) {
            const int i = permc[t];
            axpy<kVec>(rc[i], G + (long long)i * ldw, col, ldw);
        }
        for (int r = 0; r < nr; ++r) cmax = std::fabs(col[r]) > cmax ? std::fabs(col[r]) : cmax;
    }
    if (!(cmax > 0.0)) {  // the column space of Bc is orthogonal to the row space of Ac: M = 0
        for (long long i = 0; i < nx; ++i) x[i] = 0.0, y[i] = 0.0;
        for (int j = 0; j < rank; ++j) s[j] = 0.0;
        return 0;
    }
    // Largest core entry into [0.5, 1), exactly: the squared column norms in Jacobi then stay far
    // from both ends of the exponent range. The accumulated rotations below the core stay as they
    // are; ew goes into the output scale factors.
    int ew = 0;
    (void)std::frexp(cmax, &ew);
    for (int c = 0; c < nc; ++c) scale_pow2(J + (long long)c * ldc, ldw, ew);

    const double null_rel = (m > 2 ? m : 2) * DBL_EPSILON;
    int sweeps = 1 << 30;
    if constexpr (kVec) {  // fixed column lengths for the common square cores (deg * r <= 48)
        if (ldw == 24 && ldc == 48) sweeps = one_sided_jacobi<kVec, 24, 48>(J, nc, ldw, ldc, null_rel, seat, vjac);
        else if (ldw == 16 && ldc == 32) sweeps = one_sided_jacobi<kVec, 16, 32>(J, nc, ldw, ldc, null_rel, seat, vjac);
        else if (ldw == 32 && ldc == 64) sweeps = one_sided_jacobi<kVec, 32, 64>(J, nc, ldw, ldc, null_rel, seat, vjac);
        else if (ldw == 48 && ldc == 96) sweeps = one_sided_jacobi<kVec, 48, 96>(J, nc, ldw, ldc, null_rel, seat, vjac);
        else if (ldw == 8 && ldc == 16) sweeps = one_sided_jacobi<kVec, 8, 16>(J, nc, ldw, ldc, null_rel, seat, vjac);
    }
    if (sweeps == 1 << 30) sweeps = one_sided_jacobi<kVec>(J, nc, ldw, ldc, null_rel, seat, vjac);

    for (int c = 0; c < nc; ++c) {
        const double* col = J + (long long)c * ldc;
        sv[c] = std::sqrt(dot<kVec>(col, col, ldw));
        taken[c] = 0;
    }
    const int kk = rank < nc ? rank : nc;
    for (int j = 0; j < kk; ++j) {  // ties keep the lower index, so the order is deterministic
        int best = -1;
        for (int c = 0; c < nc; ++c)
            if (!taken[c] && (best < 0 || sv[c] > sv[best])) best = c;
        order[j] = best;
        taken[best] = 1;
    }
    const double thr = null_rel * sv[order[0]];

    // Scale factors as powers of two times a power of the scaled singular value, so that
    // Gram diagonals anywhere in [1e-300, 1e300] neither overflow nor underflow in between.
    const double hb = 0.5 * eb, ha = 0.5 * ea;
    const double ex2 = alpha * ha + (alpha - 1.0) * hb + (alpha - 1.0) * ew;
    const double ey2 = (1.0 - alpha) * hb - alpha * ha - alpha * ew;
    const double es2 = ha + hb + ew;
    for (int j = 0; j < rank; ++j) {
        const int c = j < kk ? order[j] : -1;
        if (c < 0 || !(sv[c] > thr)) {  // numerically null direction: exact zeros
            s[j] = 0.0;
            for (int i = 0; i < m; ++i) x[(long long)i * rank + j] = 0.0, y[(long long)j * m + i] = 0.0;
            continue;
        }
        const double sw = sv[c];
        const double* DECAF_RESTRICT wcol = J + (long long)c * ldc;
        const double* DECAF_RESTRICT vcol = wcol + ldw;
        // v0 = sum_r wcol[r] Rr[r] (= sw Uc^T Rb or sw Vc^T Ra), v1 = sum_c vcol[c] Rc[c].
        for (int i = 0; i < ld; ++i) v0[i] = 0.0, v1[i] = 0.0;
        for (int r = 0; r < nr; ++r) axpy<kVec>(wcol[r], Rr + r * ld, v0, (int)ld);
        for (int r = 0; r < nc; ++r) axpy<kVec>(vcol[r], Rc + r * ld, v1, (int)ld);
        const double fx = std::exp2(ex2) * std::pow(sw, alpha - 1.0);
        const double fy = std::exp2(ey2) * std::pow(sw, -alpha);
        const double* xs = transposed ? v0 : v1;
        const double* ys = transposed ? v1 : v0;
        const double gx = transposed ? fx / sw : fx;
        const double gy = transposed ? fy : fy / sw;
        s[j] = std::exp2(es2) * sw;
        for (int i = 0; i < m; ++i) {
            x[(long long)i * rank + j] = gx * xs[i];
            y[(long long)j * m + i] = gy * ys[i];
        }
    }
    return sweeps;
}

}  // namespace decaf
