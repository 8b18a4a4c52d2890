// Consensus small-core solver: truncated SVD of M = Bc Ac from the two Gram matrices alone.
//
// One call of small_core_solve() handles one problem. It touches only the arrays it is given
// (inputs, outputs, a caller-provided workspace), allocates nothing and throws nothing, so the CPU
// driver (csrc/cpu/small_core.cpp) runs one call per OpenMP iteration. The CUDA kernel
// (csrc/cuda/small_core_block.cu) is a block-parallel version of the same algorithm; from this
// header it takes the constants and rsqrt_1_2, so that both compute the same rotation angles.
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
//
// Two solvers for the core, chosen per call by `target`:
//
// kSmallCoreTargetFloat64: one-sided Jacobi on the nc columns of C (or C^T, whichever has fewer;
//   call that matrix Cw, nr x nc). Singular values to about eps s_1 absolute, at LAPACK level; a
//   random 24 x 24 core takes ~8 sweeps (~1700 rotations of 48-long columns).
//
// kSmallCoreTargetFloat32, for data that came from fp32/bf16/fp16 tensors and results that are
//   rounded to fp32 anyway (2-3x faster): the squared core K = Cw^T Cw (nc x nc, float64), its
//   eigendecomposition K = V diag(lambda) V^T by Householder tridiagonalisation and implicit-shift QL
//   (about 2.2 nc iterations, ~1.25 nc^2 rotations; they are logged and replayed onto only the
//   `rank` eigenvectors wanted, which are then back-transformed), then
//   W = Cw V (= Uc S), s_t = |W e_t| and the same X, Y, S formulas as the Jacobi path.
//   Why that is accurate enough: forming K (dot products of length <= m) and diagonalising it
//   (Householder and QL are backward stable) is exact for K + E with |E| ~ m eps |K| = m eps s_1^2.
//   Hence every lambda is right to ~m eps s_1^2, and s_t = |Cw v_t| (the square root of the Rayleigh
//   quotient, accurate to ~eps s_1 where sqrt(lambda_t) would be off by m eps s_1^2 / s_t) to far
//   below fp32 rounding. An eigenvector moves by |E| / gap, but only within near-equal eigenvalues or
//   towards weaker directions; what reaches the product B'A' = Qb W S^-2 W^T C Qa^T is the residual
//   (K v_t - lambda_t v_t) / s_t, i.e. a relative error of about m eps s_1 / s_t per direction:
//   <= 1e-9 for a condition number of 1e6 (measured: 4e-11). Directions with lambda_t <= m eps
//   lambda_1, i.e. s_t <= sqrt(max(m, 2) eps) s_1 (7e-8 s_1 for m = 24, the fp32 rounding level),
//   are not resolved by K at all: their eigenvectors are arbitrary within that part of the
//   spectrum, and their W can be mostly leakage from a stronger direction, which a projection onto
//   it would count twice (errors up to s_1). So the null rule of the Jacobi path, s_t <= max(m, 2)
//   eps s_1, is applied to the eigenvalues instead: lambda_t <= max(m, 2) eps lambda_1 gives exact
//   zeros in S, X and Y, and the product loses at most the dropped tail, sqrt(sum s_t^2) <=
//   sqrt(rank max(m, 2) eps) s_1.
#pragma once

#include <cfloat>
#include <cmath>

#include "decaf/common.h"

namespace decaf {

// Sweep limit of the one-sided Jacobi iteration. Random 24 x 24 cores need 8-9 sweeps, cores with
// condition numbers 1e10-1e14 15-18, m = 1024 about 22; 60 only trips on broken (non-PSD) input.
constexpr int kSmallCoreMaxSweeps = 60;

// info codes written per problem. A non-negative info is the number of Jacobi sweeps used (target
// float64) or of QL iterations, summed over all eigenvalues (target float32; about 2.2 nc for a
// random core, 0 when there is nothing to iterate); negative values are the same for both targets.
constexpr int kSmallCoreNonFinite = -1;
constexpr int kSmallCoreNoConvergence = -2;

// target argument of small_core_solve: how accurate the result must be (see the header comment).
constexpr int kSmallCoreTargetFloat64 = 0;
constexpr int kSmallCoreTargetFloat32 = 1;

// QL iteration limit of the squared path, per eigenvalue (the total cap is this times nc, as in
// LAPACK's dsteqr). Random cores need 2.0-2.3 iterations per eigenvalue, ill-conditioned and
// clustered ones fewer.
constexpr int kSmallCoreMaxQLIterations = 30;

// Workspace of one problem of size m, in doubles and in ints. The double workspace must be
// aligned to at least 8 bytes (64 is what the CPU driver uses).
DECAF_INLINE long long small_core_work_doubles(int m, int target) {
    const long long ld = round_up_lanes(m);
    // G, Rb, Ra: m x ld each; Jacobi columns: m x (2 ld); seven vectors of ld. The squared path adds
    // the wanted eigenvectors (m x ld) and a rotation log of 3 m ld doubles (1.5 m^2 rotations;
    // random cores need about 1.25 nc^2, and a fuller log only means explicit accumulation), later
    // three m4 x m4 products (m4 = m rounded up to 4).
    const long long base = 5 * (long long)m * ld + 7 * ld;
    const long long m4 = (m + 3) & ~3;
    const long long log = 3 * (long long)m * ld > 3 * m4 * m4 ? 3 * (long long)m * ld : 3 * m4 * m4;
    return target == kSmallCoreTargetFloat32 ? base + (long long)m * ld + log : base;
}
DECAF_INLINE long long small_core_work_ints(int m) { return 6 * (long long)m + 4; }

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

// True when every entry is finite. x - x is NaN exactly for a NaN or an infinity (and +0
// otherwise), so the sums are a branch-free scan; four of them, because one would be a chain of
// dependent additions.
DECAF_INLINE bool all_finite(const double* DECAF_RESTRICT g, long long n) {
    double p0 = 0.0, p1 = 0.0, p2 = 0.0, p3 = 0.0;
    long long i = 0;
    for (; i + 4 <= n; i += 4) {
        p0 += g[i] - g[i];
        p1 += g[i + 1] - g[i + 1];
        p2 += g[i + 2] - g[i + 2];
        p3 += g[i + 3] - g[i + 3];
    }
    for (; i < n; ++i) p0 += g[i] - g[i];
    return (p0 + p1) + (p2 + p3) == 0.0;
}

DECAF_INLINE double max_diag(const double* DECAF_RESTRICT g, int m) {
    double dmax = 0.0;
    for (int i = 0; i < m; ++i) dmax = g[(long long)i * m + i] > dmax ? g[(long long)i * m + i] : dmax;
    return dmax;
}

// Copies the symmetric part of the row-major m x m Gram g into the column-major, zero-padded G
// (leading dimension ld), scaled by 2^-e2 with 2^(e2-1) <= dmax < 2^e2, so that its largest diagonal
// lies in [0.5, 1) (that diagonal is returned): the scaling is exact, and later squares and
// products of entries can neither overflow nor underflow. Needs dmax > 0 (g's largest diagonal).
DECAF_INLINE double load_scaled_gram(const double* DECAF_RESTRICT g, int m, int ld, double dmax,
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

// v *= 2^-e, exactly, in two factors so that neither overflows, for the nv vectors v + j * stride.
DECAF_INLINE void scale_pow2(double* DECAF_RESTRICT v, long long n, int e, int nv = 1, long long stride = 0) {
    const double s1 = std::ldexp(1.0, -(e / 2));
    const double s2 = std::ldexp(1.0, -(e - e / 2));
    for (int j = 0; j < nv; ++j)
        for (long long i = 0; i < n; ++i) v[j * stride + i] = v[j * stride + i] * s1 * s2;
}

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
DECAF_INLINE void jacobi_angle(double a, double b, double c, double null2, double& cs, double& sn) {
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
DECAF_INLINE int one_sided_jacobi(double* DECAF_RESTRICT J, int nc, int ldw_arg, int ldc_arg,
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

// ---- The squared path (target float32): symmetric eigendecomposition of K = Cw^T Cw. ----

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

// Householder tridiagonalisation Q^T A Q = T of the symmetric n x n matrix A (full storage,
// column-major, leading dimension lda a multiple of kLanes, rows n..lda-1 zero). T goes to d (n
// diagonal entries) and e (n - 1 off-diagonal ones, e[k] = T[k][k+1]); Q = H_0 H_1 ... H_{n-3} with
// H_k = I - tau[k] v_k v_k^T, v_k stored in column k of A at rows k+1..n-1 (v_k[k+1] = 1) and
// zero elsewhere. v and p are lda-long scratch vectors.
//
// Each step works on rows from k + 1 rounded down to a multiple of 4 (8 for dot products): the
// vectors v, p, w are exactly zero above row k + 1, so those extra rows are exact no-ops, and every
// loop runs over whole vectors. The rank-2 update A22 -= v w^T + w v^T touches both triangles: twice
// the minimum arithmetic, but each column is one contiguous vector update.
template <bool kVec>
DECAF_INLINE void tridiagonalise(double* DECAF_RESTRICT A, int n, int lda, double* DECAF_RESTRICT d,
                                 double* DECAF_RESTRICT e, double* DECAF_RESTRICT tau,
                                 double* DECAF_RESTRICT v, double* DECAF_RESTRICT p) {
    for (int k = 0; k + 2 < n; ++k) {
        double* DECAF_RESTRICT ak = A + (long long)k * lda;
        const int r0 = k + 1, lo4 = r0 & ~3, lo8 = r0 & ~7;
        d[k] = ak[k];
        const double x0 = ak[r0];
        for (int i = lo8; i < lda; ++i) v[i] = i > r0 && i < n ? ak[i] : 0.0;
        const double sigma = dot<kVec>(v + lo8, v + lo8, lda - lo8);
        // A column below ~1e-145 (K's largest diagonal is >= 1/4) is dropped: far below the
        // eps-level backward error, and it keeps every square and quotient in the normal range.
        if (!(sigma > 1e-290)) {
            tau[k] = 0.0;
            e[k] = x0;
            continue;
        }
        const double mu = std::sqrt(x0 * x0 + sigma);
        const double beta = x0 > 0.0 ? -mu : mu;
        const double t = (beta - x0) / beta;
        const double scal = 1.0 / (x0 - beta);
        tau[k] = t;
        e[k] = beta;
        for (int i = lo8; i < lda; ++i) v[i] *= scal;
        v[r0] = 1.0;
        for (int i = r0; i < n; ++i) ak[i] = v[i];
        // p = tau A22 v (rows above r0 pick up stale entries: cleared after)
        for (int i = lo8; i < lda; ++i) p[i] = 0.0;
        axpy_chain<kVec>(
            n - r0, [&](int j) { return (long long)(r0 + j); }, [&](int j) { return t * v[r0 + j]; }, A + lo4, lda,
            p + lo4, lda - lo4);
        for (int i = lo8; i < r0; ++i) p[i] = 0.0;
        // w = p - (tau / 2) (p . v) v, into p
        const double h = 0.5 * t * dot<kVec>(p + lo8, v + lo8, lda - lo8);
        axpy<kVec>(-h, v + lo4, p + lo4, lda - lo4);
        for (int j = r0; j < n; ++j) sub_rank2<kVec>(p[j], v + lo4, v[j], p + lo4, A + (long long)j * lda + lo4, lda - lo4);
    }
    if (n >= 2) {
        d[n - 2] = A[(long long)(n - 2) * lda + n - 2];
        e[n - 2] = A[(long long)(n - 2) * lda + n - 1];
    }
    d[n - 1] = A[(long long)(n - 1) * lda + n - 1];
}

// Implicit-shift QL iteration on symmetric tridiagonal matrices, several independent ones at once.
//
// Each problem (a "lane") is T = tridiag(e, d, e) with n diagonal entries d and e[i] = T[i][i+1]
// (e has room for n entries). On completion d holds the eigenvalues (unsorted), and the product
// G_1 G_2 ... G_N of the plane rotations applied, whose column i is the eigenvector of d[i], is
// recorded: G_k = [[c, s], [-s, c]] in rows and columns (i, i + 1) acts on the right of an
// eigenvector matrix. The rotations go to a log (replayed later onto only the eigenvectors wanted,
// see replay_rotations); if the log fills up, the remaining ones are accumulated into an explicit
// matrix F = G_{K+1} ... G_N instead (Z: n columns of stride ldz, rotated over their first nz >= n
// entries, nz a multiple of 4), so that G_1 ... G_N = (logged product) F.
//
// One QL chase is a chain of rotations, each depending on the one before through a square root and
// a division: about 45 cycles of latency per rotation, against a dozen cycles of arithmetic.
// implicit_ql_lanes therefore advances up to kQlMaxLanes independent problems one rotation each in
// turn, so that their chains overlap in the out-of-order core (2.5x faster for 24 x 24). Every lane
// runs the same scalar code whatever its neighbours do, so a problem's result does not depend on
// which problems share its group.
//
// An off-diagonal entry is negligible when |e[i]| <= eps * ||T||_inf: absolute accuracy is all the
// caller needs (it discards eigenvalues below m eps of the largest), and it deflates clusters of
// tiny eigenvalues at once. The shift is Wilkinson's, from the leading 2 x 2 block of the active part.
constexpr int kQlMaxLanes = 4;

struct QlLane {
    double s, c, p, g;  // the chase's running rotation and bulge
    double* d;
    double* e;
    double* lp;  // where the next logged rotation goes; null once the log is full
    int i, l;  // the chase is at row i of the active block [l, mm]
    int mm, top, iters;  // the chase started at row top
    int n, ldz, nz, maxit;
    double tol;
    double* Z;  // forward accumulation, once the log is full
    double* log;  // per chase: (c, s) of each rotation, then (first row, number of rotations)
    double* logend;  // the end of the log's room; once it is full, the end of what was logged
};

// sqrt(x) for x > 0: the correctly rounded square root, without the errno check that std::sqrt
// carries unless the whole build has -fno-math-errno.
DECAF_INLINE double sqrt_positive(double x) {
#if defined(DECAF_HOST_VECTORS) && defined(__SSE2__)
    typedef double v2d __attribute__((vector_size(16)));
    return __builtin_ia32_sqrtsd(v2d{x, 0.0})[0];
#else
    return std::sqrt(x);
#endif
}

DECAF_INLINE void ql_lane_init(QlLane& q, double* d, double* e, int n, double* log, long long logcap,
                               double* Z, int ldz, int maxit) {
    q.d = d;
    q.e = e;
    q.Z = Z;
    q.log = log;
    q.logend = log + logcap;
    q.lp = log;
    q.n = n;
    q.ldz = ldz;
    q.nz = (n + 3) & ~3;
    q.maxit = maxit;
    double tnorm = 0.0;
    for (int i = 0; i < n; ++i) {
        const double a = std::fabs(d[i]) + (i + 1 < n ? std::fabs(e[i]) : 0.0) + (i > 0 ? std::fabs(e[i - 1]) : 0.0);
        tnorm = a > tnorm ? a : tnorm;
    }
    e[n - 1] = 0.0;
    q.tol = DBL_EPSILON * tnorm;
    q.l = 0;
    q.iters = 0;
}

// Sets up the next chase of the lane. Returns false when the lane has finished: every eigenvalue
// has converged (q.iters >= 0 is the number of QL iterations) or the iteration limit was reached
// (q.iters = kSmallCoreNoConvergence; d and the rotations describe the unconverged state).
DECAF_INLINE bool ql_begin_chase(QlLane& q) {
    const double* DECAF_RESTRICT d = q.d;
    const double* DECAF_RESTRICT e = q.e;
    for (; q.l < q.n; ++q.l) {
        const int l = q.l;
        int mm = l;
        while (mm + 1 < q.n && std::fabs(e[mm]) > q.tol) ++mm;
        if (mm == l) continue;  // d[l] has converged
        if (q.iters == q.maxit) {
            q.iters = kSmallCoreNoConvergence;
            return false;
        }
        ++q.iters;
        if (q.lp && q.logend - q.lp < 2 * (mm - l) + 2) {  // log full: F = I from here on
            q.logend = q.lp;  // now the end of what was logged
            q.lp = nullptr;
            for (int c = 0; c < q.n; ++c) {
                double* DECAF_RESTRICT z = q.Z + (long long)c * q.ldz;
                for (int r = 0; r < q.nz; ++r) z[r] = 0.0;
                z[c] = 1.0;
            }
        }
        // Shift: the eigenvalue of [[d_l, e_l], [e_l, d_l+1]] nearer d_l. |e_l| > tol, so
        // |g| <= ||T|| / tol = 1 / eps and g * g cannot overflow.
        double g = (d[l + 1] - d[l]) / (2.0 * e[l]);
        const double r = std::sqrt(g * g + 1.0);
        q.g = d[mm] - d[l] + e[l] / (g + (g < 0.0 ? -r : r));
        q.s = 1.0;
        q.c = 1.0;
        q.p = 0.0;
        q.mm = mm;
        q.top = mm - 1;
        q.i = mm - 1;
        return true;
    }
    return false;
}

DECAF_INLINE void ql_end_chase(QlLane& q) {
    if (!q.lp) return;
    q.lp[0] = q.top;
    q.lp[1] = q.top - q.i;  // rotations at rows top, top - 1, ..., i + 1
    q.lp += 2;
}

// One rotation of the lane's chase, at row q.i. Returns false when the chase has ended.
template <bool kVec>
DECAF_INLINE bool ql_step(QlLane& q) {
    double* DECAF_RESTRICT d = q.d;
    double* DECAF_RESTRICT e = q.e;
    const int i = q.i;
    const double f = q.s * e[i], b = q.c * e[i], g0 = q.g;
    const double r2 = f * f + g0 * g0;
    double r;
    if (r2 > 1e-290) {
        r = sqrt_positive(r2);
    } else {  // the squares left the normal range (entries below 1e-145 of a norm >= 1/4)
        r = std::hypot(f, g0);
        if (r == 0.0) {  // f = g = 0: T splits at i + 1; the next chase works on the shorter block
            e[i + 1] = 0.0;
            d[i + 1] -= q.p;
            e[q.mm] = 0.0;
            ql_end_chase(q);
            return false;
        }
    }
    e[i + 1] = r;
    const double inv = 1.0 / r;
    const double s = f * inv, c = g0 * inv;
    const double g = d[i + 1] - q.p;
    const double t = (d[i] - g) * s + 2.0 * c * b;
    const double p = s * t;
    d[i + 1] = g + p;
    q.g = c * t - b;
    q.s = s;
    q.c = c;
    q.p = p;
    if (double* DECAF_RESTRICT lp = q.lp) {
        lp[0] = c;
        lp[1] = s;
        q.lp = lp + 2;
    } else {
        rotate<kVec>(c, s, q.Z + (long long)i * q.ldz, q.Z + (long long)(i + 1) * q.ldz, q.nz);
    }
    q.i = i - 1;
    if (i > q.l) return true;
    d[q.l] -= p;  // the chase has reached the top of the block
    e[q.l] = q.g;
    e[q.mm] = 0.0;
    ql_end_chase(q);
    return false;
}

// Runs nl <= kQlMaxLanes initialised lanes to completion, one rotation of each in turn.
template <bool kVec>
DECAF_INLINE void implicit_ql_lanes(QlLane* const* DECAF_RESTRICT q, int nl) {
    unsigned active = 0;
    for (int k = 0; k < nl; ++k)
        if (ql_begin_chase(*q[k])) active |= 1u << k;
    while (active) {
        for (int k = 0; k < nl; ++k) {
            if (!((active >> k) & 1u)) continue;
            if (!ql_step<kVec>(*q[k]) && !ql_begin_chase(*q[k])) active &= ~(1u << k);
        }
    }
}

// The rotations of one logged chase (cnt of them, at rows i0, i0 + 1, ..., in replay order, cs[2k],
// cs[2k + 1] the one at row i0 + cnt - 1 - k) applied to the rows (length and stride ldv) of the
// row-major V: (row_i, row_i+1) <- (c row_i + s row_i+1, -s row_i + c row_i+1). Row i + 1 stays in
// registers from one rotation to the next.
#if defined(DECAF_HOST_VECTORS)
template <int kChunks>
DECAF_INLINE void replay_chase_block(const double* DECAF_RESTRICT cs, int cnt, int i0, double* DECAF_RESTRICT V,
                                     int ldv) {
    vd4 carry[kChunks];
    for (int u = 0; u < kChunks; ++u) carry[u] = load4(V + (long long)i0 * ldv + 4 * u);
    for (int k = cnt - 1; k >= 0; --k) {
        const int i = i0 + cnt - 1 - k;
        const vd4 c = splat4(cs[2 * k]), s = splat4(cs[2 * k + 1]);
        double* DECAF_RESTRICT ri = V + (long long)i * ldv;
        for (int u = 0; u < kChunks; ++u) {
            const vd4 next = load4(ri + ldv + 4 * u);
            store4(ri + 4 * u, c * carry[u] + s * next);
            carry[u] = c * next - s * carry[u];
        }
    }
    for (int u = 0; u < kChunks; ++u) store4(V + (long long)(i0 + cnt) * ldv + 4 * u, carry[u]);
}
#endif

template <bool kVec>
DECAF_INLINE void replay_chase(const double* DECAF_RESTRICT cs, int cnt, int i0, double* DECAF_RESTRICT V,
                               int ldv) {
#if defined(DECAF_HOST_VECTORS)
    if constexpr (kVec) {
        int j = 0;
        for (; j + 16 <= ldv; j += 16) replay_chase_block<4>(cs, cnt, i0, V + j, ldv);
        switch ((ldv - j) / 4) {
            case 3: replay_chase_block<3>(cs, cnt, i0, V + j, ldv); break;
            case 2: replay_chase_block<2>(cs, cnt, i0, V + j, ldv); break;
            case 1: replay_chase_block<1>(cs, cnt, i0, V + j, ldv); break;
            default: break;
        }
        return;
    }
#endif
    for (int k = cnt - 1; k >= 0; --k) {
        const int i = i0 + cnt - 1 - k;
        const double c = cs[2 * k], s = cs[2 * k + 1];
        double* DECAF_RESTRICT ri = V + (long long)i * ldv;
        for (int u = 0; u < ldv; ++u) {
            const double a = ri[u], b = ri[ldv + u];
            ri[u] = c * a + s * b;
            ri[ldv + u] = c * b - s * a;
        }
    }
}

// V <- (G_1 ... G_K) V for the logged rotations of a finished lane, V row-major (n rows of length
// and stride ldv, a multiple of 4, one column per wanted eigenvector): the log backwards.
template <bool kVec>
DECAF_INLINE void replay_rotations(const QlLane& q, double* DECAF_RESTRICT V, int ldv) {
    long long pos = (q.lp ? q.lp : q.logend) - q.log;
    while (pos > 0) {
        const int top = (int)q.log[pos - 2], cnt = (int)q.log[pos - 1];
        pos -= 2 + 2 * (long long)cnt;
        if (cnt > 0) replay_chase<kVec>(q.log + pos, cnt, top - cnt + 1, V, ldv);
    }
}

// V <- Q V with Q = H_0 ... H_{n-3} from tridiagonalise (A, tau), V row-major (n rows of length
// and stride ldv, a multiple of 4): reflectors last to first, V -= tau v (v^T V) with v^T V summed
// as a row vector into w (ldv doubles).
template <bool kVec>
DECAF_INLINE void apply_reflectors(const double* DECAF_RESTRICT A, int n, int lda,
                                   const double* DECAF_RESTRICT tau, double* DECAF_RESTRICT V, int ldv,
                                   double* DECAF_RESTRICT w) {
    for (int k = n - 3; k >= 0; --k) {
        if (tau[k] == 0.0) continue;
        const double* DECAF_RESTRICT ak = A + (long long)k * lda;  // v_k at rows k + 1 .. n - 1
        for (int t = 0; t < ldv; ++t) w[t] = 0.0;
        axpy_chain<kVec>(
            n - k - 1, [&](int j) { return (long long)(k + 1 + j); }, [&](int j) { return ak[k + 1 + j]; }, V, ldv, w,
            ldv);
        for (int r = k + 1; r < n; ++r) axpy<kVec>(-tau[k] * ak[r], w, V + (long long)r * ldv, ldv);
    }
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

// ---- The solver, in phases. ----

// Per-problem state carried from one phase to the next.
struct SmallCoreState {
    int info;
    bool transposed;
    int kb, ka, nr, nc, ldw, ldc, kk;
    int eb, ea, ew;
    QlLane lane;  // the squared path's eigenvalue problem
};

// Where everything lives in the workspace (ld = round_up_lanes(m), sizes in doubles):
//   G     m ld   a scaled Gram, then the transposed Rr; (squared) K and its reflectors
//   Rb    m ld   Ra  m ld
//   J     2 m ld Jacobi columns (core, rotations below); (squared) Cw, then F (second half)
//   v0 v1 ld each, vjac 4 ld (Jacobi scratch; (squared) d, e, tau, then output scales), sv ld
//   (squared) Vr m ld: the wanted eigenvectors, row-major; log: the rest, max(3 m ld, 3 m4^2):
//         the rotation log, then W, Rc^T V and Rr^T W (m4 x ldv each, m4 = m rounded up to 4)
struct SmallCoreWork {
    double *G, *Rb, *Ra, *J, *v0, *v1, *vjac, *sv, *Vr, *log;
    long long ld, logcap;
    int *order, *taken, *seat, *permb, *perma;
};

DECAF_INLINE SmallCoreWork small_core_work(int m, double* work, int* iwork, int target,
                                           long long log_limit = -1) {
    SmallCoreWork w;
    const long long ld = round_up_lanes(m);
    w.ld = ld;
    w.G = work;
    w.Rb = w.G + m * ld;
    w.Ra = w.Rb + m * ld;
    w.J = w.Ra + m * ld;
    w.v0 = w.J + 2 * m * ld;
    w.v1 = w.v0 + ld;
    w.vjac = w.v1 + ld;
    w.sv = w.vjac + 4 * ld;
    w.Vr = w.sv + ld;
    w.log = w.Vr + m * ld;
    w.logcap = target == kSmallCoreTargetFloat32 ? small_core_work_doubles(m, target) - (w.log - work) : 0;
    if (log_limit >= 0 && log_limit < w.logcap) w.logcap = log_limit;
    w.order = iwork;
    w.taken = iwork + m;
    w.seat = iwork + 2 * m;  // 2 (m + 1)
    w.permb = w.seat + 2 * (m + 1);
    w.perma = w.permb + m;
    return w;
}

DECAF_INLINE void fill_outputs(double v, int m, int rank, double* DECAF_RESTRICT x, double* DECAF_RESTRICT y,
                               double* DECAF_RESTRICT s) {
    const long long nx = (long long)m * rank;
    for (long long i = 0; i < nx; ++i) x[i] = v, y[i] = v;
    for (int j = 0; j < rank; ++j) s[j] = v;
}

// Front end shared by both targets: checks, pivoted Cholesky of both Grams, the core columns
// (nc columns of length ldw at stride ldc in J; with rotation columns below them when `rotations`)
// scaled into [0.5, 1). Returns false, with the outputs and st.info written, when that settles the
// problem (non-finite input, M = 0).
template <bool kVec>
DECAF_INLINE bool small_core_front(const double* DECAF_RESTRICT gb, const double* DECAF_RESTRICT ga, int m,
                                   int rank, double* DECAF_RESTRICT x, double* DECAF_RESTRICT y,
                                   double* DECAF_RESTRICT s, const SmallCoreWork& w, bool rotations,
                                   SmallCoreState& st) {
    const long long ld = w.ld;
    double* DECAF_RESTRICT G = w.G;
    const long long mm = (long long)m * m;
    if (!all_finite(gb, mm) || !all_finite(ga, mm)) {
        fill_outputs(NAN, m, rank, x, y, s);
        st.info = kSmallCoreNonFinite;
        return false;
    }
    const double db = max_diag(gb, m), da = max_diag(ga, m);
    if (!(db > 0.0) || !(da > 0.0)) {  // Bc = 0 or Ac = 0, so M = 0
        fill_outputs(0.0, m, rank, x, y, s);
        st.info = 0;
        return false;
    }

    // Rank-revealing square roots of both Grams. The largest scaled diagonal is >= 0.5, far above
    // the stopping tolerance, so kb, ka >= 1.
    int eb = 0, ea = 0;
    const double fb = load_scaled_gram(gb, m, (int)ld, db, G, eb);
    const int kb = pivoted_cholesky<kVec>(G, m, (int)ld, m * DBL_EPSILON * fb, w.Rb, w.permb, w.v0, w.v1);
    const double fa = load_scaled_gram(ga, m, (int)ld, da, G, ea);
    const int ka = pivoted_cholesky<kVec>(G, m, (int)ld, m * DBL_EPSILON * fa, w.Ra, w.perma, w.v0, w.v1);

    // Core C = Rb Ra^T (kb x ka). The solvers work on the columns of C or of C^T, whichever has
    // fewer: nc columns of length nr. Rr holds the factor whose rows index the column entries.
    const bool transposed = kb < ka;
    const double* DECAF_RESTRICT Rr = transposed ? w.Ra : w.Rb;
    const double* DECAF_RESTRICT Rc = transposed ? w.Rb : w.Ra;
    const int* DECAF_RESTRICT permc = transposed ? w.permb : w.perma;
    const int nr = transposed ? ka : kb;
    const int nc = transposed ? kb : ka;
    const int ldw = round_up_lanes(nr);
    const int ldc = rotations ? ldw + round_up_lanes(nc) : ldw;
    double* DECAF_RESTRICT J = w.J;
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
        if (rotations) col[ldw + c] = 1.0;
        const double* DECAF_RESTRICT rc = Rc + c * ld;
        axpy_chain<kVec>(
            m - c, [&](int t) { return (long long)permc[c + t]; }, [&](int t) { return rc[permc[c + t]]; }, G, ldw,
            col, ldw);
        for (int r = 0; r < nr; ++r) cmax = std::fabs(col[r]) > cmax ? std::fabs(col[r]) : cmax;
    }
    if (!(cmax > 0.0)) {  // the column space of Bc is orthogonal to the row space of Ac: M = 0
        fill_outputs(0.0, m, rank, x, y, s);
        st.info = 0;
        return false;
    }
    // Largest core entry into [0.5, 1), exactly: squares and products of core entries then stay far
    // from both ends of the exponent range. The rotation columns below the core stay as they are;
    // ew goes into the output scale factors.
    int ew = 0;
    (void)std::frexp(cmax, &ew);
    scale_pow2(J, ldw, ew, nc, ldc);

    st.transposed = transposed;
    st.kb = kb;
    st.ka = ka;
    st.nr = nr;
    st.nc = nc;
    st.ldw = ldw;
    st.ldc = ldc;
    st.kk = rank < nc ? rank : nc;
    st.eb = eb;
    st.ea = ea;
    st.ew = ew;
    return true;
}

// Back end of the float64 target (the float32 one, small_core_squared_back, works on whole rows
// instead). Direction j < kk of the core is slot order[j], with wcol = wbase + slot * wstride
// (Cw v: s times a singular vector on the row side of Cw, nr entries), vcol = vbase + slot *
// vstride (v, nc entries at stride vinc) and s = sv[slot], in decreasing s. Directions with
// s <= thr_rel * s_1, and j >= kk, come out as exact zeros.
template <bool kVec>
DECAF_INLINE void small_core_emit(const SmallCoreState& st, const SmallCoreWork& w, int m, int rank,
                                  double alpha, const double* DECAF_RESTRICT wbase, long long wstride,
                                  const double* DECAF_RESTRICT vbase, long long vstride, long long vinc,
                                  double thr_rel, double* DECAF_RESTRICT x, double* DECAF_RESTRICT y,
                                  double* DECAF_RESTRICT s) {
    const long long ld = w.ld;
    const int* DECAF_RESTRICT order = w.order;
    const double* DECAF_RESTRICT sv = w.sv;
    double* DECAF_RESTRICT v0 = w.v0;
    double* DECAF_RESTRICT v1 = w.v1;
    const bool transposed = st.transposed;
    const double* DECAF_RESTRICT Rr = transposed ? w.Ra : w.Rb;
    const double* DECAF_RESTRICT Rc = transposed ? w.Rb : w.Ra;
    const int nr = st.nr, nc = st.nc, kk = st.kk;
    const double thr = thr_rel * sv[order[0]];

    // Scale factors as powers of two times a power of the scaled singular value, so that
    // Gram diagonals anywhere in [1e-300, 1e300] neither overflow nor underflow in between.
    const double hb = 0.5 * st.eb, ha = 0.5 * st.ea;
    const double ex2 = alpha * ha + (alpha - 1.0) * hb + (alpha - 1.0) * st.ew;
    const double ey2 = (1.0 - alpha) * hb - alpha * ha - alpha * st.ew;
    const double es2 = ha + hb + st.ew;
    for (int j = 0; j < rank; ++j) {
        const int c = j < kk ? order[j] : -1;
        if (c < 0 || !(sv[c] > thr)) {  // numerically null direction: exact zeros
            s[j] = 0.0;
            for (int i = 0; i < m; ++i) x[(long long)i * rank + j] = 0.0, y[(long long)j * m + i] = 0.0;
            continue;
        }
        const double sw = sv[c];
        const double* DECAF_RESTRICT wcol = wbase + c * wstride;
        const double* DECAF_RESTRICT vcol = vbase + c * vstride;
        // v0 = sum_r wcol[r] Rr[r] (= sw Uc^T Rb or sw Vc^T Ra), v1 = sum_c vcol[c] Rc[c].
        // (Each entry summed in the order of successive axpy calls, with the sums in registers.)
        for (int i = 0; i < ld; ++i) v0[i] = 0.0, v1[i] = 0.0;
        axpy_chain<kVec>(
            nr, [](int r) { return (long long)r; }, [&](int r) { return wcol[r]; }, Rr, ld, v0, (int)ld);
        axpy_chain<kVec>(
            nc, [](int r) { return (long long)r; }, [&](int r) { return vcol[r * vinc]; }, Rc, ld, v1, (int)ld);
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
}

// The float64 target: one-sided Jacobi on the core columns, then the back end.
template <bool kVec>
DECAF_INLINE int small_core_jacobi_back(const SmallCoreState& st, const SmallCoreWork& w, int m, int rank,
                                        double alpha, double* DECAF_RESTRICT x, double* DECAF_RESTRICT y,
                                        double* DECAF_RESTRICT s) {
    double* DECAF_RESTRICT J = w.J;
    double* DECAF_RESTRICT sv = w.sv;
    int* DECAF_RESTRICT order = w.order;
    int* DECAF_RESTRICT taken = w.taken;
    const int nc = st.nc, ldw = st.ldw, ldc = st.ldc, kk = st.kk;
    const double null_rel = (m > 2 ? m : 2) * DBL_EPSILON;
    int sweeps = 1 << 30;
    if constexpr (kVec) {  // fixed column lengths for the common square cores (deg * r <= 48)
        if (ldw == 24 && ldc == 48) sweeps = one_sided_jacobi<kVec, 24, 48>(J, nc, ldw, ldc, null_rel, w.seat, w.vjac);
        else if (ldw == 16 && ldc == 32) sweeps = one_sided_jacobi<kVec, 16, 32>(J, nc, ldw, ldc, null_rel, w.seat, w.vjac);
        else if (ldw == 32 && ldc == 64) sweeps = one_sided_jacobi<kVec, 32, 64>(J, nc, ldw, ldc, null_rel, w.seat, w.vjac);
        else if (ldw == 48 && ldc == 96) sweeps = one_sided_jacobi<kVec, 48, 96>(J, nc, ldw, ldc, null_rel, w.seat, w.vjac);
        else if (ldw == 8 && ldc == 16) sweeps = one_sided_jacobi<kVec, 8, 16>(J, nc, ldw, ldc, null_rel, w.seat, w.vjac);
    }
    if (sweeps == 1 << 30) sweeps = one_sided_jacobi<kVec>(J, nc, ldw, ldc, null_rel, w.seat, w.vjac);

    for (int c = 0; c < nc; ++c) {
        const double* col = J + (long long)c * ldc;
        sv[c] = std::sqrt(dot<kVec>(col, col, ldw));
        taken[c] = 0;
    }
    for (int j = 0; j < kk; ++j) {  // ties keep the lower index, so the order is deterministic
        int best = -1;
        for (int c = 0; c < nc; ++c)
            if (!taken[c] && (best < 0 || sv[c] > sv[best])) best = c;
        order[j] = best;
        taken[best] = 1;
    }
    small_core_emit<kVec>(st, w, m, rank, alpha, J, ldc, J + ldw, ldc, 1, null_rel, x, y, s);
    return sweeps;
}

// The float32 target, part 1: K = Cw^T Cw, its tridiagonalisation, and the QL lane set up (d, e
// in vjac, the log after Vr, F in the second half of J).
template <bool kVec>
DECAF_INLINE void small_core_squared_setup(SmallCoreState& st, const SmallCoreWork& w, int m) {
    const int nc = st.nc, ldk = round_up_lanes(nc);
    double* DECAF_RESTRICT dg = w.vjac;
    double* DECAF_RESTRICT eo = w.vjac + w.ld;
    double* DECAF_RESTRICT tau = w.vjac + 2 * w.ld;
    core_gram<kVec>(w.J, nc, st.ldw, w.G, ldk);
    tridiagonalise<kVec>(w.G, nc, ldk, dg, eo, tau, w.v0, w.v1);
    ql_lane_init(st.lane, dg, eo, nc, w.log, w.logcap, w.J + (long long)m * w.ld, ldk,
                 kSmallCoreMaxQLIterations * nc);
}

// The float32 target, part 2 (after the QL lane has run): the kk eigenvectors of the largest
// eigenvalues, back-transformed; W = Cw V; the back end. Returns the QL iteration count (or
// kSmallCoreNoConvergence).
template <bool kVec>
DECAF_INLINE int small_core_squared_back(const SmallCoreState& st, const SmallCoreWork& w, int m, int rank,
                                         double alpha, double* DECAF_RESTRICT x, double* DECAF_RESTRICT y,
                                         double* DECAF_RESTRICT s) {
    const int nc = st.nc, ldw = st.ldw, kk = st.kk, ldk = round_up_lanes(nc);
    const int ldv = (kk + 3) & ~3;
    const double* DECAF_RESTRICT dg = w.vjac;
    const double* DECAF_RESTRICT tau = w.vjac + 2 * w.ld;
    int* DECAF_RESTRICT order = w.order;
    int* DECAF_RESTRICT taken = w.taken;
    double* DECAF_RESTRICT sv = w.sv;
    double* DECAF_RESTRICT Vr = w.Vr;
    const QlLane& q = st.lane;
    for (int c = 0; c < nc; ++c) taken[c] = 0;
    for (int j = 0; j < kk; ++j) {  // the kk largest eigenvalues; ties keep the lower index
        int best = -1;
        for (int c = 0; c < nc; ++c)
            if (!taken[c] && (best < 0 || dg[c] > dg[best])) best = c;
        order[j] = best;
        taken[best] = 1;
    }
    // Vr (nc x ldv, row-major): column t the eigenvector of T for eigenvalue order[t], i.e.
    // G_1 ... G_N e_order[t], = (logged rotations) F e_order[t]; then Q times it.
    for (int r = 0; r < nc; ++r) {
        double* DECAF_RESTRICT vr = Vr + (long long)r * ldv;
        for (int t = 0; t < ldv; ++t)
            vr[t] = t >= kk ? 0.0 : q.lp ? (r == order[t] ? 1.0 : 0.0) : q.Z[(long long)order[t] * q.ldz + r];
    }
    replay_rotations<kVec>(q, Vr, ldv);
    apply_reflectors<kVec>(w.G, nc, ldk, tau, Vr, ldv, w.v0);

    // W = Cw V (nr x ldv, row-major). s_t = |W e_t| is the square root
    // of the Rayleigh quotient v_t^T K v_t: accurate to about eps s_1, where sqrt(lambda_t) is off by
    // eps s_1^2 / s_t.
    // W, then Rc^T V and Rr^T W (m4 x ldv each, m4 = m rounded up to 4) go to the log, free by now.
    const int nr = st.nr;
    const long long m4 = (m + 3) & ~3;
    double* DECAF_RESTRICT Wr = w.log;
    double* DECAF_RESTRICT PV = Wr + m4 * ldv;
    double* DECAF_RESTRICT PW = PV + m4 * ldv;
    rows_product<kVec>(w.J, ldw, nc, nr, Vr, ldv, Wr);
    double* DECAF_RESTRICT acc = w.v0;
    for (int t = 0; t < ldv; ++t) acc[t] = 0.0;
    for (int r = 0; r < nr; ++r) {
        const double* DECAF_RESTRICT wr = Wr + (long long)r * ldv;
        for (int t = 0; t < ldv; ++t) acc[t] += wr[t] * wr[t];
    }
    for (int t = 0; t < kk; ++t) {
        sv[t] = std::sqrt(acc[t]);
        order[t] = t;
    }
    for (int j = 1; j < kk; ++j) {  // stable insertion sort of the slots by decreasing s
        const int t = order[j];
        int i = j;
        for (; i > 0 && sv[order[i - 1]] < sv[t]; --i) order[i] = order[i - 1];
        order[i] = t;
    }

    // Null directions: s_t^2 <= max(m, 2) eps s_1^2, the Jacobi rule applied to the eigenvalues of
    // K, which is what this path resolves (see the header comment).
    const double thr = std::sqrt((m > 2 ? m : 2) * DBL_EPSILON) * sv[order[0]];
    // Output direction j: slot slot[j] (or -1: zeros), scaled as in small_core_emit. X's columns come
    // from Rc^T V (or Rr^T W when transposed), Y's rows from Rr^T W (or Rc^T V).
    const bool transposed = st.transposed;
    double* DECAF_RESTRICT ax = w.vjac;
    double* DECAF_RESTRICT ay = w.vjac + w.ld;
    int* DECAF_RESTRICT slot = taken;
    const double hb = 0.5 * st.eb, ha = 0.5 * st.ea;
    const double ex = std::exp2(alpha * ha + (alpha - 1.0) * hb + (alpha - 1.0) * st.ew);
    const double ey = std::exp2((1.0 - alpha) * hb - alpha * ha - alpha * st.ew);
    const double es = std::exp2(ha + hb + st.ew);
    for (int j = 0; j < rank; ++j) {
        const int t = j < kk ? order[j] : -1;
        if (t < 0 || !(sv[t] > thr)) {
            slot[j] = -1;
            s[j] = 0.0;
            continue;
        }
        const double sw = sv[t];
        double fx, fy;
        if (alpha == 0.5) {
            fx = fy = 1.0 / std::sqrt(sw);
        } else {
            fx = std::pow(sw, alpha - 1.0);
            fy = std::pow(sw, -alpha);
        }
        fx *= ex;
        fy *= ey;
        slot[j] = t;
        s[j] = es * sw;
        ax[j] = transposed ? fx / sw : fx;
        ay[j] = transposed ? fy : fy / sw;
    }
    const long long ld = w.ld;
    const double* DECAF_RESTRICT Rr = transposed ? w.Ra : w.Rb;
    const double* DECAF_RESTRICT Rc = transposed ? w.Rb : w.Ra;
    rows_product<kVec>(Rc, ld, nc, m, Vr, ldv, PV);
    rows_product<kVec>(Rr, ld, nr, m, Wr, ldv, PW);
    const double* DECAF_RESTRICT PX = transposed ? PW : PV;
    const double* DECAF_RESTRICT PY = transposed ? PV : PW;
    for (int i = 0; i < m; ++i) {
        const double* DECAF_RESTRICT px = PX + (long long)i * ldv;
        const double* DECAF_RESTRICT py = PY + (long long)i * ldv;
        for (int j = 0; j < rank; ++j) {
            const int t = slot[j];
            x[(long long)i * rank + j] = t < 0 ? 0.0 : ax[j] * px[t];
            y[(long long)j * m + i] = t < 0 ? 0.0 : ay[j] * py[t];
        }
    }
    return q.iters;
}

}  // namespace small_core_detail

// Solves one problem. gb, ga: row-major m x m Grams (only their symmetric part is used);
// x: row-major m x rank; y: row-major rank x m; s: rank; 0 <= alpha <= 1 and 1 <= rank <= m are
// the caller's to check. work / iwork: small_core_work_doubles(m, target) / small_core_work_ints(m)
// entries. target: kSmallCoreTargetFloat64 (one-sided Jacobi; returns the number of sweeps) or
// kSmallCoreTargetFloat32 (eigendecomposition of the squared core; returns the number of QL
// iterations). Either may return kSmallCoreNonFinite or kSmallCoreNoConvergence.
template <bool kVec>
DECAF_INLINE int small_core_solve(const double* DECAF_RESTRICT gb, const double* DECAF_RESTRICT ga, int m,
                                  int rank, double alpha, double* DECAF_RESTRICT x, double* DECAF_RESTRICT y,
                                  double* DECAF_RESTRICT s, double* DECAF_RESTRICT work, int* DECAF_RESTRICT iwork,
                                  int target) {
    using namespace small_core_detail;
    const SmallCoreWork w = small_core_work(m, work, iwork, target);
    SmallCoreState st;
    const bool squared = target == kSmallCoreTargetFloat32;
    if (!small_core_front<kVec>(gb, ga, m, rank, x, y, s, w, !squared, st)) return st.info;
    if (!squared) return small_core_jacobi_back<kVec>(st, w, m, rank, alpha, x, y, s);
    small_core_squared_setup<kVec>(st, w, m);
    QlLane* lane = &st.lane;
    implicit_ql_lanes<kVec>(&lane, 1);
    return small_core_squared_back<kVec>(st, w, m, rank, alpha, x, y, s);
}

// The float32 target for count <= kQlMaxLanes problems at once (problem k at gb + k * m * m, etc.,
// workspace work + k * wd, iwork + k * wi), their QL iterations interleaved; the results are
// bit-identical to small_core_solve's for each problem alone. Writes info[k]. log_limit >= 0 caps
// the rotation log (in doubles; a testing aid for the explicit-accumulation fallback).
template <bool kVec>
DECAF_INLINE void small_core_solve_squared_group(const double* DECAF_RESTRICT gb,
                                                 const double* DECAF_RESTRICT ga, int count, int m, int rank,
                                                 double alpha, double* DECAF_RESTRICT x,
                                                 double* DECAF_RESTRICT y, double* DECAF_RESTRICT s,
                                                 int* DECAF_RESTRICT info, double* DECAF_RESTRICT work,
                                                 long long wd, int* DECAF_RESTRICT iwork, long long wi,
                                                 long long log_limit = -1) {
    using namespace small_core_detail;
    const long long mm = (long long)m * m, nx = (long long)m * rank;
    SmallCoreState st[kQlMaxLanes];
    SmallCoreWork w[kQlMaxLanes];
    QlLane* lanes[kQlMaxLanes];
    bool live[kQlMaxLanes];
    int nl = 0;
    for (int k = 0; k < count; ++k) {
        w[k] = small_core_work(m, work + k * wd, iwork + k * wi, kSmallCoreTargetFloat32, log_limit);
        live[k] = small_core_front<kVec>(gb + k * mm, ga + k * mm, m, rank, x + k * nx, y + k * nx, s + k * rank, w[k],
                                         false, st[k]);
        if (!live[k]) {
            info[k] = st[k].info;
            continue;
        }
        small_core_squared_setup<kVec>(st[k], w[k], m);
        lanes[nl++] = &st[k].lane;
    }
    implicit_ql_lanes<kVec>(lanes, nl);
    for (int k = 0; k < count; ++k)
        if (live[k]) info[k] = small_core_squared_back<kVec>(st[k], w[k], m, rank, alpha, x + k * nx, y + k * nx,
                                                             s + k * rank);
}

}  // namespace decaf
