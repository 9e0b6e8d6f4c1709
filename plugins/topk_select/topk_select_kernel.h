// TopKSelect (keep the k highest-scoring tokens in order, optionally fuse the rest): the
// launcher. Semantics are those of trimformer/ops/topk_select.py; see README.md for limits.
#pragma once

#include "../common/kernel_common.h"

#include <cuda_runtime_api.h>

namespace trimformer
{

//! Static shape and attributes of one TopKSelect call.
struct TopKSelectParams
{
    int32_t batch;           //!< B
    int32_t tokens;          //!< N, input tokens
    int32_t channels;        //!< C of x
    int32_t k;               //!< unprotected tokens kept
    int32_t protectedTokens; //!< leading tokens always kept
    int32_t fuse;            //!< 1: append the score-weighted sum of the dropped tokens
};

//! Largest token count one block handles (its scratch lives in shared memory).
constexpr int32_t kTopKSelectMaxTokens = 2048;

//! Output tokens: protected + k + fuse.
TRIMFORMER_HD constexpr int32_t topKSelectOutputTokens(TopKSelectParams const& p)
{
    return p.protectedTokens + p.k + p.fuse;
}

//! Why `p` cannot run, or nullptr when it can.
inline char const* topKSelectCheck(TopKSelectParams const& p)
{
    if (p.batch < 0 || p.channels < 1)
    {
        return "TopKSelect: batch must be >= 0 and channels >= 1";
    }
    if (p.protectedTokens < 0 || (p.fuse != 0 && p.fuse != 1))
    {
        return "TopKSelect: protected must be >= 0 and fuse 0 or 1";
    }
    if (p.k < 1 || p.k > p.tokens - p.protectedTokens)
    {
        return "TopKSelect: k must be in 1..N-protected";
    }
    if (p.tokens > kTopKSelectMaxTokens)
    {
        return "TopKSelect: more than 2048 tokens";
    }
    return nullptr;
}

//! Run TopKSelect on `stream`: one block per batch item. All pointers are device memory,
//! contiguous: x [B,N,C], scores [B,N], size [B,N,1] in; xOut [B,M,C], sizeOut [B,M,1] out with
//! M = protected + k + fuse, every tensor of element type `dtype`. Scores must be finite.
//! Returns cudaErrorInvalidValue when topKSelectCheck refuses `params`, else the launch's error.
cudaError_t launchTopKSelect(KernelDType dtype, TopKSelectParams const& params, void const* x, void const* scores,
    void const* size, void* xOut, void* sizeOut, cudaStream_t stream) noexcept;

} // namespace trimformer
