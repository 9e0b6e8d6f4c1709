// Helpers shared by the reduction kernels: the element types they support, float conversion,
// and the lanes a phase is spread over. No TensorRT here: kernels build with nvcc alone.
#pragma once

#include <cstdint>
#include <cuda_fp16.h>

#if defined(__CUDACC__)
#define TRIMFORMER_HD __host__ __device__ __forceinline__
#else
#define TRIMFORMER_HD inline
#endif

namespace trimformer
{

//! Element type of every tensor of one call (inputs and outputs share it).
enum class KernelDType : int32_t
{
    kFLOAT = 0,
    kHALF = 1,
};

TRIMFORMER_HD float toFloat(float v)
{
    return v;
}

TRIMFORMER_HD float toFloat(__half v)
{
    return __half2float(v);
}

template <typename T>
TRIMFORMER_HD T fromFloat(float v);

template <>
TRIMFORMER_HD float fromFloat<float>(float v)
{
    return v;
}

template <>
TRIMFORMER_HD __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}

//! The threads one phase of a kernel is spread over: lane `id` of `count` handles work items
//! id, id + count, ... A kernel passes (threadIdx.x, blockDim.x); the host emulation used by
//! the tests runs every lane of a phase in turn, which is valid because within a phase lanes
//! write disjoint elements and read only what earlier phases wrote.
struct Lanes
{
    int32_t id;
    int32_t count;
};

//! Bytes of `n` elements of `T`, rounded up so the next scratch array stays 16-byte aligned.
template <typename T>
TRIMFORMER_HD constexpr int64_t scratchBytes(int64_t n)
{
    return (n * static_cast<int64_t>(sizeof(T)) + 15) / 16 * 16;
}

} // namespace trimformer
