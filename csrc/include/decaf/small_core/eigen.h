// Building blocks of the small-core solver (decaf/small_core.h), 4 of 4: the symmetric
// eigendecomposition of the squared core K = Cw^T Cw (target float32): Householder tridiagonalisation,
// implicit-shift QL on several problems at once, and the back-transformation of the wanted vectors.
#pragma once

#include <cfloat>
#include <cmath>

#include "decaf/common.h"
#include "decaf/small_core/base.h"

namespace decaf {

namespace small_core_detail {

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

}  // namespace small_core_detail

}  // namespace decaf
