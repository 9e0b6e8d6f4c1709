// The phases of TopKSelect for one batch item, shared by the CUDA kernel and the host emulation
// the tests run. Each phase spreads its work items over `Lanes`; phases are separated by a block
// barrier. Selection is rank-by-counting: O(N^2) comparisons, no sort, deterministic ties.
#pragma once

#include "topk_select_kernel.h"

namespace trimformer
{

constexpr int32_t kTopKSelectPhases = 3;

//! Per-item scratch: whether each unprotected token is kept, and the kept tokens in order.
struct TopKSelectScratch
{
    int32_t* keep; //!< [N - p] 1 when kept
    int32_t* kept; //!< [k] kept tokens, ascending
};

TRIMFORMER_HD int64_t topKSelectScratchBytes(TopKSelectParams const& p)
{
    return scratchBytes<int32_t>(p.tokens - p.protectedTokens) + scratchBytes<int32_t>(p.k);
}

TRIMFORMER_HD TopKSelectScratch topKSelectScratch(void* base, TopKSelectParams const& p)
{
    auto* bytes = static_cast<unsigned char*>(base);
    TopKSelectScratch s{};
    s.keep = reinterpret_cast<int32_t*>(bytes);
    s.kept = reinterpret_cast<int32_t*>(bytes + scratchBytes<int32_t>(p.tokens - p.protectedTokens));
    return s;
}

//! One batch item's tensors (pointers already offset to item b).
template <typename T>
struct TopKSelectItem
{
    T const* x;
    T const* scores;
    T const* size;
    T* xOut;
    T* sizeOut;
};

template <typename T>
TRIMFORMER_HD TopKSelectItem<T> topKSelectItem(
    TopKSelectParams const& p, int64_t b, T const* x, T const* scores, T const* size, T* xOut, T* sizeOut)
{
    int64_t const n = p.tokens;
    int64_t const m = topKSelectOutputTokens(p);
    return TopKSelectItem<T>{
        x + b * n * p.channels, scores + b * n, size + b * n, xOut + b * m * p.channels, sizeOut + b * m};
}

//! Phase `phase` (0 .. kTopKSelectPhases-1) of one item, for the work items of `lanes`.
template <typename T>
TRIMFORMER_HD void topKSelectPhase(
    int32_t phase, Lanes lanes, TopKSelectParams const& p, TopKSelectItem<T> const& item, TopKSelectScratch const& s)
{
    int32_t const pr = p.protectedTokens;
    int32_t const u = p.tokens - pr;
    int32_t const c = p.channels;
    // Unprotected token t (0-based after the protected ones).
    auto scoreOf = [&](int32_t t) { return toFloat(item.scores[pr + t]); };
    auto xRow = [&](int32_t t) { return item.x + static_cast<int64_t>(pr + t) * c; };

    if (phase == 0) // rank by score, descending, ties to the lower index; keep the first k
    {
        for (int32_t t = lanes.id; t < u; t += lanes.count)
        {
            float const mine = scoreOf(t);
            int32_t rank = 0;
            for (int32_t v = 0; v < u; ++v)
            {
                float const other = scoreOf(v);
                rank += (other > mine || (other == mine && v < t)) ? 1 : 0;
            }
            s.keep[t] = rank < p.k ? 1 : 0;
        }
    }
    else if (phase == 1) // the kept tokens in their original order
    {
        for (int32_t t = lanes.id; t < u; t += lanes.count)
        {
            if (s.keep[t])
            {
                int32_t slot = 0;
                for (int32_t v = 0; v < t; ++v)
                {
                    slot += s.keep[v];
                }
                s.kept[slot] = t;
            }
        }
    }
    else // outputs: protected, kept, then the fused token sum(score * x) over the dropped ones
    {
        int32_t const rows = topKSelectOutputTokens(p);
        int64_t const elements = static_cast<int64_t>(rows) * c;
        for (int64_t e = lanes.id; e < elements; e += lanes.count)
        {
            int32_t const row = static_cast<int32_t>(e / c);
            int32_t const ch = static_cast<int32_t>(e % c);
            float value;
            if (row < pr)
            {
                value = toFloat(item.x[e]);
            }
            else if (row < pr + p.k)
            {
                value = toFloat(xRow(s.kept[row - pr])[ch]);
            }
            else
            {
                value = 0.f;
                for (int32_t t = 0; t < u; ++t)
                {
                    value += s.keep[t] ? 0.f : scoreOf(t) * toFloat(xRow(t)[ch]);
                }
            }
            item.xOut[e] = fromFloat<T>(value);
        }
        for (int32_t row = lanes.id; row < rows; row += lanes.count)
        {
            float value;
            if (row < pr)
            {
                value = toFloat(item.size[row]);
            }
            else if (row < pr + p.k)
            {
                value = toFloat(item.size[pr + s.kept[row - pr]]);
            }
            else
            {
                value = 0.f;
                for (int32_t t = 0; t < u; ++t)
                {
                    value += s.keep[t] ? 0.f : toFloat(item.size[pr + t]);
                }
            }
            item.sizeOut[row] = fromFloat<T>(value);
        }
    }
}

} // namespace trimformer
