// Building blocks of the small-core solver (decaf/small_core.h), 3 of 4: the one-sided Jacobi SVD of
// the core (target float64). Its angles come from jacobi_angle (decaf/small_core/shared.h), which the
// CUDA kernel uses too.
#pragma once

#include <cfloat>
#include <cmath>

#include "decaf/common.h"
#include "decaf/small_core/base.h"
#include "decaf/small_core/shared.h"

namespace decaf {

namespace small_core_detail {

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
