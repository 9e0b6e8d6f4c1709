// The DiverseSelect TensorRT plugin (IPluginV3): name "DiverseSelect", version "1", namespace
// "trimformer", attributes k and protected. See README.md.
#pragma once

#include "../common/reduction_plugin.h"
#include "diverse_select_kernel.h"

namespace trimformer
{
namespace plugin
{

//! DiverseSelect's traits for ReductionPlugin.
struct DiverseSelectOp
{
    static constexpr char const* kNAME = "DiverseSelect";
    static constexpr char const* kVERSION = "1";

    // Tensor indices.
    static constexpr int32_t kX = 0;
    static constexpr int32_t kFEATURES = 1;
    static constexpr int32_t kSIZE = 2;
    static constexpr int32_t kX_OUT = 0;
    static constexpr int32_t kSIZE_OUT = 1;
    static constexpr int32_t kSECOND = kFEATURES;
    static constexpr int32_t kSECOND_RANK = 3;

    // Attribute indices, in the order of fields().
    static constexpr size_t kK = 0;
    static constexpr size_t kPROTECTED = 1;

    using Params = DiverseSelectParams;

    static std::vector<IntField> const& fields();
    static Params params(std::vector<int32_t> const& attrs, nvinfer1::Dims const& x, nvinfer1::Dims const& features);
    static char const* check(Params const& params);
    static nvinfer1::IDimensionExpr const* outputTokens(
        nvinfer1::IDimensionExpr const& tokens, std::vector<int32_t> const& attrs, nvinfer1::IExprBuilder& builder);
    static cudaError_t launch(KernelDType dtype, Params const& params, void const* const* inputs,
        void* const* outputs, cudaStream_t stream);
};

using DiverseSelectPlugin = ReductionPlugin<DiverseSelectOp>;
using DiverseSelectPluginCreator = ReductionPluginCreator<DiverseSelectOp>;

//! The library's one DiverseSelect creator.
nvinfer1::IPluginCreatorInterface* diverseSelectCreator();

} // namespace plugin
} // namespace trimformer
