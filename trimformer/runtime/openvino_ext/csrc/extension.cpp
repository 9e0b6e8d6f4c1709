// The extension library: trimformer's ops, and the ONNX-frontend mapping of each
// trimformer-domain node to its op (attributes of the same names).
#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/frontend/onnx/extension/op.hpp>

#include "bipartite_merge.hpp"
#include "diverse_select.hpp"
#include "topk_select.hpp"

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({
    std::make_shared<ov::OpExtension<trimformer::BipartiteMerge>>(),
    std::make_shared<ov::frontend::onnx::OpExtension<trimformer::BipartiteMerge>>(
        "BipartiteMerge", "trimformer",
        std::map<std::string, std::string>{{"r", "r"}, {"protected", "protected"}}),
    std::make_shared<ov::OpExtension<trimformer::TopKSelect>>(),
    std::make_shared<ov::frontend::onnx::OpExtension<trimformer::TopKSelect>>(
        "TopKSelect", "trimformer",
        std::map<std::string, std::string>{{"k", "k"}, {"protected", "protected"}, {"fuse", "fuse"}}),
    std::make_shared<ov::OpExtension<trimformer::DiverseSelect>>(),
    std::make_shared<ov::frontend::onnx::OpExtension<trimformer::DiverseSelect>>(
        "DiverseSelect", "trimformer",
        std::map<std::string, std::string>{{"k", "k"}, {"protected", "protected"}}),
}));
