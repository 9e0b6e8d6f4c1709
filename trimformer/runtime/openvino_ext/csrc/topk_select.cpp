// TopKSelect's kernel: per batch row, the unprotected tokens ranked by score (stable, descending:
// equal scores keep the lower index first), the first k kept in token order after the protected
// ones, and with fuse the dropped ones summed, weighted by their scores (not renormalised), with
// their sizes summed. fp32 throughout.
#include "topk_select.hpp"

#include <algorithm>
#include <numeric>
#include <vector>

#include "token_op.hpp"

namespace trimformer {

namespace {

// One batch row (aux: the scores, [N]); x_out: [p+k+fuse,C].
void select_row(const TokenRow& row, size_t k, size_t p, bool fuse) {
    const size_t m = row.n - p, c = row.c;
    std::vector<size_t> order(m);
    std::iota(order.begin(), order.end(), 0);
    const float* st = row.aux + p;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return st[a] > st[b]; });
    std::sort(order.begin(), order.begin() + k);  // the kept tokens, in token order

    size_t written = 0;
    for (size_t t = 0; t < p; ++t) row.copy_token(t, written);
    for (size_t i = 0; i < k; ++i) row.copy_token(p + order[i], written);
    if (!fuse) return;
    float* fused = row.x_out + written * c;
    std::fill(fused, fused + c, 0.f);
    float fused_size = 0.f;
    for (size_t i = k; i < m; ++i) {
        const size_t t = p + order[i];
        const float w = st[order[i]];
        const float* xt = row.x + t * c;
#pragma omp simd
        for (size_t q = 0; q < c; ++q) fused[q] += w * xt[q];
        fused_size += row.size[t];
    }
    row.s_out[written] = fused_size;
}

}  // namespace

TopKSelect::TopKSelect(const ov::OutputVector& args, int64_t k, int64_t protected_tokens,
                       int64_t fuse)
    : Op(args), m_k(k), m_protected(protected_tokens), m_fuse(fuse) {
    constructor_validate_and_infer_types();
}

void TopKSelect::validate_and_infer_types() {
    NODE_VALIDATION_CHECK(this, m_k >= 1 && m_protected >= 0 && (m_fuse == 0 || m_fuse == 1),
                          "TopKSelect: k must be >= 1, protected >= 0, fuse 0 or 1");
    const auto tokens = input_tokens(this);
    if (tokens.is_static()) {
        const int64_t n = tokens.get_length();
        NODE_VALIDATION_CHECK(this, m_k <= n - m_protected, "TopKSelect: k=", m_k,
                              " does not fit ", n, " tokens with ", m_protected, " protected");
    }
    set_token_outputs(this, m_protected + m_k + m_fuse);
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

bool TopKSelect::has_evaluate() const { return evaluates_f32(this); }

bool TopKSelect::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    const size_t k = static_cast<size_t>(m_k), p = static_cast<size_t>(m_protected);
    for_each_row(outputs, inputs, p + k + static_cast<size_t>(m_fuse),
                 [&](const TokenRow& row) { select_row(row, k, p, m_fuse != 0); });
    return true;
}

}  // namespace trimformer
