// TopKSelect CUDA kernel: one block per batch item runs the phases of topk_select_phases.cuh
// with a barrier between them.
#include "topk_select_kernel.h"
#include "topk_select_phases.cuh"

namespace trimformer
{
namespace
{

constexpr int32_t kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    topKSelectKernel(TopKSelectParams params, T const* x, T const* scores, T const* size, T* xOut, T* sizeOut)
{
    extern __shared__ __align__(16) unsigned char scratch[];
    TopKSelectScratch const s = topKSelectScratch(scratch, params);
    TopKSelectItem<T> const item = topKSelectItem(params, blockIdx.x, x, scores, size, xOut, sizeOut);
    Lanes const lanes{static_cast<int32_t>(threadIdx.x), static_cast<int32_t>(blockDim.x)};
    for (int32_t phase = 0; phase < kTopKSelectPhases; ++phase)
    {
        topKSelectPhase(phase, lanes, params, item, s);
        __syncthreads();
    }
}

template <typename T>
cudaError_t launch(TopKSelectParams const& p, void const* x, void const* scores, void const* size, void* xOut,
    void* sizeOut, cudaStream_t stream)
{
    size_t const smem = static_cast<size_t>(topKSelectScratchBytes(p));
    topKSelectKernel<T><<<p.batch, kThreads, smem, stream>>>(p, static_cast<T const*>(x),
        static_cast<T const*>(scores), static_cast<T const*>(size), static_cast<T*>(xOut), static_cast<T*>(sizeOut));
    return cudaGetLastError();
}

} // namespace

cudaError_t launchTopKSelect(KernelDType dtype, TopKSelectParams const& params, void const* x, void const* scores,
    void const* size, void* xOut, void* sizeOut, cudaStream_t stream) noexcept
{
    if (topKSelectCheck(params) != nullptr)
    {
        return cudaErrorInvalidValue;
    }
    if (params.batch == 0)
    {
        return cudaSuccess;
    }
    switch (dtype)
    {
    case KernelDType::kFLOAT: return launch<float>(params, x, scores, size, xOut, sizeOut, stream);
    case KernelDType::kHALF: return launch<__half>(params, x, scores, size, xOut, sizeOut, stream);
    }
    return cudaErrorInvalidValue;
}

} // namespace trimformer
