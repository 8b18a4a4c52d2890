// Batched small-core solver on the CPU: one problem per OpenMP iteration, workspace per thread.
#include "prelude.h"  // first: its pragma must precede the decaf/ headers

#include "decaf/small_core.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "check.h"
#include "isa.h"
#include "ops.h"

namespace decaf {
namespace cpu {
namespace {

using SolveFn = int (*)(const double*, const double*, int, int, double, double*, double*, double*, double*, int*, int);

// The solver inlined into one function per instruction set (see isa.h).
int solve_baseline(const double* gb, const double* ga, int m, int rank, double alpha, double* x, double* y,
                   double* s, double* work, int* iwork, int target) {
    return small_core_solve<false>(gb, ga, m, rank, alpha, x, y, s, work, iwork, target);
}
DECAF_TARGET_AVX2 int solve_avx2(const double* gb, const double* ga, int m, int rank, double alpha, double* x,
                                 double* y, double* s, double* work, int* iwork, int target) {
    return small_core_solve<true>(gb, ga, m, rank, alpha, x, y, s, work, iwork, target);
}
DECAF_TARGET_AVX512 int solve_avx512(const double* gb, const double* ga, int m, int rank, double alpha, double* x,
                                     double* y, double* s, double* work, int* iwork, int target) {
    return small_core_solve<true>(gb, ga, m, rank, alpha, x, y, s, work, iwork, target);
}

// The float32 target, several problems per call (their QL iterations interleaved).
using GroupFn = void (*)(const double*, const double*, int, int, int, double, double*, double*, double*, int*, double*,
                         long long, int*, long long, long long);

void group_baseline(const double* gb, const double* ga, int count, int m, int rank, double alpha, double* x, double* y,
                    double* s, int* info, double* work, long long wd, int* iwork, long long wi, long long log_limit) {
    small_core_solve_squared_group<false>(gb, ga, count, m, rank, alpha, x, y, s, info, work, wd, iwork, wi, log_limit);
}
DECAF_TARGET_AVX2 void group_avx2(const double* gb, const double* ga, int count, int m, int rank, double alpha,
                                  double* x, double* y, double* s, int* info, double* work, long long wd, int* iwork,
                                  long long wi, long long log_limit) {
    small_core_solve_squared_group<true>(gb, ga, count, m, rank, alpha, x, y, s, info, work, wd, iwork, wi, log_limit);
}
DECAF_TARGET_AVX512 void group_avx512(const double* gb, const double* ga, int count, int m, int rank, double alpha,
                                      double* x, double* y, double* s, int* info, double* work, long long wd,
                                      int* iwork, long long wi, long long log_limit) {
    small_core_solve_squared_group<true>(gb, ga, count, m, rank, alpha, x, y, s, info, work, wd, iwork, wi, log_limit);
}

}  // namespace

void small_core(std::int64_t gb_ptr, std::int64_t ga_ptr, std::int64_t batch, std::int64_t m, std::int64_t rank,
                double alpha, std::int64_t x_ptr, std::int64_t y_ptr, std::int64_t s_ptr, std::int64_t info_ptr,
                const std::string& isa_arg, const std::string& target_arg) {
    const char* op = "small_core";
    check_min(op, "batch", batch, 1);
    check_range(op, "m", m, 1, kSmallCoreMaxM);
    check_range(op, "rank", rank, 1, m);
    if (!(alpha >= 0.0 && alpha <= 1.0))
        fail(op, "alpha must be a finite number in [0, 1], got " + std::to_string(alpha));
    check_product(op, "batch * m * m", batch, m * m);
    check_ptr(op, "gb_ptr", gb_ptr, alignof(double));
    check_ptr(op, "ga_ptr", ga_ptr, alignof(double));
    check_ptr(op, "x_ptr", x_ptr, alignof(double));
    check_ptr(op, "y_ptr", y_ptr, alignof(double));
    check_ptr(op, "s_ptr", s_ptr, alignof(double));
    check_ptr(op, "info_ptr", info_ptr, alignof(std::int32_t));
    const Isa isa = parse_isa(op, isa_arg);
    int target;
    if (target_arg == "float64") target = kSmallCoreTargetFloat64;
    else if (target_arg == "float32") target = kSmallCoreTargetFloat32;
    else fail(op, "target must be 'float64' or 'float32', got '" + target_arg + "'");
    const SolveFn solve = isa == Isa::avx512 ? solve_avx512 : isa == Isa::avx2 ? solve_avx2 : solve_baseline;
    const GroupFn group = isa == Isa::avx512 ? group_avx512 : isa == Isa::avx2 ? group_avx2 : group_baseline;

    const double* gb = reinterpret_cast<const double*>(gb_ptr);
    const double* ga = reinterpret_cast<const double*>(ga_ptr);
    double* x = reinterpret_cast<double*>(x_ptr);
    double* y = reinterpret_cast<double*>(y_ptr);
    double* s = reinterpret_cast<double*>(s_ptr);
    std::int32_t* info = reinterpret_cast<std::int32_t*>(info_ptr);

    // Problems per work item: the float32 target interleaves the QL iterations of up to
    // kQlMaxLanes problems (a latency-bound chain each; no fewer work items than threads, though);
    // beyond m = 128 the O(m^3) work dominates, and one problem at a time keeps the workspace small.
    // Results do not depend on the grouping.
    const bool squared = target == kSmallCoreTargetFloat32;
    // Testing aid: caps the float32 target's QL rotation log (in doubles), so that tests can reach
    // its explicit-accumulation fallback, which real problems essentially never need.
    long long log_limit = -1;
    if (const char* v = std::getenv("DECAF_SMALL_CORE_QL_LOG_LIMIT")) log_limit = std::atoll(v);
    int nthreads = omp_threads();
    long long per = 1;
    if (squared && m <= 128) {
        per = (batch + nthreads - 1) / nthreads;
        if (per > small_core_detail::kQlMaxLanes) per = small_core_detail::kQlMaxLanes;
    }
    const long long nitems = (batch + per - 1) / per;
    if (nthreads > nitems) nthreads = static_cast<int>(nitems);
    // One workspace per thread and problem slot, allocated here (outside the parallel region, where a
    // bad_alloc can still reach Python), 64-byte aligned and padded to whole cache lines so threads
    // never share one.
    const long long wd = (small_core_work_doubles(static_cast<int>(m), target) + 7) / 8 * 8;
    const long long wi = (small_core_work_ints(static_cast<int>(m)) + 15) / 16 * 16;
    std::unique_ptr<double[]> dbuf(new double[nthreads * per * wd + 8]);
    std::unique_ptr<int[]> ibuf(new int[nthreads * per * wi]);
    double* dbase = reinterpret_cast<double*>((reinterpret_cast<std::uintptr_t>(dbuf.get()) + 63) & ~std::uintptr_t(63));

    const long long mm = m * m, nx = m * rank;
    const int mi = static_cast<int>(m), ri = static_cast<int>(rank);
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        const int tid = omp_thread();
        double* work = dbase + tid * per * wd;
        int* iwork = ibuf.get() + tid * per * wi;
#ifdef _OPENMP
#pragma omp for schedule(dynamic)
#endif
        for (long long it = 0; it < nitems; ++it) {
            const long long b = it * per;
            if (squared) {
                const int count = static_cast<int>(batch - b < per ? batch - b : per);
                int inf[small_core_detail::kQlMaxLanes];
                group(gb + b * mm, ga + b * mm, count, mi, ri, alpha, x + b * nx, y + b * nx, s + b * rank, inf, work,
                      wd, iwork, wi, log_limit);
                for (int k = 0; k < count; ++k) info[b + k] = inf[k];
            } else {
                info[b] = solve(gb + b * mm, ga + b * mm, mi, ri, alpha, x + b * nx, y + b * nx, s + b * rank, work,
                                iwork, target);
            }
        }
    }
}

}  // namespace cpu
}  // namespace decaf
