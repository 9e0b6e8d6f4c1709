// What trimformer's three ops share as OpenVINO ops: inputs x [B,N,C], a per-token tensor
// [B,N,...] (metric, scores or features) and size [B,N,1]; outputs x_out [B,M,C] and
// size_out [B,M,1], fp32; each batch row computed on its own, the rows in parallel.
#pragma once

#include <algorithm>
#include <cstddef>

#include <openvino/core/node.hpp>
#include <openvino/core/parallel.hpp>
#include <openvino/runtime/tensor.hpp>

namespace trimformer {

// x's token dimension N (dynamic where unknown), after checking that the op has its three
// inputs and that x, where its rank is known, is [B,N,C].
inline ov::Dimension input_tokens(ov::Node* node) {
    const auto& name = node->get_type_info().name;
    NODE_VALIDATION_CHECK(node, node->get_input_size() == 3, name, " takes three inputs");
    const auto& x = node->get_input_partial_shape(0);
    if (x.rank().is_dynamic()) return ov::Dimension::dynamic();
    NODE_VALIDATION_CHECK(node, x.rank().get_length() == 3, name, ": x must be [B,N,C]");
    return x[1];
}

// The outputs' types: x_out [B,tokens,C] and size_out [B,tokens,1], fp32 (the inputs' shapes
// where x's rank is unknown).
inline void set_token_outputs(ov::Node* node, const ov::Dimension& tokens) {
    auto x_out = node->get_input_partial_shape(0), s_out = node->get_input_partial_shape(2);
    if (x_out.rank().is_static()) {
        x_out[1] = tokens;
        s_out = ov::PartialShape{x_out[0], tokens, 1};
    }
    node->set_output_type(0, ov::element::f32, x_out);
    node->set_output_type(1, ov::element::f32, s_out);
}

// Whether the op can evaluate these inputs: its kernels are fp32.
inline bool evaluates_f32(const ov::Node* node) {
    return node->get_input_element_type(0) == ov::element::f32;
}

// One batch row's inputs and outputs. x: [n,c], aux: [n,aux_channels], size: [n];
// x_out: [out_tokens,c], s_out: [out_tokens].
struct TokenRow {
    size_t n, c, aux_channels;
    const float* x;
    const float* aux;
    const float* size;
    float* x_out;
    float* s_out;

    // Appends token t (its x row and size) to the outputs, at row `written`.
    void copy_token(size_t t, size_t& written) const {
        std::copy(x + t * c, x + (t + 1) * c, x_out + written * c);
        s_out[written++] = size[t];
    }
};

// Shapes the outputs to out_tokens per row and runs row_fn(TokenRow) for every batch row, the
// rows in parallel.
template <class RowFn>
void for_each_row(ov::TensorVector& outputs, const ov::TensorVector& inputs, size_t out_tokens,
                  RowFn row_fn) {
    const auto& xs = inputs[0].get_shape();
    const size_t batch = xs[0], n = xs[1], c = xs[2];
    const size_t aux_channels = batch > 0 && n > 0 ? inputs[1].get_size() / (batch * n) : 0;
    outputs[0].set_shape({batch, out_tokens, c});
    outputs[1].set_shape({batch, out_tokens, 1});
    const float* x = inputs[0].data<const float>();
    const float* aux = inputs[1].data<const float>();
    const float* size = inputs[2].data<const float>();
    float* x_out = outputs[0].data<float>();
    float* s_out = outputs[1].data<float>();
    ov::parallel_for(batch, [&](size_t b) {
        row_fn(TokenRow{n, c, aux_channels, x + b * n * c, aux + b * n * aux_channels,
                        size + b * n, x_out + b * out_tokens * c, s_out + b * out_tokens});
    });
}

}  // namespace trimformer
