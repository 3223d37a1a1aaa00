// Host emulation of the CUDA execution model, just enough for sparsekit's kernels (tests only).
//
// tests/cuda_emu.py compiles each kernels/*.cu file as C++ with this header forced in front, and
// calls every template instance through sk_launch with the argument block the Python wrapper
// built, exactly as cuLaunchKernel would receive it.  A warp's 32 lanes run as cooperative
// contexts (ucontext) in one OS thread, switched at every __shfl_sync / __shfl_xor_sync, which is
// a two-phase barrier across the warp: deterministic, and a lane that skips a shuffle the others
// reach (divergent control flow, undefined on real hardware) is reported instead of hanging.
// Warps run one after another: the kernels never depend on other warps' progress.
#pragma once

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict

struct SkDim3 {
    unsigned x = 1, y = 1, z = 1;
};

// One lane runs at a time, so plain globals hold the running lane's coordinates.
inline SkDim3 threadIdx;
inline SkDim3 blockIdx;
inline SkDim3 blockDim;
inline SkDim3 gridDim;

struct SkWarp {
    static constexpr std::size_t kStack = 256 * 1024;
    ucontext_t scheduler;
    ucontext_t lanes[32];
    bool finished[32] = {};
    int current = 0;
    unsigned long long slots[32] = {};
    std::vector<char> stacks = std::vector<char>(32 * kStack);
    void (*body)(void*) = nullptr;
    void* body_arg = nullptr;
};

inline SkWarp* sk_warp = nullptr;

inline void sk_lane_entry() {
    sk_warp->body(sk_warp->body_arg);
    sk_warp->finished[sk_warp->current] = true;
    // returning resumes uc_link, the scheduler
}

// A lane waits here until every lane of the warp has arrived.
inline void sk_barrier() {
    SkWarp* w = sk_warp;
    swapcontext(&w->lanes[w->current], &w->scheduler);
}

inline void sk_run_warp(SkWarp& w, unsigned block, unsigned first_thread) {
    sk_warp = &w;
    for (int lane = 0; lane < 32; ++lane) {
        getcontext(&w.lanes[lane]);
        w.lanes[lane].uc_stack.ss_sp = w.stacks.data() + lane * SkWarp::kStack;
        w.lanes[lane].uc_stack.ss_size = SkWarp::kStack;
        w.lanes[lane].uc_link = &w.scheduler;
        makecontext(&w.lanes[lane], sk_lane_entry, 0);
        w.finished[lane] = false;
    }
    for (;;) {
        for (int lane = 0; lane < 32; ++lane) {
            if (w.finished[lane]) continue;
            w.current = lane;
            threadIdx = SkDim3{first_thread + lane, 1, 1};
            blockIdx = SkDim3{block, 1, 1};
            swapcontext(&w.scheduler, &w.lanes[lane]);
        }
        int now_finished = 0;
        for (int lane = 0; lane < 32; ++lane) now_finished += w.finished[lane];
        if (now_finished == 32) return;
        // Some lanes are done while the rest wait at a shuffle they will never complete.
        if (now_finished > 0) {
            std::fprintf(stderr, "cuda_emu: %d lanes exited while the others wait at a warp "
                         "shuffle (divergent shuffle)\n", now_finished);
            std::abort();
        }
    }
}

template <typename T>
T sk_exchange(T v, int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    sk_barrier();  // every lane is done reading the previous exchange
    sk_warp->slots[sk_warp->current] = bits;
    sk_barrier();  // every lane has published
    T out;
    std::memcpy(&out, &sk_warp->slots[src_lane & 31], sizeof(T));
    return out;
}

template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane) {
    if (mask != 0xffffffffu) std::abort();
    return sk_exchange(v, src_lane);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    if (mask != 0xffffffffu) std::abort();
    return sk_exchange(v, (int)(threadIdx.x & 31) ^ lane_mask);
}

inline int atomicOr(int* address, int value) {
    const int old = *address;
    *address = old | value;
    return old;
}

// Type codes matched by tests/cuda_emu.py against the NumPy dtypes it passes: "f4", "i8", ...
// and "p" + the pointee's code for a pointer.
template <typename T>
std::string sk_code() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_same_v<U, bool>) {
        return "b1";
    } else if constexpr (std::is_floating_point_v<U>) {
        return "f" + std::to_string(sizeof(U));
    } else if constexpr (std::is_signed_v<U>) {
        return "i" + std::to_string(sizeof(U));
    } else {
        return "u" + std::to_string(sizeof(U));
    }
}

template <typename A>
std::string sk_arg_code() {
    if constexpr (std::is_pointer_v<A>) {
        return "p" + sk_code<std::remove_pointer_t<A>>();
    } else {
        return sk_code<A>();
    }
}

template <typename... Args>
const char* sk_signature(void (*)(Args...)) {
    static const std::string sig = (std::string() + ... + (sk_arg_code<Args>() + ","));
    return sig.c_str();
}

template <typename... Args, std::size_t... Is>
void sk_call(void (*kernel)(Args...), void** args, std::index_sequence<Is...>) {
    kernel(*static_cast<std::remove_reference_t<Args>*>(args[Is])...);
}

template <typename... Args>
struct SkLaunch {
    void (*kernel)(Args...);
    void** args;
    static void run(void* self) {
        auto* l = static_cast<SkLaunch*>(self);
        sk_call(l->kernel, l->args, std::index_sequence_for<Args...>{});
    }
};

template <typename... Args>
void sk_launch(void (*kernel)(Args...), unsigned grid, unsigned block, void** args) {
    if (grid == 0 || block == 0 || block % 32 != 0) std::abort();
    gridDim = SkDim3{grid, 1, 1};
    blockDim = SkDim3{block, 1, 1};
    SkLaunch<Args...> launch{kernel, args};
    SkWarp warp;
    warp.body = &SkLaunch<Args...>::run;
    warp.body_arg = &launch;
    for (unsigned b = 0; b < grid; ++b) {
        for (unsigned first = 0; first < block; first += 32) sk_run_warp(warp, b, first);
    }
}
