// The TopKSelect TensorRT plugin (IPluginV3): name "TopKSelect", version "1", namespace
// "trimformer", attributes k, protected and fuse. See README.md.
#pragma once

#include "../common/reduction_plugin.h"
#include "topk_select_kernel.h"

namespace trimformer
{
namespace plugin
{

//! TopKSelect's traits for ReductionPlugin.
struct TopKSelectOp
{
    static constexpr char const* kNAME = "TopKSelect";
    static constexpr char const* kVERSION = "1";

    // Tensor indices.
    static constexpr int32_t kX = 0;
    static constexpr int32_t kSCORES = 1;
    static constexpr int32_t kSIZE = 2;
    static constexpr int32_t kX_OUT = 0;
    static constexpr int32_t kSIZE_OUT = 1;
    static constexpr int32_t kSECOND = kSCORES;
    static constexpr int32_t kSECOND_RANK = 2;

    // Attribute indices, in the order of fields().
    static constexpr size_t kK = 0;
    static constexpr size_t kPROTECTED = 1;
    static constexpr size_t kFUSE = 2;

    using Params = TopKSelectParams;

    static std::vector<IntField> const& fields();
    static Params params(std::vector<int32_t> const& attrs, nvinfer1::Dims const& x, nvinfer1::Dims const& scores);
    static char const* check(Params const& params);
    static nvinfer1::IDimensionExpr const* outputTokens(
        nvinfer1::IDimensionExpr const& tokens, std::vector<int32_t> const& attrs, nvinfer1::IExprBuilder& builder);
    static cudaError_t launch(KernelDType dtype, Params const& params, void const* const* inputs,
        void* const* outputs, cudaStream_t stream);
};

using TopKSelectPlugin = ReductionPlugin<TopKSelectOp>;
using TopKSelectPluginCreator = ReductionPluginCreator<TopKSelectOp>;

//! The library's one TopKSelect creator.
nvinfer1::IPluginCreatorInterface* topKSelectCreator();

} // namespace plugin
} // namespace trimformer
