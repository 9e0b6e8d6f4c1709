// DiverseSelect (trimformer op version 1) as an OpenVINO op: keep k unprotected tokens chosen
// greedily for max-min cosine diversity (DivPrune), in their order. Semantics:
// trimformer/ops/diverse_select.py (the spec).
#pragma once

#include <openvino/op/op.hpp>

namespace trimformer {

class DiverseSelect : public ov::op::Op {
public:
    // The version in the type's version string is the trimformer op version this implements.
    OPENVINO_OP("DiverseSelect", "trimformer_v1");

    DiverseSelect() = default;
    DiverseSelect(const ov::OutputVector& args, int64_t k, int64_t protected_tokens);

    void validate_and_infer_types() override;
    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& new_args) const override;
    bool visit_attributes(ov::AttributeVisitor& visitor) override;
    bool has_evaluate() const override;
    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;

private:
    int64_t m_k = 1;
    int64_t m_protected = 0;
};

}  // namespace trimformer
