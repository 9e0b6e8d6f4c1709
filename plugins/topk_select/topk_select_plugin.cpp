#include "topk_select_plugin.h"

namespace trimformer
{
namespace plugin
{

std::vector<IntField> const& TopKSelectOp::fields()
{
    static std::vector<IntField> const kFields{
        {"k", 1, kTopKSelectMaxTokens},
        {"protected", 0, kTopKSelectMaxTokens},
        {"fuse", 0, 1},
    };
    return kFields;
}

TopKSelectParams TopKSelectOp::params(std::vector<int32_t> const& attrs, nvinfer1::Dims const& x, nvinfer1::Dims const&)
{
    return TopKSelectParams{dimAsInt32(x.d[0]), dimAsInt32(x.d[1]), dimAsInt32(x.d[2]), attrs[kK], attrs[kPROTECTED],
        attrs[kFUSE]};
}

char const* TopKSelectOp::check(TopKSelectParams const& params)
{
    return topKSelectCheck(params);
}

nvinfer1::IDimensionExpr const* TopKSelectOp::outputTokens(
    nvinfer1::IDimensionExpr const& tokens, std::vector<int32_t> const& attrs, nvinfer1::IExprBuilder& builder)
{
    TopKSelectParams p{1, kTopKSelectMaxTokens, 1, attrs[kK], attrs[kPROTECTED], attrs[kFUSE]};
    if (tokens.isConstant())
    {
        p.tokens = dimAsInt32(tokens.getConstantValue());
        char const* problem = topKSelectCheck(p);
        require(problem == nullptr, problem);
    }
    return builder.constant(topKSelectOutputTokens(p));
}

cudaError_t TopKSelectOp::launch(KernelDType dtype, TopKSelectParams const& params, void const* const* inputs,
    void* const* outputs, cudaStream_t stream)
{
    return launchTopKSelect(
        dtype, params, inputs[kX], inputs[kSCORES], inputs[kSIZE], outputs[kX_OUT], outputs[kSIZE_OUT], stream);
}

nvinfer1::IPluginCreatorInterface* topKSelectCreator()
{
    static TopKSelectPluginCreator creator;
    return &creator;
}

} // namespace plugin
} // namespace trimformer
