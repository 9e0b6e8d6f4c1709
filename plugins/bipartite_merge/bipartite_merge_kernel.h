// BipartiteMerge (ToMe bipartite soft matching + size-weighted merge): the launcher.
// Semantics are those of trimformer/ops/bipartite_merge.py; see README.md for limits.
#pragma once

#include "../common/kernel_common.h"

#include <cuda_runtime_api.h>

namespace trimformer
{

//! Static shape and attributes of one BipartiteMerge call.
struct BipartiteMergeParams
{
    int32_t batch;           //!< B
    int32_t tokens;          //!< N, input tokens
    int32_t channels;        //!< C of x
    int32_t metricChannels;  //!< Cm of metric
    int32_t r;               //!< tokens removed
    int32_t protectedTokens; //!< leading tokens passed through, never matched
};

//! Largest token count one block handles (its scratch lives in shared memory).
constexpr int32_t kBipartiteMergeMaxTokens = 2048;

//! ToMe's split: A = tokens at even indices of the whole sequence, B = odd ones; protected
//! tokens are never matched. Counted among the unprotected tokens (0-based after them), A starts
//! at offset `bipartiteMergeOffsetA` and B at `bipartiteMergeOffsetB`, every second token.
TRIMFORMER_HD constexpr int32_t bipartiteMergeOffsetA(BipartiteMergeParams const& p)
{
    return p.protectedTokens % 2;
}

TRIMFORMER_HD constexpr int32_t bipartiteMergeOffsetB(BipartiteMergeParams const& p)
{
    return 1 - p.protectedTokens % 2;
}

//! Unprotected tokens in set A and in set B.
TRIMFORMER_HD constexpr int32_t bipartiteMergeSizeA(BipartiteMergeParams const& p)
{
    return (p.tokens - p.protectedTokens - bipartiteMergeOffsetA(p) + 1) / 2;
}

TRIMFORMER_HD constexpr int32_t bipartiteMergeSizeB(BipartiteMergeParams const& p)
{
    return (p.tokens - p.protectedTokens - bipartiteMergeOffsetB(p) + 1) / 2;
}

//! Output tokens: N - r.
TRIMFORMER_HD constexpr int32_t bipartiteMergeOutputTokens(BipartiteMergeParams const& p)
{
    return p.tokens - p.r;
}

//! Why `p` cannot run, or nullptr when it can.
inline char const* bipartiteMergeCheck(BipartiteMergeParams const& p)
{
    if (p.batch < 0 || p.channels < 1 || p.metricChannels < 1)
    {
        return "BipartiteMerge: batch must be >= 0 and channels >= 1";
    }
    if (p.protectedTokens < 0 || p.r < 0)
    {
        return "BipartiteMerge: r and protected must be >= 0";
    }
    if (p.tokens - p.protectedTokens < 2)
    {
        return "BipartiteMerge: needs at least 2 unprotected tokens";
    }
    if (p.tokens > kBipartiteMergeMaxTokens)
    {
        return "BipartiteMerge: more than 2048 tokens";
    }
    if (p.r > (p.tokens - p.protectedTokens) / 2) // never more than NA or NB
    {
        return "BipartiteMerge: r exceeds (N - protected) / 2";
    }
    return nullptr;
}

//! Run BipartiteMerge on `stream`: one block per batch item. All pointers are device memory,
//! contiguous: x [B,N,C], metric [B,N,Cm], size [B,N,1] in; xOut [B,N-r,C], sizeOut [B,N-r,1]
//! out, every tensor of element type `dtype`. Returns cudaErrorInvalidValue when
//! bipartiteMergeCheck refuses `params`, else the launch's error.
cudaError_t launchBipartiteMerge(KernelDType dtype, BipartiteMergeParams const& params, void const* x,
    void const* metric, void const* size, void* xOut, void* sizeOut, cudaStream_t stream) noexcept;

} // namespace trimformer
