// First include of every source of the CPU module: the -Wpsabi pragma and the OpenMP helpers.
#pragma once

// The decaf/ headers return 32-byte vectors from always-inlined helpers, and those are only ever
// inlined into functions compiled for AVX2 or later (isa.h), so GCC's note that such a return
// "changes the ABI" without AVX does not apply. A diagnostic pragma covers only the code after it:
// hence this header goes before the decaf/ includes.
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace decaf {
namespace cpu {

// Threads an OpenMP parallel region may use (1 without OpenMP).
inline int omp_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// This thread's index in the current parallel region (0 without OpenMP).
inline int omp_thread() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

}  // namespace cpu
}  // namespace decaf
