// The phases of BipartiteMerge for one batch item, shared by the CUDA kernel and the host
// emulation the tests run. Each phase spreads its work items over `Lanes`; phases are separated
// by a block barrier. Scratch (in shared memory on the GPU) holds O(N) floats and ints.
#pragma once

#include "bipartite_merge_kernel.h"

#include <cmath>

namespace trimformer
{

constexpr int32_t kBipartiteMergePhases = 5;

//! Per-item scratch: inverse metric norms of the unprotected tokens, each A token's best B match
//! and score, where each merged A token goes (-1: kept), and the kept A tokens in order.
struct BipartiteMergeScratch
{
    float* invNorm;   //!< [N - p]
    float* nodeMax;   //!< [NA] best cosine similarity of A token i
    int32_t* nodeIdx; //!< [NA] first B index reaching it
    int32_t* dst;     //!< [NA] B index A token i merges into, or -1 when it is kept
    int32_t* keptA;   //!< [NA - r] kept A tokens, ascending
};

TRIMFORMER_HD int64_t bipartiteMergeScratchBytes(BipartiteMergeParams const& p)
{
    int64_t const na = bipartiteMergeSizeA(p);
    return scratchBytes<float>(p.tokens - p.protectedTokens) + scratchBytes<float>(na)
        + 3 * scratchBytes<int32_t>(na);
}

TRIMFORMER_HD BipartiteMergeScratch bipartiteMergeScratch(void* base, BipartiteMergeParams const& p)
{
    int64_t const na = bipartiteMergeSizeA(p);
    auto* bytes = static_cast<unsigned char*>(base);
    BipartiteMergeScratch s{};
    s.invNorm = reinterpret_cast<float*>(bytes);
    bytes += scratchBytes<float>(p.tokens - p.protectedTokens);
    s.nodeMax = reinterpret_cast<float*>(bytes);
    bytes += scratchBytes<float>(na);
    s.nodeIdx = reinterpret_cast<int32_t*>(bytes);
    bytes += scratchBytes<int32_t>(na);
    s.dst = reinterpret_cast<int32_t*>(bytes);
    bytes += scratchBytes<int32_t>(na);
    s.keptA = reinterpret_cast<int32_t*>(bytes);
    return s;
}

//! One batch item's tensors (pointers already offset to item b).
template <typename T>
struct BipartiteMergeItem
{
    T const* x;
    T const* metric;
    T const* size;
    T* xOut;
    T* sizeOut;
};

template <typename T>
TRIMFORMER_HD BipartiteMergeItem<T> bipartiteMergeItem(BipartiteMergeParams const& p, int64_t b, T const* x,
    T const* metric, T const* size, T* xOut, T* sizeOut)
{
    int64_t const n = p.tokens;
    int64_t const m = bipartiteMergeOutputTokens(p);
    return BipartiteMergeItem<T>{x + b * n * p.channels, metric + b * n * p.metricChannels, size + b * n,
        xOut + b * m * p.channels, sizeOut + b * m};
}

//! Phase `phase` (0 .. kBipartiteMergePhases-1) of one item, for the work items of `lanes`.
template <typename T>
TRIMFORMER_HD void bipartiteMergePhase(int32_t phase, Lanes lanes, BipartiteMergeParams const& p,
    BipartiteMergeItem<T> const& item, BipartiteMergeScratch const& s)
{
    int32_t const pr = p.protectedTokens;
    int32_t const u = p.tokens - pr;
    int32_t const na = bipartiteMergeSizeA(p);
    int32_t const nb = bipartiteMergeSizeB(p);
    int32_t const cm = p.metricChannels;
    int32_t const c = p.channels;
    // Unprotected token t (0-based after the protected ones): A token i is t = 2i + oa, B token j
    // is t = 2j + ob, so A holds the even indices of the whole sequence and B the odd ones.
    int32_t const oa = bipartiteMergeOffsetA(p);
    int32_t const ob = bipartiteMergeOffsetB(p);
    auto aToken = [&](int32_t i) { return 2 * i + oa; };
    auto bToken = [&](int32_t j) { return 2 * j + ob; };
    auto metricRow = [&](int32_t t) { return item.metric + static_cast<int64_t>(pr + t) * cm; };
    auto xRow = [&](int32_t t) { return item.x + static_cast<int64_t>(pr + t) * c; };
    auto sizeOf = [&](int32_t t) { return toFloat(item.size[pr + t]); };

    if (phase == 0) // L2 norms of the metric, clamped as the op's spec says
    {
        for (int32_t t = lanes.id; t < u; t += lanes.count)
        {
            T const* m = metricRow(t);
            float sum = 0.f;
            for (int32_t k = 0; k < cm; ++k)
            {
                float const v = toFloat(m[k]);
                sum += v * v;
            }
            s.invNorm[t] = 1.f / fmaxf(sqrtf(sum), 1e-12f);
        }
    }
    else if (phase == 1) // best B match of every A token: the first maximum of its row
    {
        for (int32_t i = lanes.id; i < na; i += lanes.count)
        {
            T const* a = metricRow(aToken(i));
            float best = 0.f;
            int32_t bestJ = 0;
            for (int32_t j = 0; j < nb; ++j)
            {
                T const* bRow = metricRow(bToken(j));
                float dot = 0.f;
                for (int32_t k = 0; k < cm; ++k)
                {
                    dot += toFloat(a[k]) * toFloat(bRow[k]);
                }
                float const score = dot * s.invNorm[aToken(i)] * s.invNorm[bToken(j)];
                if (j == 0 || score > best)
                {
                    best = score;
                    bestJ = j;
                }
            }
            s.nodeMax[i] = best;
            s.nodeIdx[i] = bestJ;
        }
    }
    else if (phase == 2) // rank A tokens by best score, descending, ties to the lower index
    {
        for (int32_t i = lanes.id; i < na; i += lanes.count)
        {
            float const mine = s.nodeMax[i];
            int32_t rank = 0;
            for (int32_t k = 0; k < na; ++k)
            {
                float const other = s.nodeMax[k];
                rank += (other > mine || (other == mine && k < i)) ? 1 : 0;
            }
            s.dst[i] = rank < p.r ? s.nodeIdx[i] : -1;
        }
    }
    else if (phase == 3) // the kept A tokens in ascending order
    {
        for (int32_t i = lanes.id; i < na; i += lanes.count)
        {
            if (s.dst[i] < 0)
            {
                int32_t slot = 0;
                for (int32_t k = 0; k < i; ++k)
                {
                    slot += s.dst[k] < 0 ? 1 : 0;
                }
                s.keptA[slot] = i;
            }
        }
    }
    else // outputs: protected, kept A, then every B with what merged into it
    {
        int32_t const keptRows = na - p.r;
        int32_t const rows = pr + keptRows + nb;
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
            else if (row < pr + keptRows)
            {
                value = toFloat(xRow(aToken(s.keptA[row - pr]))[ch]);
            }
            else
            {
                int32_t const j = row - pr - keptRows;
                float const sb = sizeOf(bToken(j));
                float acc = toFloat(xRow(bToken(j))[ch]) * sb;
                float weight = sb;
                for (int32_t i = 0; i < na; ++i)
                {
                    if (s.dst[i] == j)
                    {
                        float const sa = sizeOf(aToken(i));
                        acc += toFloat(xRow(aToken(i))[ch]) * sa;
                        weight += sa;
                    }
                }
                value = acc / weight;
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
            else if (row < pr + keptRows)
            {
                value = sizeOf(aToken(s.keptA[row - pr]));
            }
            else
            {
                int32_t const j = row - pr - keptRows;
                value = sizeOf(bToken(j));
                for (int32_t i = 0; i < na; ++i)
                {
                    value += s.dst[i] == j ? sizeOf(aToken(i)) : 0.f;
                }
            }
            item.sizeOut[row] = fromFloat<T>(value);
        }
    }
}

} // namespace trimformer
