// BipartiteMerge (trimformer op version 2) as an OpenVINO op: ToMe's bipartite soft matching with
// a size-weighted average merge. Semantics: trimformer/ops/bipartite_merge.py (the spec).
#pragma once

#include <openvino/op/op.hpp>

namespace trimformer {

class BipartiteMerge : public ov::op::Op {
public:
    // The version in the type's version string is the trimformer op version this implements.
    OPENVINO_OP("BipartiteMerge", "trimformer_v2");

    BipartiteMerge() = default;
    BipartiteMerge(const ov::OutputVector& args, int64_t r, int64_t protected_tokens);

    void validate_and_infer_types() override;
    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& new_args) const override;
    bool visit_attributes(ov::AttributeVisitor& visitor) override;
    bool has_evaluate() const override;
    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;

private:
    int64_t m_r = 0;
    int64_t m_protected = 0;
};

}  // namespace trimformer
