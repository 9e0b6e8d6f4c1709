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

#include <openvino/core/parallel.hpp>

#include "similarity.hpp"

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

// One batch row of the merge. x: [N,C], metric: [N,Cm], size: [N]; x_out: [N-r,C], s_out: [N-r].
void merge_row(const float* x, const float* metric, const float* size, size_t n, size_t c,
               size_t cm, size_t r, size_t p, float* x_out, float* s_out) {
    const Split ab(n, p);
    std::vector<float> best(ab.n_a);
    std::vector<size_t> best_b(ab.n_a);
    match_row(metric, n, cm, p, ab, best.data(), best_b.data());
    std::vector<size_t> order(ab.n_a);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t i, size_t j) { return best[i] > best[j]; });
    std::sort(order.begin() + r, order.end());  // the unmerged A tokens, ascending

    size_t row = 0;
    auto copy_token = [&](size_t t) {
        std::copy(x + t * c, x + (t + 1) * c, x_out + row * c);
        s_out[row++] = size[t];
    };
    for (size_t t = 0; t < p; ++t) copy_token(t);
    for (size_t k = r; k < ab.n_a; ++k) copy_token(ab.a0 + 2 * order[k]);

    // B tokens: sum(x·size) and sum(size) over themselves and what merges into them
    float* merged_x = x_out + row * c;
    float* merged_s = s_out + row;
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
    NODE_VALIDATION_CHECK(this, get_input_size() == 3, "BipartiteMerge takes x, metric and size");
    NODE_VALIDATION_CHECK(this, m_r >= 0 && m_protected >= 0,
                          "BipartiteMerge: r and protected must be >= 0");
    const auto& x = get_input_partial_shape(0);
    auto x_out = x, s_out = get_input_partial_shape(2);
    if (x.rank().is_static()) {
        NODE_VALIDATION_CHECK(this, x.rank().get_length() == 3, "BipartiteMerge: x must be [B,N,C]");
        const auto& tokens = x[1];
        if (tokens.is_static()) {
            const int64_t n = tokens.get_length();
            NODE_VALIDATION_CHECK(this, n - m_protected >= 2 && m_r <= (n - m_protected) / 2,
                                  "BipartiteMerge: r=", m_r, " does not fit ", n, " tokens with ",
                                  m_protected, " protected");
            x_out[1] = n - m_r;
        } else {
            x_out[1] = ov::Dimension::dynamic();
        }
        s_out = ov::PartialShape{x[0], x_out[1], 1};
    }
    set_output_type(0, ov::element::f32, x_out);
    set_output_type(1, ov::element::f32, s_out);
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

bool BipartiteMerge::has_evaluate() const {
    return get_input_element_type(0) == ov::element::f32;
}

bool BipartiteMerge::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    const auto& xs = inputs[0].get_shape();
    const size_t batch = xs[0], n = xs[1], c = xs[2], cm = inputs[1].get_shape()[2];
    const size_t r = static_cast<size_t>(m_r), p = static_cast<size_t>(m_protected);
    const size_t out_tokens = n - r;
    outputs[0].set_shape({batch, out_tokens, c});
    outputs[1].set_shape({batch, out_tokens, 1});
    const float* x = inputs[0].data<const float>();
    const float* metric = inputs[1].data<const float>();
    const float* size = inputs[2].data<const float>();
    float* x_out = outputs[0].data<float>();
    float* s_out = outputs[1].data<float>();
    ov::parallel_for(batch, [&](size_t b) {
        merge_row(x + b * n * c, metric + b * n * cm, size + b * n, n, c, cm, r, p,
                  x_out + b * out_tokens * c, s_out + b * out_tokens);
    });
    return true;
}

}  // namespace trimformer
