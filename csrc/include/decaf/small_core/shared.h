// The part of the small-core solver that the CPU code and the CUDA kernel share: status codes, targets,
// the Jacobi sweep limit and the rotation angle, so that both compute the same angles. It must stay
// compilable by NVRTC (decaf_kernels/_nvrtc.py compiles the kernel at run time when no nvcc-built CUDA
// module is installed): no standard headers under __CUDACC_RTC__, only builtins in DECAF_HD functions.
#pragma once

#if !defined(__CUDACC_RTC__)
#include <cmath>
#endif

#include "decaf/common.h"

namespace decaf {

// info codes written per problem. A non-negative info is the number of Jacobi sweeps used (target
// float64) or of QL iterations, summed over all eigenvalues (target float32; about 2.2 nc for a
// random core, 0 when there is nothing to iterate); negative values are the same for both targets.
constexpr int kSmallCoreNonFinite = -1;
constexpr int kSmallCoreNoConvergence = -2;

// target argument of the solvers: how accurate the result must be (see decaf/small_core.h).
constexpr int kSmallCoreTargetFloat64 = 0;
constexpr int kSmallCoreTargetFloat32 = 1;

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
    const double ad = fabs(d), ac2 = 2.0 * fabs(c);
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

}  // namespace small_core_detail
}  // namespace decaf
