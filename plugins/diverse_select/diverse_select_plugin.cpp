#include "diverse_select_plugin.h"

namespace trimformer
{
namespace plugin
{

std::vector<IntField> const& DiverseSelectOp::fields()
{
    static std::vector<IntField> const kFields{
        {"k", 1, kDiverseSelectMaxTokens},
        {"protected", 0, kDiverseSelectMaxTokens},
    };
    return kFields;
}

DiverseSelectParams DiverseSelectOp::params(
    std::vector<int32_t> const& attrs, nvinfer1::Dims const& x, nvinfer1::Dims const& features)
{
    return DiverseSelectParams{dimAsInt32(x.d[0]), dimAsInt32(x.d[1]), dimAsInt32(x.d[2]),
        dimAsInt32(features.d[2]), attrs[kK], attrs[kPROTECTED]};
}

char const* DiverseSelectOp::check(DiverseSelectParams const& params)
{
    return diverseSelectCheck(params);
}

nvinfer1::IDimensionExpr const* DiverseSelectOp::outputTokens(
    nvinfer1::IDimensionExpr const& tokens, std::vector<int32_t> const& attrs, nvinfer1::IExprBuilder& builder)
{
    DiverseSelectParams p{1, kDiverseSelectMaxTokens, 1, 1, attrs[kK], attrs[kPROTECTED]};
    if (tokens.isConstant())
    {
        p.tokens = dimAsInt32(tokens.getConstantValue());
        char const* problem = diverseSelectCheck(p);
        require(problem == nullptr, problem);
    }
    return builder.constant(diverseSelectOutputTokens(p));
}

cudaError_t DiverseSelectOp::launch(KernelDType dtype, DiverseSelectParams const& params, void const* const* inputs,
    void* const* outputs, cudaStream_t stream)
{
    return launchDiverseSelect(
        dtype, params, inputs[kX], inputs[kFEATURES], inputs[kSIZE], outputs[kX_OUT], outputs[kSIZE_OUT], stream);
}

nvinfer1::IPluginCreatorInterface* diverseSelectCreator()
{
    static DiverseSelectPluginCreator creator;
    return &creator;
}

} // namespace plugin
} // namespace trimformer
