// Building blocks of the small-core solver (decaf/small_core.h), 3 of 4: the one-sided Jacobi SVD of
// the core (target float64). The CUDA kernel shares rsqrt_1_2 and jacobi_angle, so that both compute
// the same angles.
#pragma once

#include <cfloat>
#include <cmath>

#include "decaf/common.h"
#include "decaf/small_core/base.h"

namespace decaf {

// Sweep limit of the one-sided Jacobi iteration. Random 24 x 24 cores need 8-9 sweeps, cores with
// condition numbers 1e10-1e14 15-18, m = 1024 about 22; 60 only trips on broken (non-PSD) input.
constexpr int kSmallCoreMaxSweeps = 60;

namespace small_core_detail {

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
// Returns sn = 0 when the pair needs no rotation: when c^2 <= tol^2 a b (the CPU passes tol = eps;
// the CUDA kernel's float32 target a looser one) or when either column is below null2.
DECAF_HD DECAF_INLINE void jacobi_angle(double a, double b, double c, double null2, double tol, double& cs,
                                        double& sn) {
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
                jacobi_angle(ca[k], cb[k], cc[k], null2, DBL_EPSILON, cs, sn);
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

}  // namespace decaf
