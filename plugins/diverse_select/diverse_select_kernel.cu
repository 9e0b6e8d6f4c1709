// DiverseSelect CUDA kernel: one block per batch item runs the phases of
// diverse_select_phases.cuh with a barrier between them.
#include "diverse_select_kernel.h"
#include "diverse_select_phases.cuh"

namespace trimformer
{
namespace
{

constexpr int32_t kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) diverseSelectKernel(
    DiverseSelectParams params, T const* x, T const* features, T const* size, T* xOut, T* sizeOut)
{
    extern __shared__ __align__(16) unsigned char scratch[];
    DiverseSelectScratch const s = diverseSelectScratch(scratch, params);
    DiverseSelectItem<T> const item = diverseSelectItem(params, blockIdx.x, x, features, size, xOut, sizeOut);
    Lanes const lanes{static_cast<int32_t>(threadIdx.x), static_cast<int32_t>(blockDim.x)};
    int32_t const phases = diverseSelectPhases(params);
    for (int32_t phase = 0; phase < phases; ++phase)
    {
        diverseSelectPhase(phase, lanes, params, item, s);
        __syncthreads();
    }
}

template <typename T>
cudaError_t launch(DiverseSelectParams const& p, void const* x, void const* features, void const* size, void* xOut,
    void* sizeOut, cudaStream_t stream)
{
    size_t const smem = static_cast<size_t>(diverseSelectScratchBytes(p));
    diverseSelectKernel<T><<<p.batch, kThreads, smem, stream>>>(p, static_cast<T const*>(x),
        static_cast<T const*>(features), static_cast<T const*>(size), static_cast<T*>(xOut), static_cast<T*>(sizeOut));
    return cudaGetLastError();
}

} // namespace

cudaError_t launchDiverseSelect(KernelDType dtype, DiverseSelectParams const& params, void const* x,
    void const* features, void const* size, void* xOut, void* sizeOut, cudaStream_t stream) noexcept
{
    if (diverseSelectCheck(params) != nullptr)
    {
        return cudaErrorInvalidValue;
    }
    if (params.batch == 0)
    {
        return cudaSuccess;
    }
    switch (dtype)
    {
    case KernelDType::kFLOAT: return launch<float>(params, x, features, size, xOut, sizeOut, stream);
    case KernelDType::kHALF: return launch<__half>(params, x, features, size, xOut, sizeOut, stream);
    }
    return cudaErrorInvalidValue;
}

} // namespace trimformer
