// DiverseSelect's kernel: per batch row, the M = N-p unprotected tokens' cosine similarities
// (similarity tiles, computed once), the first pick the token whose most similar other token is
// least similar, then k-1 times the unselected token least similar to the selected set (its
// highest similarity to a selected token); every choice the lowest index among equals. Max-min
// distance is min-max similarity, as the spec computes it. The protected tokens, then the
// selected ones in token order, sizes carried. fp32 throughout.
#include "diverse_select.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "similarity.hpp"
#include "token_op.hpp"

namespace trimformer {

namespace {

// The [M, m_pad] similarities of one row's unprotected features (features: [M, cf];
// m_pad: M padded to whole tile columns).
std::vector<float> similarities(const float* features, size_t m, size_t cf, size_t m_pad) {
    const size_t rows = padded(m, kTileRows);
    std::vector<float> unit(rows * cf, 0.f), unit_t(cf * m_pad, 0.f), sim(rows * m_pad);
    for (size_t t = 0; t < m; ++t) {
        write_unit(features + t * cf, cf, unit.data() + t * cf, 1);
        write_unit(features + t * cf, cf, unit_t.data() + t, m_pad);
    }
    for (size_t i0 = 0; i0 < m; i0 += kTileRows)
        score_tile(unit.data() + i0 * cf, unit_t.data(), cf, m_pad, sim.data() + i0 * m_pad);
    return sim;
}

// One batch row (aux: the features, [N,Cf]); x_out: [p+k,C].
void select_row(const TokenRow& row, size_t k, size_t p) {
    const size_t m = row.n - p, cf = row.aux_channels, m_pad = padded(m, kTileLanes);
    const std::vector<float> sim = similarities(row.aux + p * cf, m, cf, m_pad);
    auto row_of = [&](size_t i) { return sim.data() + i * m_pad; };

    // The first pick: the lowest most-similar-other similarity (a lone token: -inf, picked).
    size_t pick = 0;
    float lowest = INFINITY;
    for (size_t i = 0; i < m; ++i) {
        float nearest = -INFINITY;
        for (size_t j = 0; j < m; ++j)
            if (j != i) nearest = std::max(nearest, row_of(i)[j]);
        if (nearest < lowest) {  // strict: the lowest index among equals
            lowest = nearest;
            pick = i;
        }
    }
    std::vector<char> selected(m, 0);
    std::vector<float> closest(row_of(pick), row_of(pick) + m);  // highest similarity to the set
    selected[pick] = 1;
    for (size_t step = 1; step < k; ++step) {
        bool found = false;
        float least = 0.f;
        for (size_t j = 0; j < m; ++j) {
            if (!selected[j] && (!found || closest[j] < least)) {  // strict: the lowest index
                found = true;
                least = closest[j];
                pick = j;
            }
        }
        selected[pick] = 1;
        const float* added = row_of(pick);
        for (size_t j = 0; j < m; ++j) closest[j] = std::max(closest[j], added[j]);
    }

    size_t written = 0;
    for (size_t t = 0; t < p; ++t) row.copy_token(t, written);
    for (size_t j = 0; j < m; ++j)
        if (selected[j]) row.copy_token(p + j, written);
}

}  // namespace

DiverseSelect::DiverseSelect(const ov::OutputVector& args, int64_t k, int64_t protected_tokens)
    : Op(args), m_k(k), m_protected(protected_tokens) {
    constructor_validate_and_infer_types();
}

void DiverseSelect::validate_and_infer_types() {
    NODE_VALIDATION_CHECK(this, m_k >= 1 && m_protected >= 0,
                          "DiverseSelect: k must be >= 1 and protected >= 0");
    const auto tokens = input_tokens(this);
    if (tokens.is_static()) {
        const int64_t n = tokens.get_length();
        NODE_VALIDATION_CHECK(this, m_k <= n - m_protected, "DiverseSelect: k=", m_k,
                              " does not fit ", n, " tokens with ", m_protected, " protected");
    }
    set_token_outputs(this, m_protected + m_k);
}

std::shared_ptr<ov::Node> DiverseSelect::clone_with_new_inputs(
    const ov::OutputVector& new_args) const {
    check_new_args_count(this, new_args);
    return std::make_shared<DiverseSelect>(new_args, m_k, m_protected);
}

bool DiverseSelect::visit_attributes(ov::AttributeVisitor& visitor) {
    visitor.on_attribute("k", m_k);
    visitor.on_attribute("protected", m_protected);
    return true;
}

bool DiverseSelect::has_evaluate() const { return evaluates_f32(this); }

bool DiverseSelect::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    const size_t k = static_cast<size_t>(m_k), p = static_cast<size_t>(m_protected);
    for_each_row(outputs, inputs, p + k, [&](const TokenRow& row) { select_row(row, k, p); });
    return true;
}

}  // namespace trimformer
