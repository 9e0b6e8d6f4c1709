// The phases of DiverseSelect for one batch item, shared by the CUDA kernel and the host
// emulation the tests run. Each phase spreads its work items over `Lanes`; phases are separated
// by a block barrier. The greedy selection takes 2 phases per pick: every token's closest
// similarity to the selected set is updated and reduced to a per-group minimum (a fixed number
// of groups, so results do not depend on the thread count), then one lane reduces the groups to
// the next pick. Similarities are computed on the fly (no N x N matrix is stored).
#pragma once

#include "diverse_select_kernel.h"

#include <cmath>

namespace trimformer
{

//! Fixed token groups of the argmin reduction: group g holds tokens g, g + G, g + 2G, ...
constexpr int32_t kDiverseSelectGroups = 256;

//! Phases of one item: norms, first-pick scores, k picks' reductions with the k-1 updates
//! between them, the kept order, the outputs.
TRIMFORMER_HD constexpr int32_t diverseSelectPhases(DiverseSelectParams const& p)
{
    return 2 * p.k + 3;
}

//! Per-item scratch over the U = N - p unprotected tokens.
struct DiverseSelectScratch
{
    float* invNorm;     //!< [U] 1 / max(|f_t|, 1e-12)
    float* closest;     //!< [U] the value argmin'd next (+inf once selected)
    int32_t* selected;  //!< [U] 1 when selected
    float* groupMin;    //!< [G] smallest `closest` of each group
    int32_t* groupArg;  //!< [G] its lowest token (U when the group is empty)
    int32_t* pick;      //!< [1] the last pick
    int32_t* kept;      //!< [k] selected tokens, ascending
};

TRIMFORMER_HD int64_t diverseSelectScratchBytes(DiverseSelectParams const& p)
{
    int64_t const u = p.tokens - p.protectedTokens;
    return 2 * scratchBytes<float>(u) + scratchBytes<int32_t>(u) + scratchBytes<float>(kDiverseSelectGroups)
        + scratchBytes<int32_t>(kDiverseSelectGroups) + scratchBytes<int32_t>(1) + scratchBytes<int32_t>(p.k);
}

TRIMFORMER_HD DiverseSelectScratch diverseSelectScratch(void* base, DiverseSelectParams const& p)
{
    int64_t const u = p.tokens - p.protectedTokens;
    auto* bytes = static_cast<unsigned char*>(base);
    DiverseSelectScratch s{};
    s.invNorm = reinterpret_cast<float*>(bytes);
    bytes += scratchBytes<float>(u);
    s.closest = reinterpret_cast<float*>(bytes);
    bytes += scratchBytes<float>(u);
    s.selected = reinterpret_cast<int32_t*>(bytes);
    bytes += scratchBytes<int32_t>(u);
    s.groupMin = reinterpret_cast<float*>(bytes);
    bytes += scratchBytes<float>(kDiverseSelectGroups);
    s.groupArg = reinterpret_cast<int32_t*>(bytes);
    bytes += scratchBytes<int32_t>(kDiverseSelectGroups);
    s.pick = reinterpret_cast<int32_t*>(bytes);
    bytes += scratchBytes<int32_t>(1);
    s.kept = reinterpret_cast<int32_t*>(bytes);
    return s;
}

//! One batch item's tensors (pointers already offset to item b).
template <typename T>
struct DiverseSelectItem
{
    T const* x;
    T const* features;
    T const* size;
    T* xOut;
    T* sizeOut;
};

template <typename T>
TRIMFORMER_HD DiverseSelectItem<T> diverseSelectItem(DiverseSelectParams const& p, int64_t b, T const* x,
    T const* features, T const* size, T* xOut, T* sizeOut)
{
    int64_t const n = p.tokens;
    int64_t const m = diverseSelectOutputTokens(p);
    return DiverseSelectItem<T>{x + b * n * p.channels, features + b * n * p.featureChannels, size + b * n,
        xOut + b * m * p.channels, sizeOut + b * m};
}

//! Phase `phase` (0 .. diverseSelectPhases(p)-1) of one item, for the work items of `lanes`.
template <typename T>
TRIMFORMER_HD void diverseSelectPhase(int32_t phase, Lanes lanes, DiverseSelectParams const& p,
    DiverseSelectItem<T> const& item, DiverseSelectScratch const& s)
{
    int32_t const pr = p.protectedTokens;
    int32_t const u = p.tokens - pr;
    int32_t const cf = p.featureChannels;
    int32_t const c = p.channels;
    int32_t const last = diverseSelectPhases(p) - 1;
    // Unprotected token t (0-based after the protected ones).
    auto featureRow = [&](int32_t t) { return item.features + static_cast<int64_t>(pr + t) * cf; };
    auto xRow = [&](int32_t t) { return item.x + static_cast<int64_t>(pr + t) * c; };
    auto similarity = [&](int32_t a, int32_t b) {
        T const* fa = featureRow(a);
        T const* fb = featureRow(b);
        float dot = 0.f;
        for (int32_t ch = 0; ch < cf; ++ch)
        {
            dot += toFloat(fa[ch]) * toFloat(fb[ch]);
        }
        return dot * (s.invNorm[a] * s.invNorm[b]); // symmetric: sim(a,b) == sim(b,a) exactly
    };
    // Update the tokens of every group this lane owns with `score`, then reduce the group to its
    // smallest `closest`, ties to the lowest token (tokens are visited in ascending order).
    auto updateGroups = [&](auto score) {
        for (int32_t g = lanes.id; g < kDiverseSelectGroups; g += lanes.count)
        {
            float best = INFINITY;
            int32_t arg = u;
            for (int32_t t = g; t < u; t += kDiverseSelectGroups)
            {
                float const value = s.selected[t] ? INFINITY : score(t);
                s.closest[t] = value;
                if (arg == u || value < best)
                {
                    best = value;
                    arg = t;
                }
            }
            s.groupMin[g] = best;
            s.groupArg[g] = arg;
        }
    };

    if (phase == 0) // inverse L2 norms of the features, clamped as the op's spec says
    {
        for (int32_t t = lanes.id; t < u; t += lanes.count)
        {
            T const* f = featureRow(t);
            float sum = 0.f;
            for (int32_t ch = 0; ch < cf; ++ch)
            {
                float const v = toFloat(f[ch]);
                sum += v * v;
            }
            s.invNorm[t] = 1.f / fmaxf(sqrtf(sum), 1e-12f);
            s.selected[t] = 0;
        }
    }
    else if (phase == 1) // first-pick score: each token's similarity to its nearest other token
    {
        updateGroups([&](int32_t t) {
            float nearest = -INFINITY;
            for (int32_t v = 0; v < u; ++v)
            {
                nearest = v == t ? nearest : fmaxf(nearest, similarity(t, v));
            }
            return nearest;
        });
    }
    else if (phase < last - 1 && phase % 2 == 0) // reduce the groups to the next pick
    {
        if (lanes.id == 0)
        {
            float best = INFINITY;
            int32_t arg = u;
            for (int32_t g = 0; g < kDiverseSelectGroups; ++g)
            {
                float const value = s.groupMin[g];
                int32_t const t = s.groupArg[g];
                if (t < u && (arg == u || value < best || (value == best && t < arg)))
                {
                    best = value;
                    arg = t;
                }
            }
            s.pick[0] = arg;
            s.selected[arg] = 1;
        }
    }
    else if (phase < last - 1) // closest similarity to the selected set, after the last pick
    {
        int32_t const pick = s.pick[0];
        bool const first = phase == 3;
        updateGroups([&](int32_t t) {
            float const sim = similarity(t, pick);
            return first ? sim : fmaxf(s.closest[t], sim);
        });
    }
    else if (phase == last - 1) // the selected tokens in their original order
    {
        for (int32_t t = lanes.id; t < u; t += lanes.count)
        {
            if (s.selected[t])
            {
                int32_t slot = 0;
                for (int32_t v = 0; v < t; ++v)
                {
                    slot += s.selected[v];
                }
                s.kept[slot] = t;
            }
        }
    }
    else // outputs: the protected tokens, then the selected ones; sizes carried unchanged
    {
        int32_t const rows = diverseSelectOutputTokens(p);
        int64_t const elements = static_cast<int64_t>(rows) * c;
        for (int64_t e = lanes.id; e < elements; e += lanes.count)
        {
            int32_t const row = static_cast<int32_t>(e / c);
            int32_t const ch = static_cast<int32_t>(e % c);
            item.xOut[e] = row < pr ? item.x[e] : xRow(s.kept[row - pr])[ch];
        }
        for (int32_t row = lanes.id; row < rows; row += lanes.count)
        {
            item.sizeOut[row] = row < pr ? item.size[row] : item.size[pr + s.kept[row - pr]];
        }
    }
}

} // namespace trimformer
