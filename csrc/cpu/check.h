// Argument checks shared by the CPU entry points. Every failure is a std::invalid_argument whose
// message reads "<op>: <argument> <what was expected>, got <value seen>".
#pragma once

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

namespace decaf {
namespace cpu {

[[noreturn]] inline void fail(const std::string& op, const std::string& what) {
    throw std::invalid_argument(op + ": " + what);
}

inline void check_ptr(const char* op, const char* name, std::int64_t v, std::int64_t align) {
    if (v == 0) fail(op, std::string(name) + " must be a non-null data pointer, got 0");
    if (v < 0) fail(op, std::string(name) + " must be a data pointer (a positive integer), got " + std::to_string(v));
    if (v % align != 0)
        fail(op, std::string(name) + " must be aligned to " + std::to_string(align) + " bytes for its dtype, got " +
                     std::to_string(v));
}

inline void check_range(const char* op, const char* name, std::int64_t v, std::int64_t lo, std::int64_t hi) {
    if (v < lo || v > hi)
        fail(op, std::string(name) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                     std::to_string(v));
}

inline void check_min(const char* op, const char* name, std::int64_t v, std::int64_t lo) {
    check_range(op, name, v, lo, std::numeric_limits<std::int64_t>::max());
}

// a * b must stay far from overflow (a 64th of the int64 range): element offsets are summed and
// scaled to bytes in the kernels.
inline void check_product(const char* op, const char* what, std::int64_t a, std::int64_t b) {
    if (a > 0 && b > std::numeric_limits<std::int64_t>::max() / 64 / a)
        fail(op, std::string(what) + " is too large to address (" + std::to_string(a) + " * " + std::to_string(b) + ")");
}

// True when a strided layout provably maps distinct indices to distinct elements: with the dims of
// size > 1 sorted by stride, each stride is at least the extent of the ones below it. This accepts
// contiguous tensors and their permutations and slices, and rejects zero (broadcast) strides.
inline bool non_overlapping(int ndim, const std::int64_t* size, const std::int64_t* stride) {
    std::int64_t sz[8], st[8];
    int n = 0;
    for (int i = 0; i < ndim; ++i)
        if (size[i] > 1) sz[n] = size[i], st[n] = stride[i], ++n;
    for (int i = 1; i < n; ++i)  // insertion sort by stride
        for (int j = i; j > 0 && st[j] < st[j - 1]; --j) {
            std::swap(st[j], st[j - 1]);
            std::swap(sz[j], sz[j - 1]);
        }
    std::int64_t extent = 1;  // one past the largest offset reachable with the dims seen so far
    for (int i = 0; i < n; ++i) {
        if (st[i] < extent) return false;
        extent = st[i] * (sz[i] - 1) + extent;
    }
    return true;
}

// dtype strings accepted by the mixed-precision kernels.
enum class DType { f32, f64 };

inline DType parse_dtype(const char* op, const std::string& dtype) {
    if (dtype == "float32") return DType::f32;
    if (dtype == "float64") return DType::f64;
    fail(op, "dtype must be 'float32' or 'float64', got '" + dtype + "'");
}

}  // namespace cpu
}  // namespace decaf
