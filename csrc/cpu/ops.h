// C++ entry points of the CPU module decaf_kernels._C, one per Python function (bindings.cpp).
//
// They take raw addresses (tensor.data_ptr()), sizes and element strides as 64-bit integers, check
// every argument before any work (std::invalid_argument, which pybind11 turns into ValueError,
// naming the argument and the value seen), then run with OpenMP over independent problems.
// Buffer extents cannot be checked here: the Python caller owns that.
#pragma once

#include <cstdint>
#include <string>

namespace decaf {
namespace cpu {

// Largest m small_core accepts. The per-thread workspace is about 5 m^2 doubles (40 MiB at 1024;
// 9 m^2 for target float32) and the Jacobi cost grows like m^3 per sweep; beyond this the
// randomized path is the right tool.
constexpr std::int64_t kSmallCoreMaxM = 1024;

void small_core(std::int64_t gb_ptr, std::int64_t ga_ptr, std::int64_t batch, std::int64_t m, std::int64_t rank,
                double alpha, std::int64_t x_ptr, std::int64_t y_ptr, std::int64_t s_ptr, std::int64_t info_ptr,
                const std::string& isa, const std::string& target);

void pair_gram(std::int64_t x_ptr, const std::string& dtype, std::int64_t L, std::int64_t P, std::int64_t Q,
               std::int64_t sN, std::int64_t sL, std::int64_t sP, std::int64_t sQ, std::int64_t pairs_ptr,
               std::int64_t npairs, std::int64_t out_ptr, std::int64_t n_agents, const std::string& isa);

void mix_lowrank(std::int64_t x_ptr, const std::string& dtype, std::int64_t L, std::int64_t P, std::int64_t Q,
                 std::int64_t sN, std::int64_t sL, std::int64_t sP, std::int64_t sQ, std::int64_t idx_ptr,
                 std::int64_t n_out, std::int64_t D, std::int64_t t_ptr, std::int64_t R, std::int64_t out_ptr,
                 std::int64_t oN, std::int64_t oL, std::int64_t oP, std::int64_t oR, std::int64_t n_agents,
                 const std::string& isa);

}  // namespace cpu
}  // namespace decaf
