// BipartiteMerge CUDA kernel: one block per batch item runs the phases of
// bipartite_merge_phases.cuh with a barrier between them.
#include "bipartite_merge_kernel.h"
#include "bipartite_merge_phases.cuh"

namespace trimformer
{
namespace
{

constexpr int32_t kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) bipartiteMergeKernel(
    BipartiteMergeParams params, T const* x, T const* metric, T const* size, T* xOut, T* sizeOut)
{
    extern __shared__ __align__(16) unsigned char scratch[];
    BipartiteMergeScratch const s = bipartiteMergeScratch(scratch, params);
    BipartiteMergeItem<T> const item = bipartiteMergeItem(params, blockIdx.x, x, metric, size, xOut, sizeOut);
    Lanes const lanes{static_cast<int32_t>(threadIdx.x), static_cast<int32_t>(blockDim.x)};
    for (int32_t phase = 0; phase < kBipartiteMergePhases; ++phase)
    {
        bipartiteMergePhase(phase, lanes, params, item, s);
        __syncthreads();
    }
}

template <typename T>
cudaError_t launch(BipartiteMergeParams const& p, void const* x, void const* metric, void const* size, void* xOut,
    void* sizeOut, cudaStream_t stream)
{
    size_t const smem = static_cast<size_t>(bipartiteMergeScratchBytes(p));
    bipartiteMergeKernel<T><<<p.batch, kThreads, smem, stream>>>(p, static_cast<T const*>(x),
        static_cast<T const*>(metric), static_cast<T const*>(size), static_cast<T*>(xOut), static_cast<T*>(sizeOut));
    return cudaGetLastError();
}

} // namespace

cudaError_t launchBipartiteMerge(KernelDType dtype, BipartiteMergeParams const& params, void const* x,
    void const* metric, void const* size, void* xOut, void* sizeOut, cudaStream_t stream) noexcept
{
    if (bipartiteMergeCheck(params) != nullptr)
    {
        return cudaErrorInvalidValue;
    }
    if (params.batch == 0)
    {
        return cudaSuccess;
    }
    switch (dtype)
    {
    case KernelDType::kFLOAT: return launch<float>(params, x, metric, size, xOut, sizeOut, stream);
    case KernelDType::kHALF: return launch<__half>(params, x, metric, size, xOut, sizeOut, stream);
    }
    return cudaErrorInvalidValue;
}

} // namespace trimformer
