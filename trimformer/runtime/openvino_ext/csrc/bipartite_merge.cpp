// BipartiteMerge's kernel: per batch row, cosine scores of A (even indices from the first
// unprotected even one) against B (odd), each A token's first best B, A ranked by it (stable,
// descending), the first r merged into their B by size-weighted average. fp32 throughout: the
// matching decides which tokens survive.
#include "bipartite_merge.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include <openvino/core/parallel.hpp>

namespace trimformer {

namespace {

constexpr float kNormEps = 1e-12f;

struct Shape3 {
    size_t batch, tokens, channels;
};

// One batch row of the merge. x: [N,C], metric: [N,Cm], size: [N]; x_out: [N-r,C], s_out: [N-r].
// Cloned for AVX-512 and AVX2 beside the baseline, picked at load time by the CPU it runs on.
__attribute__((target_clones("avx512f", "avx2", "default"))) void merge_row(const float* x, const float* metric, const float* size, const Shape3& xs,
               size_t metric_channels, size_t r, size_t protected_tokens, float* x_out,
               float* s_out) {
    const size_t n = xs.tokens, c = xs.channels, cm = metric_channels;
    const size_t odd = protected_tokens % 2;
    const size_t a0 = protected_tokens + odd, b0 = protected_tokens + 1 - odd;
    const size_t n_a = a0 < n ? (n - a0 + 1) / 2 : 0;
    const size_t n_b = b0 < n ? (n - b0 + 1) / 2 : 0;

    // The L2-normalised metric, divided as the spec divides (so exact ties stay exact)
    std::vector<float> unit(n * cm);
    for (size_t t = 0; t < n; ++t) {
        const float* m = metric + t * cm;
        float sq = 0.f;
#pragma omp simd reduction(+ : sq)
        for (size_t k = 0; k < cm; ++k) sq += m[k] * m[k];
        const float norm = std::max(std::sqrt(sq), kNormEps);
        for (size_t k = 0; k < cm; ++k) unit[t * cm + k] = m[k] / norm;
    }
    std::vector<float> best(n_a, -INFINITY);
    std::vector<size_t> best_b(n_a, 0);
    for (size_t i = 0; i < n_a; ++i) {
        const float* ua = unit.data() + (a0 + 2 * i) * cm;
        for (size_t j = 0; j < n_b; ++j) {
            const float* ub = unit.data() + (b0 + 2 * j) * cm;
            float score = 0.f;
#pragma omp simd reduction(+ : score)
            for (size_t k = 0; k < cm; ++k) score += ua[k] * ub[k];
            if (score > best[i]) {  // strict: the first maximum wins
                best[i] = score;
                best_b[i] = j;
            }
        }
    }
    std::vector<size_t> order(n_a);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t p, size_t q) { return best[p] > best[q]; });
    std::sort(order.begin() + r, order.end());  // the unmerged A tokens, ascending

    size_t row = 0;
    auto copy_token = [&](size_t t) {
        std::copy(x + t * c, x + (t + 1) * c, x_out + row * c);
        s_out[row++] = size[t];
    };
    for (size_t t = 0; t < protected_tokens; ++t) copy_token(t);
    for (size_t k = r; k < n_a; ++k) copy_token(a0 + 2 * order[k]);

    // B tokens: sum(x·size) and sum(size) over themselves and what merges into them
    float* merged_x = x_out + row * c;
    float* merged_s = s_out + row;
    for (size_t j = 0; j < n_b; ++j) {
        const size_t tb = b0 + 2 * j;
        const float s = size[tb];
        for (size_t k = 0; k < c; ++k) merged_x[j * c + k] = x[tb * c + k] * s;
        merged_s[j] = s;
    }
    for (size_t k = 0; k < r; ++k) {
        const size_t i = order[k], ta = a0 + 2 * i, j = best_b[i];
        const float s = size[ta];
        for (size_t q = 0; q < c; ++q) merged_x[j * c + q] += x[ta * c + q] * s;
        merged_s[j] += s;
    }
    for (size_t j = 0; j < n_b; ++j) {
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
    const Shape3 shape{xs[0], xs[1], xs[2]};
    const size_t cm = inputs[1].get_shape()[2];
    const size_t r = static_cast<size_t>(m_r), p = static_cast<size_t>(m_protected);
    const size_t out_tokens = shape.tokens - r;
    outputs[0].set_shape({shape.batch, out_tokens, shape.channels});
    outputs[1].set_shape({shape.batch, out_tokens, 1});
    const float* x = inputs[0].data<const float>();
    const float* metric = inputs[1].data<const float>();
    const float* size = inputs[2].data<const float>();
    float* x_out = outputs[0].data<float>();
    float* s_out = outputs[1].data<float>();
    ov::parallel_for(shape.batch, [&](size_t b) {
        merge_row(x + b * shape.tokens * shape.channels, metric + b * shape.tokens * cm,
                  size + b * shape.tokens, shape, cm, r, p, x_out + b * out_tokens * shape.channels,
                  s_out + b * out_tokens);
    });
    return true;
}

}  // namespace trimformer
