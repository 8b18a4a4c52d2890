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

// Element strides, each >= 0, checked in order; names[i] names strides[i] in the message.
template <int N>
inline void check_strides(const char* op, const char* const (&names)[N], const std::int64_t (&strides)[N]) {
    for (int i = 0; i < N; ++i) check_min(op, names[i], strides[i], 0);
}

// check_product(size[i], stride[i]) for each dimension in order (what[i] names it in the message).
template <int N>
inline void check_extents(const char* op, const char* const (&what)[N], const std::int64_t (&size)[N],
                          const std::int64_t (&stride)[N]) {
    for (int i = 0; i < N; ++i) check_product(op, what[i], size[i], stride[i]);
}

// The agent indices idx[0 .. rows * width), a row-major rows x width table named `name`: each must
// be in [0, n_agents - 1] (only >= 0 when n_agents == -1), or -1 (an empty slot) when allow_empty.
// They are data, but they decide which memory is read (agent j at j * sN): all are checked before
// any work, and so is the offset of the largest.
inline void check_agents(const char* op, const char* name, const std::int64_t* idx, std::int64_t rows,
                         std::int64_t width, std::int64_t n_agents, bool allow_empty, std::int64_t sN) {
    std::int64_t max_agent = 0;
    for (std::int64_t k = 0; k < rows * width; ++k) {
        const std::int64_t j = idx[k];
        if (j < (allow_empty ? -1 : 0) || (n_agents != -1 && j >= n_agents))
            fail(op, std::string(name) + "[" + std::to_string(k / width) + ", " + std::to_string(k % width) +
                         "] must be " + (allow_empty ? "-1 (empty slot) or " : "") + "an agent index in [0, " +
                         (n_agents != -1 ? std::to_string(n_agents - 1) : std::string("n_agents - 1")) + "], got " +
                         std::to_string(j));
        max_agent = j > max_agent ? j : max_agent;
    }
    check_product(op, "max agent index * sN", max_agent + 1, sN);
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

inline std::int64_t dtype_size(DType dt) { return dt == DType::f32 ? 4 : 8; }

// The opening checks of pair_gram and mix_lowrank, on the strided (N, L, P, Q) tensor X both read:
// its dtype string, then L, P >= 1 and Q in [1, 65536]. Returns the dtype.
inline DType check_x_dtype_and_sizes(const char* op, const std::string& dtype, std::int64_t L, std::int64_t P,
                                     std::int64_t Q) {
    const DType dt = parse_dtype(op, dtype);
    check_min(op, "L", L, 1);
    check_min(op, "P", P, 1);
    check_range(op, "Q", Q, 1, 1 << 16);
    return dt;
}

}  // namespace cpu
}  // namespace decaf
