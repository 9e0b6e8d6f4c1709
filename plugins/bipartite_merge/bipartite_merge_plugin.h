// The BipartiteMerge TensorRT plugin (IPluginV3): name "BipartiteMerge", version "2",
// namespace "trimformer", attributes r and protected. See README.md.
#pragma once

#include "../common/reduction_plugin.h"
#include "bipartite_merge_kernel.h"

namespace trimformer
{
namespace plugin
{

//! BipartiteMerge's traits for ReductionPlugin.
struct BipartiteMergeOp
{
    static constexpr char const* kNAME = "BipartiteMerge";
    static constexpr char const* kVERSION = "2";

    // Tensor indices.
    static constexpr int32_t kX = 0;
    static constexpr int32_t kMETRIC = 1;
    static constexpr int32_t kSIZE = 2;
    static constexpr int32_t kX_OUT = 0;
    static constexpr int32_t kSIZE_OUT = 1;
    static constexpr int32_t kSECOND = kMETRIC;
    static constexpr int32_t kSECOND_RANK = 3;

    // Attribute indices, in the order of fields().
    static constexpr size_t kR = 0;
    static constexpr size_t kPROTECTED = 1;

    using Params = BipartiteMergeParams;

    static std::vector<IntField> const& fields();
    static Params params(std::vector<int32_t> const& attrs, nvinfer1::Dims const& x, nvinfer1::Dims const& metric);
    static char const* check(Params const& params);
    static nvinfer1::IDimensionExpr const* outputTokens(
        nvinfer1::IDimensionExpr const& tokens, std::vector<int32_t> const& attrs, nvinfer1::IExprBuilder& builder);
    static cudaError_t launch(KernelDType dtype, Params const& params, void const* const* inputs,
        void* const* outputs, cudaStream_t stream);
};

using BipartiteMergePlugin = ReductionPlugin<BipartiteMergeOp>;
using BipartiteMergePluginCreator = ReductionPluginCreator<BipartiteMergeOp>;

//! The library's one BipartiteMerge creator.
nvinfer1::IPluginCreatorInterface* bipartiteMergeCreator();

} // namespace plugin
} // namespace trimformer
