// Helpers shared by every sparsekit kernel file.  sparsekit/_cuda/_module.py prepends this text
// to each kernel file before NVRTC compiles it, so the files need no #include (NVRTC has no
// standard headers by default) and use only built-in types:
//   T = float | double (values), I = int | long long (CSR indices).
//
// Layout: activations are feature-major (one row of n_batch values per neuron, C-ordered), so a
// warp reads one neuron's batch row with lanes on consecutive columns (coalesced 128-byte loads).
// Every kernel is a grid-stride loop over warps (or threads), so any grid size is correct.
#ifndef SPARSEKIT_COMMON_CU
#define SPARSEKIT_COMMON_CU

#define SK_FULL_MASK 0xffffffffu
// Batch columns a lane keeps in registers per pass, and the columns a warp covers per pass.
#define SK_V 4
#define SK_TILE (32 * SK_V)

// The warp executing this thread, and the number of warps in the grid.  Launches use block
// sizes that are multiples of 32, so a warp never straddles two blocks.
__device__ __forceinline__ long long sk_warp_id() {
    return ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
}

__device__ __forceinline__ long long sk_warp_count() {
    return ((long long)gridDim.x * blockDim.x) >> 5;
}

__device__ __forceinline__ long long sk_thread_id() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ long long sk_thread_count() {
    return (long long)gridDim.x * blockDim.x;
}

__device__ __forceinline__ long long sk_min(long long a, long long b) {
    return a < b ? a : b;
}

// Butterfly sum: every lane ends with the total of the 32 lanes.  Must be reached by all 32
// lanes of the warp (callers keep it outside lane-dependent branches).
template <typename T>
__device__ __forceinline__ T sk_warp_sum(T v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(SK_FULL_MASK, v, offset);
    }
    return v;
}

// First position in the sorted range a[lo, hi) whose value is >= key (hi when there is none):
// a column within a CSR row (membership, the merge of a rebuild).
template <typename A>
__device__ __forceinline__ long long sk_lower_bound(const A* a, long long lo, long long hi,
                                                    long long key) {
    while (lo < hi) {
        const long long mid = lo + ((hi - lo) >> 1);
        if ((long long)a[mid] < key) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

#endif  // SPARSEKIT_COMMON_CU
