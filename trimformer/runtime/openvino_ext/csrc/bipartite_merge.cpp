// BipartiteMerge's kernel: per batch row, cosine scores of A (even indices from the first
// unprotected even one) against B (odd), each A token's first best B, A ranked by it (stable,
// descending), the first r merged into their B by size-weighted average. fp32 throughout: the
// matching decides which tokens survive.
//
// Per row: the metric L2-normalised (A row-major, B transposed), each A token's best B from
// similarity tiles (similarity.hpp), then the ranking and the merge. Rows run in
// parallel; within a row, splitting the tiles over threads cost more than it saved at batch 1
// (2-thread Xeon: 15 vs 9 us at 54 tokens, equal at 197).
#include "bipartite_merge.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <tuple>
#include <utility>
#include <vector>

#include "similarity.hpp"
#include "token_op.hpp"

namespace trimformer {

namespace {

// Where A and B lie in one row of n tokens with p protected (the spec's split).
struct Split {
    size_t a0, b0, n_a, n_b;

    Split(size_t n, size_t p) {
        const size_t odd = p % 2;
        a0 = p + odd;
        b0 = p + 1 - odd;
        n_a = a0 < n ? (n - a0 + 1) / 2 : 0;
        n_b = b0 < n ? (n - b0 + 1) / 2 : 0;
    }
};

// The first j < n_b of the maximum of scores[0:n_b], and that maximum.
std::pair<size_t, float> first_max(const float* scores, size_t n_b) {
    size_t arg = 0;
    float top = -INFINITY;
    for (size_t j = 0; j < n_b; ++j) {
        if (scores[j] > top) {  // strict: the first maximum wins
            top = scores[j];
            arg = j;
        }
    }
    return {arg, top};
}

// Each A token's first best B and its score. metric: [N,Cm] of one row.
void match_row(const float* metric, size_t n, size_t cm, size_t p, const Split& ab, float* best,
               size_t* best_b) {
    // The unit metric: A as padded [a_pad, cm] rows, B transposed to padded [cm, b_pad].
    const size_t a_pad = padded(ab.n_a, kTileRows), b_pad = padded(ab.n_b, kTileLanes);
    std::vector<float> unit_a(a_pad * cm, 0.f), unit_bt(cm * b_pad, 0.f);
    std::vector<float> scores(kTileRows * b_pad);
    for (size_t t = p; t < n; ++t) {
        if (t >= ab.a0 && (t - ab.a0) % 2 == 0)
            write_unit(metric + t * cm, cm, unit_a.data() + (t - ab.a0) / 2 * cm, 1);
        else
            write_unit(metric + t * cm, cm, unit_bt.data() + (t - ab.b0) / 2, b_pad);
    }
    for (size_t i0 = 0; i0 < ab.n_a; i0 += kTileRows) {
        score_tile(unit_a.data() + i0 * cm, unit_bt.data(), cm, b_pad, scores.data());
        for (size_t i = i0; i < std::min(i0 + kTileRows, ab.n_a); ++i)
            std::tie(best_b[i], best[i]) = first_max(scores.data() + (i - i0) * b_pad, ab.n_b);
    }
}

// One batch row of the merge (aux: the metric); x_out: [N-r,C].
void merge_row(const TokenRow& row, size_t r, size_t p) {
    const size_t n = row.n, c = row.c;
    const float *x = row.x, *size = row.size;
    const Split ab(n, p);
    std::vector<float> best(ab.n_a);
    std::vector<size_t> best_b(ab.n_a);
    match_row(row.aux, n, row.aux_channels, p, ab, best.data(), best_b.data());
    std::vector<size_t> order(ab.n_a);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t i, size_t j) { return best[i] > best[j]; });
    std::sort(order.begin() + r, order.end());  // the unmerged A tokens, ascending

    size_t written = 0;
    for (size_t t = 0; t < p; ++t) row.copy_token(t, written);
    for (size_t k = r; k < ab.n_a; ++k) row.copy_token(ab.a0 + 2 * order[k], written);

    // B tokens: sum(x·size) and sum(size) over themselves and what merges into them
    float* merged_x = row.x_out + written * c;
    float* merged_s = row.s_out + written;
    for (size_t j = 0; j < ab.n_b; ++j) {
        const size_t tb = ab.b0 + 2 * j;
        const float s = size[tb];
        for (size_t q = 0; q < c; ++q) merged_x[j * c + q] = x[tb * c + q] * s;
        merged_s[j] = s;
    }
    for (size_t k = 0; k < r; ++k) {
        const size_t i = order[k], ta = ab.a0 + 2 * i, j = best_b[i];
        const float s = size[ta];
        for (size_t q = 0; q < c; ++q) merged_x[j * c + q] += x[ta * c + q] * s;
        merged_s[j] += s;
    }
    for (size_t j = 0; j < ab.n_b; ++j) {
        const float inv = 1.f / merged_s[j];
        for (size_t q = 0; q < c; ++q) merged_x[j * c + q] *= inv;
    }
}

}  // namespace

BipartiteMerge::BipartiteMerge(const ov::OutputVector& args, int64_t r, int64_t protected_tokens)
    : Op(args), m_r(r), m_protected(protected_tokens) {
    constructor_validate_and_infer_types();
}

void BipartiteMerge::validate_and_infer_types() {
    NODE_VALIDATION_CHECK(this, m_r >= 0 && m_protected >= 0,
                          "BipartiteMerge: r and protected must be >= 0");
    const auto tokens = input_tokens(this);
    auto out = ov::Dimension::dynamic();
    if (tokens.is_static()) {
        const int64_t n = tokens.get_length();
        NODE_VALIDATION_CHECK(this, n - m_protected >= 2 && m_r <= (n - m_protected) / 2,
                              "BipartiteMerge: r=", m_r, " does not fit ", n, " tokens with ",
                              m_protected, " protected");
        out = n - m_r;
    }
    set_token_outputs(this, out);
}

std::shared_ptr<ov::Node> BipartiteMerge::clone_with_new_inputs(
    const ov::OutputVector& new_args) const {
    check_new_args_count(this, new_args);
    return std::make_shared<BipartiteMerge>(new_args, m_r, m_protected);
}

bool BipartiteMerge::visit_attributes(ov::AttributeVisitor& visitor) {
    visitor.on_attribute("r", m_r);
    visitor.on_attribute("protected", m_protected);
    return true;
}

bool BipartiteMerge::has_evaluate() const { return evaluates_f32(this); }

bool BipartiteMerge::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    const size_t r = static_cast<size_t>(m_r), p = static_cast<size_t>(m_protected);
    for_each_row(outputs, inputs, inputs[0].get_shape()[1] - r,
                 [&](const TokenRow& row) { merge_row(row, r, p); });
    return true;
}

}  // namespace trimformer
