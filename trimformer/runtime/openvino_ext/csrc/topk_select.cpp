// TopKSelect's kernel: per batch row, the unprotected tokens ranked by score (stable, descending:
// equal scores keep the lower index first), the first k kept in token order after the protected
// ones, and with fuse the dropped ones summed, weighted by their scores (not renormalised), with
// their sizes summed. fp32 throughout.
#include "topk_select.hpp"

#include <algorithm>
#include <numeric>
#include <vector>

#include <openvino/core/parallel.hpp>

namespace trimformer {

namespace {

// One batch row. x: [N,C], scores: [N], size: [N]; x_out: [p+k+fuse,C], s_out: [p+k+fuse].
void select_row(const float* x, const float* scores, const float* size, size_t n, size_t c,
                size_t k, size_t p, bool fuse, float* x_out, float* s_out) {
    const size_t m = n - p;
    std::vector<size_t> order(m);
    std::iota(order.begin(), order.end(), 0);
    const float* st = scores + p;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return st[a] > st[b]; });
    std::sort(order.begin(), order.begin() + k);  // the kept tokens, in token order

    size_t row = 0;
    auto copy_token = [&](size_t t) {
        std::copy(x + t * c, x + (t + 1) * c, x_out + row * c);
        s_out[row++] = size[t];
    };
    for (size_t t = 0; t < p; ++t) copy_token(t);
    for (size_t i = 0; i < k; ++i) copy_token(p + order[i]);
    if (!fuse) return;
    float* fused = x_out + row * c;
    std::fill(fused, fused + c, 0.f);
    float fused_size = 0.f;
    for (size_t i = k; i < m; ++i) {
        const size_t t = p + order[i];
        const float w = st[order[i]];
        const float* xt = x + t * c;
#pragma omp simd
        for (size_t q = 0; q < c; ++q) fused[q] += w * xt[q];
        fused_size += size[t];
    }
    s_out[row] = fused_size;
}

}  // namespace

TopKSelect::TopKSelect(const ov::OutputVector& args, int64_t k, int64_t protected_tokens,
                       int64_t fuse)
    : Op(args), m_k(k), m_protected(protected_tokens), m_fuse(fuse) {
    constructor_validate_and_infer_types();
}

void TopKSelect::validate_and_infer_types() {
    NODE_VALIDATION_CHECK(this, get_input_size() == 3, "TopKSelect takes x, scores and size");
    NODE_VALIDATION_CHECK(this, m_k >= 1 && m_protected >= 0 && (m_fuse == 0 || m_fuse == 1),
                          "TopKSelect: k must be >= 1, protected >= 0, fuse 0 or 1");
    const auto& x = get_input_partial_shape(0);
    auto x_out = x, s_out = get_input_partial_shape(2);
    if (x.rank().is_static()) {
        NODE_VALIDATION_CHECK(this, x.rank().get_length() == 3, "TopKSelect: x must be [B,N,C]");
        if (x[1].is_static()) {
            const int64_t n = x[1].get_length();
            NODE_VALIDATION_CHECK(this, m_k <= n - m_protected, "TopKSelect: k=", m_k,
                                  " does not fit ", n, " tokens with ", m_protected, " protected");
        }
        x_out[1] = m_protected + m_k + m_fuse;
        s_out = ov::PartialShape{x[0], x_out[1], 1};
    }
    set_output_type(0, ov::element::f32, x_out);
    set_output_type(1, ov::element::f32, s_out);
}

std::shared_ptr<ov::Node> TopKSelect::clone_with_new_inputs(const ov::OutputVector& new_args) const {
    check_new_args_count(this, new_args);
    return std::make_shared<TopKSelect>(new_args, m_k, m_protected, m_fuse);
}

bool TopKSelect::visit_attributes(ov::AttributeVisitor& visitor) {
    visitor.on_attribute("k", m_k);
    visitor.on_attribute("protected", m_protected);
    visitor.on_attribute("fuse", m_fuse);
    return true;
}

bool TopKSelect::has_evaluate() const {
    return get_input_element_type(0) == ov::element::f32;
}

bool TopKSelect::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    const auto& xs = inputs[0].get_shape();
    const size_t batch = xs[0], n = xs[1], c = xs[2];
    const size_t k = static_cast<size_t>(m_k), p = static_cast<size_t>(m_protected);
    const size_t out_tokens = p + k + static_cast<size_t>(m_fuse);
    outputs[0].set_shape({batch, out_tokens, c});
    outputs[1].set_shape({batch, out_tokens, 1});
    const float* x = inputs[0].data<const float>();
    const float* scores = inputs[1].data<const float>();
    const float* size = inputs[2].data<const float>();
    float* x_out = outputs[0].data<float>();
    float* s_out = outputs[1].data<float>();
    ov::parallel_for(batch, [&](size_t b) {
        select_row(x + b * n * c, scores + b * n, size + b * n, n, c, k, p, m_fuse != 0,
                   x_out + b * out_tokens * c, s_out + b * out_tokens);
    });
    return true;
}

}  // namespace trimformer
