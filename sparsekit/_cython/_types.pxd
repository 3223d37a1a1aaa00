# Fused types shared by every CPU kernel: value type (float32/float64) and index type
# (int32, or int64 for layers with 2**31 or more connections).
from libc.stdint cimport int32_t, int64_t
from cython cimport floating

ctypedef fused index_t:
    int32_t
    int64_t
