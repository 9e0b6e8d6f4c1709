// DiverseSelect (keep k tokens chosen greedily for max-min cosine diversity, DivPrune): the
// launcher. Semantics are those of trimformer/ops/diverse_select.py; see README.md for limits.
#pragma once

#include "../common/kernel_common.h"

#include <cuda_runtime_api.h>

namespace trimformer
{

//! Static shape and attributes of one DiverseSelect call.
struct DiverseSelectParams
{
    int32_t batch;           //!< B
    int32_t tokens;          //!< N, input tokens
    int32_t channels;        //!< C of x
    int32_t featureChannels; //!< Cf of features
    int32_t k;               //!< unprotected tokens kept
    int32_t protectedTokens; //!< leading tokens always kept, taking no part in the selection
};

//! Largest token count one block handles (its scratch lives in shared memory).
constexpr int32_t kDiverseSelectMaxTokens = 2048;

//! Output tokens: protected + k.
TRIMFORMER_HD constexpr int32_t diverseSelectOutputTokens(DiverseSelectParams const& p)
{
    return p.protectedTokens + p.k;
}

//! Why `p` cannot run, or nullptr when it can.
inline char const* diverseSelectCheck(DiverseSelectParams const& p)
{
    if (p.batch < 0 || p.channels < 1 || p.featureChannels < 1)
    {
        return "DiverseSelect: batch must be >= 0 and channels >= 1";
    }
    if (p.protectedTokens < 0)
    {
        return "DiverseSelect: protected must be >= 0";
    }
    if (p.k < 1 || p.k > p.tokens - p.protectedTokens)
    {
        return "DiverseSelect: k must be in 1..N-protected";
    }
    if (p.tokens > kDiverseSelectMaxTokens)
    {
        return "DiverseSelect: more than 2048 tokens";
    }
    return nullptr;
}

//! Run DiverseSelect on `stream`: one block per batch item. All pointers are device memory,
//! contiguous: x [B,N,C], features [B,N,Cf], size [B,N,1] in; xOut [B,M,C], sizeOut [B,M,1] out
//! with M = protected + k, every tensor of element type `dtype`. Features must be finite.
//! Returns cudaErrorInvalidValue when diverseSelectCheck refuses `params`, else the launch's error.
cudaError_t launchDiverseSelect(KernelDType dtype, DiverseSelectParams const& params, void const* x,
    void const* features, void const* size, void* xOut, void* sizeOut, cudaStream_t stream) noexcept;

} // namespace trimformer
