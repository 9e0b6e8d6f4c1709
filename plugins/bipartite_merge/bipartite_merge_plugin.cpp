#include "bipartite_merge_plugin.h"

namespace trimformer
{
namespace plugin
{

std::vector<IntField> const& BipartiteMergeOp::fields()
{
    static std::vector<IntField> const kFields{
        {"r", 0, kBipartiteMergeMaxTokens / 2},
        {"protected", 0, kBipartiteMergeMaxTokens},
    };
    return kFields;
}

BipartiteMergeParams BipartiteMergeOp::params(
    std::vector<int32_t> const& attrs, nvinfer1::Dims const& x, nvinfer1::Dims const& metric)
{
    return BipartiteMergeParams{dimAsInt32(x.d[0]), dimAsInt32(x.d[1]), dimAsInt32(x.d[2]),
        dimAsInt32(metric.d[2]), attrs[kR], attrs[kPROTECTED]};
}

char const* BipartiteMergeOp::check(BipartiteMergeParams const& params)
{
    return bipartiteMergeCheck(params);
}

nvinfer1::IDimensionExpr const* BipartiteMergeOp::outputTokens(
    nvinfer1::IDimensionExpr const& tokens, std::vector<int32_t> const& attrs, nvinfer1::IExprBuilder& builder)
{
    if (tokens.isConstant())
    {
        BipartiteMergeParams const p{1, dimAsInt32(tokens.getConstantValue()), 1, 1, attrs[kR], attrs[kPROTECTED]};
        char const* problem = bipartiteMergeCheck(p);
        require(problem == nullptr, problem);
        return builder.constant(bipartiteMergeOutputTokens(p));
    }
    return builder.operation(nvinfer1::DimensionOperation::kSUB, tokens, *builder.constant(attrs[kR]));
}

cudaError_t BipartiteMergeOp::launch(KernelDType dtype, BipartiteMergeParams const& params, void const* const* inputs,
    void* const* outputs, cudaStream_t stream)
{
    return launchBipartiteMerge(dtype, params, inputs[kX], inputs[kMETRIC], inputs[kSIZE], outputs[kX_OUT],
        outputs[kSIZE_OUT], stream);
}

nvinfer1::IPluginCreatorInterface* bipartiteMergeCreator()
{
    static BipartiteMergePluginCreator creator;
    return &creator;
}

} // namespace plugin
} // namespace trimformer
