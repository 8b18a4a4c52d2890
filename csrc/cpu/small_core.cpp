// Batched small-core solver on the CPU: one problem per OpenMP iteration, workspace per thread.
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
#include "decaf/small_core.h"

#include <cmath>
#include <cstdint>
#include <memory>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "check.h"
#include "isa.h"
#include "ops.h"

namespace decaf {
namespace cpu {
namespace {

using SolveFn = int (*)(const double*, const double*, int, int, double, double*, double*, double*, double*, int*);

// The solver inlined into one function per instruction set (see isa.h).
int solve_baseline(const double* gb, const double* ga, int m, int rank, double alpha, double* x, double* y,
                   double* s, double* work, int* iwork) {
    return small_core_solve<false>(gb, ga, m, rank, alpha, x, y, s, work, iwork);
}
DECAF_TARGET_AVX2 int solve_avx2(const double* gb, const double* ga, int m, int rank, double alpha, double* x,
                                 double* y, double* s, double* work, int* iwork) {
    return small_core_solve<true>(gb, ga, m, rank, alpha, x, y, s, work, iwork);
}
DECAF_TARGET_AVX512 int solve_avx512(const double* gb, const double* ga, int m, int rank, double alpha, double* x,
                                     double* y, double* s, double* work, int* iwork) {
    return small_core_solve<true>(gb, ga, m, rank, alpha, x, y, s, work, iwork);
}

}  // namespace

void small_core(std::int64_t gb_ptr, std::int64_t ga_ptr, std::int64_t batch, std::int64_t m, std::int64_t rank,
                double alpha, std::int64_t x_ptr, std::int64_t y_ptr, std::int64_t s_ptr, std::int64_t info_ptr,
                const std::string& isa_arg) {
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
    const SolveFn solve = isa == Isa::avx512 ? solve_avx512 : isa == Isa::avx2 ? solve_avx2 : solve_baseline;

    const double* gb = reinterpret_cast<const double*>(gb_ptr);
    const double* ga = reinterpret_cast<const double*>(ga_ptr);
    double* x = reinterpret_cast<double*>(x_ptr);
    double* y = reinterpret_cast<double*>(y_ptr);
    double* s = reinterpret_cast<double*>(s_ptr);
    std::int32_t* info = reinterpret_cast<std::int32_t*>(info_ptr);

    int nthreads = 1;
#ifdef _OPENMP
    nthreads = omp_get_max_threads();
    if (nthreads > batch) nthreads = static_cast<int>(batch);
#endif
    // One workspace per thread, allocated here (outside the parallel region, where a bad_alloc can
    // still reach Python), 64-byte aligned and padded to whole cache lines so threads never share one.
    const long long wd = (small_core_work_doubles(static_cast<int>(m)) + 7) / 8 * 8;
    const long long wi = (small_core_work_ints(static_cast<int>(m)) + 15) / 16 * 16;
    std::unique_ptr<double[]> dbuf(new double[nthreads * wd + 8]);
    std::unique_ptr<int[]> ibuf(new int[nthreads * wi]);
    double* dbase = reinterpret_cast<double*>((reinterpret_cast<std::uintptr_t>(dbuf.get()) + 63) & ~std::uintptr_t(63));

    const long long mm = m * m, nx = m * rank;
    const int mi = static_cast<int>(m), ri = static_cast<int>(rank);
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        double* work = dbase + tid * wd;
        int* iwork = ibuf.get() + tid * wi;
#ifdef _OPENMP
#pragma omp for schedule(dynamic)
#endif
        for (long long b = 0; b < batch; ++b)
            info[b] = solve(gb + b * mm, ga + b * mm, mi, ri, alpha, x + b * nx, y + b * nx, s + b * rank, work, iwork);
    }
}

}  // namespace cpu
}  // namespace decaf
