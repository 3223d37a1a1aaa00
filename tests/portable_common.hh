// Shared by the portable kernel harnesses (tests/portable_*.cc).
#ifndef SPARSEKIT_TESTS_PORTABLE_COMMON_HH
#define SPARSEKIT_TESTS_PORTABLE_COMMON_HH

#include <cstddef>
#include <random>
#include <vector>

// n values from a standard normal distribution, as T.
template <typename T>
static std::vector<T> normal(std::mt19937& g, size_t n) {
    std::normal_distribution<double> nd;
    std::vector<T> v(n);
    for (auto& x : v) x = (T)nd(g);
    return v;
}

#endif  // SPARSEKIT_TESTS_PORTABLE_COMMON_HH
