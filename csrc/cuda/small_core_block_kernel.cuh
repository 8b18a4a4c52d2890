// Batched small-core solver on the GPU, one problem per thread block.
//
// Same contract, tolerances and null rules as the CPU kernel (decaf/small_core.h, small_core_solve):
// for each problem, with M = Bc Ac = U S V^T known only through Gb = Bc^T Bc and Ga = Ac Ac^T,
// writes X (m x rank), Y (rank x m), S (rank) with Bc X = U_R S_R^alpha, Y Ac = S_R^(1-alpha) V_R^T.
//
// Per block (all steps parallel over the block's threads, fp64 throughout):
//   1. non-finite check and largest diagonals (block reductions); the Grams are symmetrised and scaled by
//      the CPU's power of two into the storage of Rb / Ra;
//   2. right-looking pivoted Cholesky of each, in place: step k finds the pivot (every warp runs the same
//      argmax over the running diagonal, so no broadcast is needed), then all threads apply the rank-1 update
//      to the trailing rows and write row k of R over row perm[k] of the storage (original column order,
//      as the CPU stores it). Same stopping tolerance (m eps times the largest scaled diagonal);
//   3. the core (C or C^T, whichever has fewer columns: nc columns of length nr) = rows of Rr . rows of Rc,
//      scaled so its largest entry lies in [0.5, 1), and V = I;
//   4. one-sided Jacobi with the CPU's round-robin pair order: the nc/2 disjoint pairs of a round are handled
//      by groups of kGroup lanes at once; each pair recomputes |w_p|^2, |w_q|^2, w_p.w_q in one pass
//      (group shuffle reduction), computes the CPU's angle and rotates W and V. A barrier between rounds;
//      a sweep with no rotation (__syncthreads_or) ends it, or the CPU's sweep limit (info = no-convergence);
//   5. singular values = final column norms, a block-parallel stable argsort (descending, ties to the lower
//      index, as the CPU), and X, Y, S with the CPU's null rule and power-of-two scale factors.
//
// The four matrices (Rb, Ra storage, the core W, the rotations V; m x ld doubles each, ld = m rounded up to
// odd so that strided accesses hit distinct banks) live in dynamic shared memory when they fit; otherwise,
// in the order Rb, Ra, then V, then W, they go to a global workspace supplied by the caller
// (small_core_block_work_doubles_host(m) doubles per problem; 0 when all fit).
//
// target float32: Jacobi skips pairs with |w_p.w_q| <= 2^-34 |w_p||w_q| (instead of eps; the rounded
// product then differs from the float64 one by ~1e-10 relative, far below fp32 rounding), and the null rule
// is the CPU float32 target's, s <= sqrt(max(m, 2) eps) s_1, so CPU and GPU give the same exact zeros.
//
// This header is the kernel alone (device code): the nvcc build includes it from small_core_block.cu, whose
// host code picks the instantiation and the shared-memory placement; decaf_kernels/_nvrtc.py compiles the
// same text with NVRTC at run time (so it uses no standard header and no host API) and mirrors that host code.
#pragma once

#include "decaf/small_core/shared.h"

namespace decaf {
namespace cuda {

constexpr double kEps = 2.220446049250313080847e-16;  // DBL_EPSILON (no <cfloat> under NVRTC)

constexpr double kJacobiTolFloat32 = 5.820766091346741e-11;  // 2^-34

// Placement bits: a set bit puts that matrix in shared memory, a clear one in the global workspace.
constexpr int kSmemRb = 1, kSmemRa = 2, kSmemW = 4, kSmemV = 8;

__host__ __device__ inline int pad_ld(int m) { return m | 1; }

// Small shared arrays after the matrices: doubles dg, sv, xsc, ysc (ld each), red (32); ints permb, perma,
// rem, order, col (ld each).
__host__ __device__ inline long long small_doubles(int ld) { return 4LL * ld + 32; }
__host__ __device__ inline long long small_ints(int ld) { return 5LL * ld; }

__host__ __device__ inline int popcount4(int mask) { return (mask & 1) + ((mask >> 1) & 1) + ((mask >> 2) & 1) + ((mask >> 3) & 1); }

__host__ __device__ inline long long smem_bytes(int m, int mask) {
    const long long ld = pad_ld(m);
    return (popcount4(mask) * (long long)m * ld + small_doubles((int)ld)) * 8 + small_ints((int)ld) * 4;
}

template <int NT>
__device__ __forceinline__ double block_max(double v, double* red) {
    constexpr int NW = NT / 32;
    for (int off = 16; off > 0; off >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, off));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    double r = red[0];
#pragma unroll
    for (int w = 1; w < NW; ++w) r = fmax(r, red[w]);
    __syncthreads();  // red may be written again right after
    return r;
}

template <int NT>
__device__ __forceinline__ void fill_block(double v, int m, int rank, double* x, double* y, double* s) {
    const int nx = m * rank;
    for (int e = threadIdx.x; e < nx; e += NT) x[e] = v, y[e] = v;
    for (int j = threadIdx.x; j < rank; j += NT) s[j] = v;
}

// Symmetrised Gram scaled by 2^-e2 (e2 from frexp of its largest diagonal dmax > 0) into S (row i at
// S + i ld; symmetric, so rows = columns). Returns the scaled largest diagonal. As load_scaled_gram.
template <int NT>
__device__ __forceinline__ double load_scaled(const double* __restrict__ g, int m, int ld, double dmax, double* S,
                                              int& e2) {
    const double f = frexp(dmax, &e2);
    const double s1 = ldexp(1.0, -(e2 / 2));
    const double s2 = ldexp(0.5, -(e2 - e2 / 2));
    for (int e = threadIdx.x; e < m * ld; e += NT) {
        const int i = e / ld, j = e - i * ld;
        S[e] = j < m ? (g[(long long)j * m + i] * s1 + g[(long long)i * m + j] * s1) * s2 : 0.0;
    }
    return f;
}

// Right-looking pivoted Cholesky of the scaled Gram in S (m x m, row stride ld), in place: row k of R (in
// the original column order) is written over row perm[k]; rows never pivoted are zeroed. Stops when the
// largest remaining diagonal is <= tol. Returns the rank (the same value in every thread). dg, rem: m
// entries of shared scratch. Each step has two phases separated by barriers: (1) pivot search (reads dg;
// thread 0 writes perm, rem), (2) update (reads rem; writes S, dg).
template <int NT>
__device__ int pivoted_cholesky_block(double* S, int m, int ld, double tol, int* perm, double* dg, int* rem) {
    constexpr int NW = NT / 32;
    static_assert(NW >= 1, "at least one warp");
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int i = threadIdx.x; i < m; i += NT) dg[i] = S[(long long)i * ld + i], rem[i] = 1;
    __syncthreads();
    int k = 0;
    for (; k < m; ++k) {
        // Phase 1: the first index of the largest running diagonal above tol (pivoted ones hold -inf).
        double best = tol;
        int bi = -1;
        for (int i = lane; i < m; i += 32) {
            const double d = dg[i];
            if (d > best) best = d, bi = i;
        }
        for (int off = 16; off > 0; off >>= 1) {
            const double ob = __shfl_xor_sync(0xffffffffu, best, off);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
            if (oi >= 0 && (bi < 0 || ob > best || (ob == best && oi < bi))) best = ob, bi = oi;
        }
        const int p = bi;
        if (p < 0) break;  // uniform: every warp computed the same p
        if (threadIdx.x == 0) perm[k] = p, rem[p] = 0;
        __syncthreads();
        // Phase 2: r_i = S[i][p] / rkk for the remaining i; S[i][j] -= r_i r_j on the remaining rows and
        // columns; row p becomes row k of R (0 at pivoted columns, rkk at p). Column p of S is read, never
        // written, here (row p is written, but its only shared element with column p, (p, p), is not read).
        const double rkk = sqrt(best);
        const double inv = 1.0 / rkk;
        for (int i = warp; i < m; i += NW) {
            double* si = S + (long long)i * ld;
            if (i == p) {
                for (int j = lane; j < m; j += 32) si[j] = j == p ? rkk : rem[j] ? si[j] * inv : 0.0;
                continue;
            }
            if (!rem[i]) continue;
            const double ri = si[p] * inv;
            for (int j = lane; j < m; j += 32) {
                if (!rem[j]) continue;
                const double v = si[j] - ri * (S[(long long)j * ld + p] * inv);
                si[j] = v;
                if (j == i) dg[i] = v;
            }
        }
        if (threadIdx.x == 0) dg[p] = -__longlong_as_double(0x7ff0000000000000LL);  // -inf
        __syncthreads();
    }
    // Rows never pivoted hold the (negligible) Schur complement: R's rows k..m-1 are zero.
    for (int i = warp; i < m; i += NW) {
        if (!rem[i]) continue;
        for (int j = lane; j < m; j += 32) S[(long long)i * ld + j] = 0.0;
    }
    __syncthreads();
    return k;
}

// sw^e for e in [-1, 0] and a positive normal sw (a scaled singular value, >= ~1e-20): exact special
// cases for the common exponents, else exp2(e log2 sw), within a few ulps (|e log2 sw| < 70), where pow
// would be an out-of-line call whose register saves spill in this kernel.
__device__ __forceinline__ double pow_scale(double sw, double e) {
    if (e == 0.0) return 1.0;
    if (e == -1.0) return 1.0 / sw;
    if (e == -0.5) return 1.0 / sqrt(sw);
    return exp2(e * log2(sw));
}

// Seat i of the circle method after `round` moves (seat 0 fixed; nn even).
__device__ __forceinline__ int seat_of(int i, int round, int nn) {
    return i == 0 ? 0 : 1 + (i - 1 - round + (nn - 1)) % (nn - 1);
}

template <int NT, int kGroup, int kMax, int kMask>
__global__ void __launch_bounds__(NT, 1) small_core_block_kernel(const double* __restrict__ gb_all,
                                                              const double* __restrict__ ga_all, int m, int rank,
                                                              double alpha, int target, double* __restrict__ x_all,
                                                              double* __restrict__ y_all, double* __restrict__ s_all,
                                                              int* __restrict__ info_all, double* work,
                                                              long long wstride) {
    constexpr int kE = kMax / kGroup;  // column entries per lane in the Jacobi
    constexpr int kGroups = NT / kGroup;
    static_assert(32 % kGroup == 0 && NT % 32 == 0, "groups must tile warps");
    extern __shared__ double smem[];

    const long long b = blockIdx.x;
    const int tid = threadIdx.x, lane = tid & 31;
    const int ld = pad_ld(m);
    const long long mld = (long long)m * ld;
    const long long mm = (long long)m * m, nx = (long long)m * rank;
    const double* __restrict__ gb = gb_all + b * mm;
    const double* __restrict__ ga = ga_all + b * mm;
    double* __restrict__ x = x_all + b * nx;
    double* __restrict__ y = y_all + b * nx;
    double* __restrict__ s = s_all + b * rank;

    // Matrices: shared ones first, then global ones, each m x ld.
    double* sp = smem;
    double* wp = work + b * wstride;  // never dereferenced when kMask == 15 (work may be null then)
    double* Rb;
    double* Ra;
    double* W;
    double* V;
    if (kMask & kSmemRb) Rb = sp, sp += mld; else Rb = wp, wp += mld;
    if (kMask & kSmemRa) Ra = sp, sp += mld; else Ra = wp, wp += mld;
    if (kMask & kSmemW) W = sp, sp += mld; else W = wp, wp += mld;
    if (kMask & kSmemV) V = sp, sp += mld; else V = wp, wp += mld;
    double* dg = sp;
    double* sv = dg + ld;
    double* xsc = sv + ld;
    double* ysc = xsc + ld;
    double* red = ysc + ld;
    int* permb = reinterpret_cast<int*>(red + 32);
    int* perma = permb + ld;
    int* rem = perma + ld;
    int* order = rem + ld;
    int* col = order + ld;

    // 1. Checks, as small_core_front: non-finite input -> NaN outputs; Bc = 0 or Ac = 0 -> zeros.
    bool finite = true;
    for (long long e = tid; e < mm; e += NT) finite &= isfinite(gb[e]) && isfinite(ga[e]);
    if (!__syncthreads_and(finite)) {
        fill_block<NT>(__longlong_as_double(0x7ff8000000000000LL), m, rank, x, y, s);  // NaN
        if (tid == 0) info_all[b] = kSmallCoreNonFinite;
        return;
    }
    double lb = 0.0, la = 0.0;
    for (int i = tid; i < m; i += NT) {
        const double vb = gb[(long long)i * m + i], va = ga[(long long)i * m + i];
        lb = vb > lb ? vb : lb;
        la = va > la ? va : la;
    }
    const double db = block_max<NT>(lb, red);
    const double da = block_max<NT>(la, red);
    if (!(db > 0.0) || !(da > 0.0)) {
        fill_block<NT>(0.0, m, rank, x, y, s);
        if (tid == 0) info_all[b] = 0;
        return;
    }

    // 2. Scaled Grams and their rank-revealing square roots.
    int eb = 0, ea = 0;
    const double fb = load_scaled<NT>(gb, m, ld, db, Rb, eb);
    const double fa = load_scaled<NT>(ga, m, ld, da, Ra, ea);
    __syncthreads();
    const int kb = pivoted_cholesky_block<NT>(Rb, m, ld, m * kEps * fb, permb, dg, rem);
    const int ka = pivoted_cholesky_block<NT>(Ra, m, ld, m * kEps * fa, perma, dg, rem);

    // 3. The core: nc columns of length nr, column c entry r = Rr[pr[r]] . Rc[pc[c]].
    const bool transposed = kb < ka;
    const double* Rr = transposed ? Ra : Rb;
    const double* Rc = transposed ? Rb : Ra;
    const int* pr = transposed ? perma : permb;
    const int* pc = transposed ? permb : perma;
    const int nr = transposed ? ka : kb;
    const int nc = transposed ? kb : ka;
    double lmax = 0.0;
    for (int e = tid; e < nc * nr; e += NT) {
        const int c = e / nr, r = e - c * nr;
        const double* u = Rr + (long long)pr[r] * ld;
        const double* v = Rc + (long long)pc[c] * ld;
        double acc = 0.0;
        for (int i = 0; i < m; ++i) acc += u[i] * v[i];
        W[(long long)c * ld + r] = acc;
        lmax = fabs(acc) > lmax ? fabs(acc) : lmax;
    }
    for (int e = tid; e < nc * nc; e += NT) {
        const int c = e / nc, r = e - c * nc;
        V[(long long)c * ld + r] = r == c ? 1.0 : 0.0;
    }
    const double cmax = block_max<NT>(lmax, red);  // its barriers also publish W and V
    if (!(cmax > 0.0)) {  // the column space of Bc is orthogonal to the row space of Ac: M = 0
        fill_block<NT>(0.0, m, rank, x, y, s);
        if (tid == 0) info_all[b] = 0;
        return;
    }
    int ew = 0;
    (void)frexp(cmax, &ew);
    {
        const double s1 = ldexp(1.0, -(ew / 2)), s2 = ldexp(1.0, -(ew - ew / 2));
        for (int e = tid; e < nc * nr; e += NT) {
            const int c = e / nr, r = e - c * nr;
            double* w = W + (long long)c * ld + r;
            *w = *w * s1 * s2;
        }
    }
    __syncthreads();

    // 4. One-sided Jacobi.
    const bool f32 = target == kSmallCoreTargetFloat32;
    const double null_rel = f32 ? sqrt((m > 2 ? m : 2) * kEps) : (m > 2 ? m : 2) * kEps;
    const double tol = f32 ? kJacobiTolFloat32 : kEps;
    int sweeps = 0;
    if (nc >= 2) {
        sweeps = kSmallCoreNoConvergence;
        const int nn = nc + (nc & 1), half = nn / 2;
        const int iters = (half + kGroups - 1) / kGroups;
        const int grp = tid / kGroup, gl = tid % kGroup;
        for (int sweep = 1; sweep <= kSmallCoreMaxSweeps; ++sweep) {
            double lm = 0.0;
            for (int c = tid; c < nc; c += NT) {
                const double* w = W + (long long)c * ld;
                double a = 0.0;
                for (int r = 0; r < nr; ++r) a += w[r] * w[r];
                lm = a > lm ? a : lm;
            }
            const double null2 = null_rel * null_rel * block_max<NT>(lm, red);
            bool rotated = false;
            bool any = false;
            for (int round = 0; round < nn - 1; ++round) {
                for (int it = 0; it < iters; ++it) {
                    const int k = it * kGroups + grp;
                    int p = 0, q = 0;
                    if (k < half) p = seat_of(k, round, nn), q = seat_of(nn - 1 - k, round, nn);
                    const bool valid = k < half && p < nc && q < nc;
                    double* wpc = W + (long long)p * ld;
                    double* wqc = W + (long long)q * ld;
                    double up[kE], uq[kE];
                    double a = 0.0, bb = 0.0, cc = 0.0;
#pragma unroll
                    for (int u = 0; u < kE; ++u) {
                        const int e = gl + kGroup * u;
                        const bool in = valid && e < nr;
                        up[u] = in ? wpc[e] : 0.0;
                        uq[u] = in ? wqc[e] : 0.0;
                        a += up[u] * up[u];
                        bb += uq[u] * uq[u];
                        cc += up[u] * uq[u];
                    }
#pragma unroll
                    for (int off = kGroup / 2; off > 0; off >>= 1) {
                        a += __shfl_xor_sync(0xffffffffu, a, off);
                        bb += __shfl_xor_sync(0xffffffffu, bb, off);
                        cc += __shfl_xor_sync(0xffffffffu, cc, off);
                    }
                    if (valid) {
                        double cs, sn;
                        decaf::small_core_detail::jacobi_angle(a, bb, cc, null2, tol, cs, sn);
                        if (sn != 0.0) {
                            rotated = true;
#pragma unroll
                            for (int u = 0; u < kE; ++u) {
                                const int e = gl + kGroup * u;
                                if (e < nr) {
                                    wpc[e] = cs * up[u] - sn * uq[u];
                                    wqc[e] = sn * up[u] + cs * uq[u];
                                }
                            }
                            double* vp = V + (long long)p * ld;
                            double* vq = V + (long long)q * ld;
#pragma unroll
                            for (int u = 0; u < kE; ++u) {
                                const int e = gl + kGroup * u;
                                if (e < nc) {
                                    const double va = vp[e], vb = vq[e];
                                    vp[e] = cs * va - sn * vb;
                                    vq[e] = sn * va + cs * vb;
                                }
                            }
                        }
                    }
                }
                if (round == nn - 2) any = __syncthreads_or(rotated);
                else __syncthreads();
            }
            if (!any) {
                sweeps = sweep;
                break;
            }
        }
    }

    // 5. Singular values, descending order (ties: lower index first), output scales.
    for (int c = tid; c < nc; c += NT) {
        const double* w = W + (long long)c * ld;
        double a = 0.0;
        for (int r = 0; r < nr; ++r) a += w[r] * w[r];
        sv[c] = sqrt(a);
    }
    __syncthreads();
    for (int c = tid; c < nc; c += NT) {
        const double v = sv[c];
        int pos = 0;
        for (int c2 = 0; c2 < nc; ++c2) pos += (sv[c2] > v) | ((sv[c2] == v) & (c2 < c));
        order[pos] = c;
    }
    __syncthreads();
    const int kk = rank < nc ? rank : nc;
    const double thr = null_rel * sv[order[0]];
    const double hb = 0.5 * eb, ha = 0.5 * ea;
    const double ex2 = alpha * ha + (alpha - 1.0) * hb + (alpha - 1.0) * ew;
    const double ey2 = (1.0 - alpha) * hb - alpha * ha - alpha * ew;
    const double es2 = ha + hb + ew;
    for (int j = tid; j < rank; j += NT) {
        const int c = j < kk ? order[j] : -1;
        if (c < 0 || !(sv[c] > thr)) {  // numerically null direction: exact zeros
            col[j] = -1;
            xsc[j] = 0.0;
            ysc[j] = 0.0;
            s[j] = 0.0;
            continue;
        }
        const double sw = sv[c];
        const double fx = exp2(ex2) * pow_scale(sw, alpha - 1.0);
        const double fy = exp2(ey2) * pow_scale(sw, -alpha);
        col[j] = c;
        xsc[j] = transposed ? fx / sw : fx;
        ysc[j] = transposed ? fy : fy / sw;
        s[j] = exp2(es2) * sw;
    }
    __syncthreads();
    // X[i][j] and Y[j][i] from v0 = sum_r W[c][r] Rr[pr[r]] (W side) and v1 = sum_c' V[c][c'] Rc[pc[c']].
    for (int e = tid; e < rank * m; e += NT) {
        const int j = e / m, i = e - j * m;
        const int c = col[j];
        double xv = 0.0, yv = 0.0;
        if (c >= 0) {
            const double* wc = W + (long long)c * ld;
            const double* vc = V + (long long)c * ld;
            double v0 = 0.0, v1 = 0.0;
            for (int r = 0; r < nr; ++r) v0 += wc[r] * Rr[(long long)pr[r] * ld + i];
            for (int r = 0; r < nc; ++r) v1 += vc[r] * Rc[(long long)pc[r] * ld + i];
            xv = xsc[j] * (transposed ? v0 : v1);
            yv = ysc[j] * (transposed ? v1 : v0);
        }
        x[(long long)i * rank + j] = xv;
        y[(long long)j * m + i] = yv;
    }
    (void)lane;
    if (tid == 0) info_all[b] = sweeps;
}

}  // namespace cuda
}  // namespace decaf
