// Consensus small-core solver: truncated SVD of M = Bc Ac from the two Gram matrices alone.
//
// One call of small_core_solve() handles one problem. It touches only the arrays it is given
// (inputs, outputs, a caller-provided workspace), allocates nothing and throws nothing, so the CPU
// driver (csrc/cpu/small_core.cpp) runs one call per OpenMP iteration. The CUDA kernel
// (csrc/cuda/small_core_block_kernel.cuh) is a block-parallel version of the same algorithm; it shares
// decaf/small_core/shared.h (constants, jacobi_angle), so that both compute the same rotation angles.
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
//
// The building blocks, one header each under decaf/small_core/: shared.h (status codes, targets,
// rotation angle; also compiled for the GPU), base.h (column operations), cholesky.h (pivoted
// Cholesky), jacobi.h (one-sided Jacobi SVD), eigen.h (Householder tridiagonalisation and implicit
// QL). This header holds the workspace layout and the solver's phases.
#pragma once

#include <cfloat>
#include <cmath>

#include "decaf/common.h"
#include "decaf/small_core/base.h"
#include "decaf/small_core/cholesky.h"
#include "decaf/small_core/eigen.h"
#include "decaf/small_core/jacobi.h"

namespace decaf {

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
