// Instruction-set dispatch for the CPU kernels.
//
// setup.py compiles for the baseline x86-64 ISA (SSE2) so that the module runs everywhere; the hot
// functions are compiled again for AVX2 + FMA and for AVX-512 through target attributes, and each
// call picks the best one this CPU supports. The choice is reported by decaf_kernels._C.cpu_isa()
// and can be forced per call (isa="baseline" | "avx2" | "avx512") so tests can cover every path.
#pragma once

#include <string>

#include "check.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DECAF_X86_DISPATCH 1
// Feature lists rather than x86-64-v3/v4 level names: older compilers know only the former, and the
// runtime check below tests exactly the features the compiler may use.
#define DECAF_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define DECAF_TARGET_AVX512 __attribute__((target("avx2,fma,avx512f,avx512vl,avx512bw,avx512dq")))
#else
#define DECAF_TARGET_AVX2
#define DECAF_TARGET_AVX512
#endif

namespace decaf {
namespace cpu {

enum class Isa { baseline, avx2, avx512 };

inline const char* isa_name(Isa isa) {
    return isa == Isa::avx512 ? "avx512" : isa == Isa::avx2 ? "avx2" : "baseline";
}

inline Isa best_isa() {
#if defined(DECAF_X86_DISPATCH)
    static const Isa best = [] {
        __builtin_cpu_init();
        const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
        return avx512 ? Isa::avx512 : avx2 ? Isa::avx2 : Isa::baseline;
    }();
    return best;
#else
    return Isa::baseline;
#endif
}

// "auto" -> the best supported; a named ISA this CPU lacks is an error, not a silent fallback.
inline Isa parse_isa(const char* op, const std::string& isa) {
    const Isa best = best_isa();
    Isa want;
    if (isa == "auto") return best;
    if (isa == "baseline") want = Isa::baseline;
    else if (isa == "avx2") want = Isa::avx2;
    else if (isa == "avx512") want = Isa::avx512;
    else fail(op, "isa must be 'auto', 'baseline', 'avx2' or 'avx512', got '" + isa + "'");
    if (static_cast<int>(want) > static_cast<int>(best))
        fail(op, "isa '" + isa + "' is not supported by this CPU (best: '" + isa_name(best) + "')");
    return want;
}

}  // namespace cpu
}  // namespace decaf
