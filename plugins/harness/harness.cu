// A C ABI over the reduction kernels for tests and benchmarks (loaded with ctypes; no TensorRT,
// no torch extension build). Each op has one entry point that either launches the CUDA kernel
// (device != 0: device pointers and a cudaStream_t) or runs the very same phases on the host
// (device == 0: host pointers, `lanes` simulated threads per phase), so the kernels' logic is
// checked on machines without a GPU and their launches on machines with one.
#include "../bipartite_merge/bipartite_merge_kernel.h"
#include "../bipartite_merge/bipartite_merge_phases.cuh"
#include "../diverse_select/diverse_select_kernel.h"
#include "../diverse_select/diverse_select_phases.cuh"
#include "../topk_select/topk_select_kernel.h"
#include "../topk_select/topk_select_phases.cuh"

#include <vector>

namespace
{

using trimformer::KernelDType;
using trimformer::Lanes;

//! Run `phases` phases of every batch item on the host: each phase for every lane in turn.
template <typename PhaseFn>
void emulate(int32_t batch, int32_t phases, int64_t scratchBytes, int32_t lanes, PhaseFn run)
{
    std::vector<unsigned char> scratch(static_cast<size_t>(scratchBytes) + 16);
    for (int32_t b = 0; b < batch; ++b)
    {
        for (int32_t phase = 0; phase < phases; ++phase)
        {
            for (int32_t lane = 0; lane < lanes; ++lane)
            {
                run(b, phase, Lanes{lane, lanes}, scratch.data());
            }
        }
    }
}

template <typename T>
void hostBipartiteMerge(trimformer::BipartiteMergeParams const& p, void const* x, void const* metric, void const* size,
    void* xOut, void* sizeOut, int32_t lanes)
{
    emulate(p.batch, trimformer::kBipartiteMergePhases, trimformer::bipartiteMergeScratchBytes(p), lanes,
        [&](int32_t b, int32_t phase, Lanes l, void* scratch) {
            auto const item = trimformer::bipartiteMergeItem(p, b, static_cast<T const*>(x),
                static_cast<T const*>(metric), static_cast<T const*>(size), static_cast<T*>(xOut),
                static_cast<T*>(sizeOut));
            trimformer::bipartiteMergePhase(phase, l, p, item, trimformer::bipartiteMergeScratch(scratch, p));
        });
}

template <typename T>
void hostTopKSelect(trimformer::TopKSelectParams const& p, void const* x, void const* scores, void const* size,
    void* xOut, void* sizeOut, int32_t lanes)
{
    emulate(p.batch, trimformer::kTopKSelectPhases, trimformer::topKSelectScratchBytes(p), lanes,
        [&](int32_t b, int32_t phase, Lanes l, void* scratch) {
            auto const item = trimformer::topKSelectItem(p, b, static_cast<T const*>(x), static_cast<T const*>(scores),
                static_cast<T const*>(size), static_cast<T*>(xOut), static_cast<T*>(sizeOut));
            trimformer::topKSelectPhase(phase, l, p, item, trimformer::topKSelectScratch(scratch, p));
        });
}

template <typename T>
void hostDiverseSelect(trimformer::DiverseSelectParams const& p, void const* x, void const* features, void const* size,
    void* xOut, void* sizeOut, int32_t lanes)
{
    emulate(p.batch, trimformer::diverseSelectPhases(p), trimformer::diverseSelectScratchBytes(p), lanes,
        [&](int32_t b, int32_t phase, Lanes l, void* scratch) {
            auto const item = trimformer::diverseSelectItem(p, b, static_cast<T const*>(x),
                static_cast<T const*>(features), static_cast<T const*>(size), static_cast<T*>(xOut),
                static_cast<T*>(sizeOut));
            trimformer::diverseSelectPhase(phase, l, p, item, trimformer::diverseSelectScratch(scratch, p));
        });
}

} // namespace

extern "C"
{

//! params: batch, tokens, channels, metricChannels, r, protected. Returns 0 on success, else a
//! cudaError_t (cudaErrorInvalidValue for refused params).
int trimformer_bipartite_merge(int device, int dtype, int32_t const* params, void const* x, void const* metric,
    void const* size, void* xOut, void* sizeOut, void* stream, int lanes)
{
    trimformer::BipartiteMergeParams const p{params[0], params[1], params[2], params[3], params[4], params[5]};
    auto const type = static_cast<KernelDType>(dtype);
    if (device)
    {
        return trimformer::launchBipartiteMerge(
            type, p, x, metric, size, xOut, sizeOut, static_cast<cudaStream_t>(stream));
    }
    if (trimformer::bipartiteMergeCheck(p) != nullptr || lanes < 1)
    {
        return cudaErrorInvalidValue;
    }
    if (type == KernelDType::kHALF)
    {
        hostBipartiteMerge<__half>(p, x, metric, size, xOut, sizeOut, lanes);
    }
    else
    {
        hostBipartiteMerge<float>(p, x, metric, size, xOut, sizeOut, lanes);
    }
    return 0;
}

//! params: batch, tokens, channels, k, protected, fuse. Returns as trimformer_bipartite_merge.
int trimformer_topk_select(int device, int dtype, int32_t const* params, void const* x, void const* scores,
    void const* size, void* xOut, void* sizeOut, void* stream, int lanes)
{
    trimformer::TopKSelectParams const p{params[0], params[1], params[2], params[3], params[4], params[5]};
    auto const type = static_cast<KernelDType>(dtype);
    if (device)
    {
        return trimformer::launchTopKSelect(type, p, x, scores, size, xOut, sizeOut, static_cast<cudaStream_t>(stream));
    }
    if (trimformer::topKSelectCheck(p) != nullptr || lanes < 1)
    {
        return cudaErrorInvalidValue;
    }
    if (type == KernelDType::kHALF)
    {
        hostTopKSelect<__half>(p, x, scores, size, xOut, sizeOut, lanes);
    }
    else
    {
        hostTopKSelect<float>(p, x, scores, size, xOut, sizeOut, lanes);
    }
    return 0;
}

//! params: batch, tokens, channels, featureChannels, k, protected. Returns as
//! trimformer_bipartite_merge.
int trimformer_diverse_select(int device, int dtype, int32_t const* params, void const* x, void const* features,
    void const* size, void* xOut, void* sizeOut, void* stream, int lanes)
{
    trimformer::DiverseSelectParams const p{params[0], params[1], params[2], params[3], params[4], params[5]};
    auto const type = static_cast<KernelDType>(dtype);
    if (device)
    {
        return trimformer::launchDiverseSelect(
            type, p, x, features, size, xOut, sizeOut, static_cast<cudaStream_t>(stream));
    }
    if (trimformer::diverseSelectCheck(p) != nullptr || lanes < 1)
    {
        return cudaErrorInvalidValue;
    }
    if (type == KernelDType::kHALF)
    {
        hostDiverseSelect<__half>(p, x, features, size, xOut, sizeOut, lanes);
    }
    else
    {
        hostDiverseSelect<float>(p, x, features, size, xOut, sizeOut, lanes);
    }
    return 0;
}

//! The last CUDA error's name, for messages.
char const* trimformer_error_name(int code)
{
    return cudaGetErrorName(static_cast<cudaError_t>(code));
}

} // extern "C"
