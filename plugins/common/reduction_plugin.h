// The IPluginV3 implementation shared by the token-reduction plugins. Every op has the same
// face: inputs (x [B,N,C], a per-token second input, size [B,N,1]), outputs (x_out [B,M,C],
// size_out [B,M,1]), scalar integer attributes, one kernel launcher. An op supplies a traits
// struct (see bipartite_merge_plugin.h) and gets a plugin and its creator from these templates.
//
// Every noexcept method runs its body through `guarded`, which catches any exception, logs it
// through TensorRT's logger with the plugin's and the method's name, and returns an error value.
#pragma once

#include "plugin_common.h"

#include <cuda_runtime_api.h>

#include <exception>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace trimformer
{
namespace plugin
{

//! Run `body` and return its result; on an exception log it and return `onError`.
template <typename Op, typename R, typename Body>
R guarded(char const* where, R onError, Body&& body) noexcept
{
    try
    {
        return body();
    }
    catch (std::exception const& e)
    {
        logError(Op::kNAME, where, e.what());
    }
    catch (...)
    {
        logError(Op::kNAME, where, "unknown exception");
    }
    return onError;
}

/*!
 * Op traits required by ReductionPlugin:
 *   kNAME                                      plugin name (= the op's name in the registry)
 *   kVERSION                                   plugin version (= the op's version there)
 *   kX, kSECOND, kSIZE, kX_OUT, kSIZE_OUT      tensor indices; kSECOND_RANK the second input's rank
 *   Params                                     the kernel's parameter struct
 *   fields()                                   the attributes, in order
 *   params(attrs, xDims, secondDims)           kernel parameters for concrete shapes
 *   check(params)                              why params cannot run, or nullptr
 *   outputTokens(n, attrs, builder)            M as an expression of N (throws when N is known and bad)
 *   launch(dtype, params, inputs, outputs, s)  the kernel launcher
 */
template <typename Op>
class ReductionPlugin : public nvinfer1::IPluginV3,
                        public nvinfer1::IPluginV3OneCore,
                        public nvinfer1::IPluginV3OneBuild,
                        public nvinfer1::IPluginV3OneRuntime
{
public:
    static constexpr int32_t kNB_INPUTS = 3;
    static constexpr int32_t kNB_OUTPUTS = 2;

    explicit ReductionPlugin(std::vector<int32_t> attrs)
        : mAttrs(std::move(attrs))
    {
    }

    //! Copies the attributes; the serialised field collection is rebuilt on demand.
    ReductionPlugin(ReductionPlugin const& other)
        : mAttrs(other.mAttrs)
    {
    }

    ReductionPlugin& operator=(ReductionPlugin const&) = delete;
    ~ReductionPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override
    {
        return guarded<Op>("getCapabilityInterface", static_cast<nvinfer1::IPluginCapability*>(nullptr),
            [&]() -> nvinfer1::IPluginCapability* {
                switch (type)
                {
                case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
                case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
                case nvinfer1::PluginCapabilityType::kRUNTIME:
                    return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
                }
                return nullptr;
            });
    }

    nvinfer1::IPluginV3* clone() noexcept override
    {
        return guarded<Op>("clone", static_cast<nvinfer1::IPluginV3*>(nullptr),
            [&]() -> nvinfer1::IPluginV3* { return new ReductionPlugin(*this); });
    }

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override
    {
        return guarded<Op>("getPluginName", static_cast<char const*>(nullptr), [] { return Op::kNAME; });
    }

    char const* getPluginVersion() const noexcept override
    {
        return guarded<Op>("getPluginVersion", static_cast<char const*>(nullptr), [] { return Op::kVERSION; });
    }

    char const* getPluginNamespace() const noexcept override
    {
        return guarded<Op>(
            "getPluginNamespace", static_cast<char const*>(nullptr), [] { return kPLUGIN_NAMESPACE; });
    }

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override
    {
        return guarded<Op>("configurePlugin", int32_t{-1}, [&] {
            requireCounts(nbInputs, nbOutputs);
            require(in != nullptr && out != nullptr, "no tensor descriptions given");
            checkRanks(in[Op::kX].desc.dims, in[Op::kSECOND].desc.dims, in[Op::kSIZE].desc.dims);
            return int32_t{0};
        });
    }

    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override
    {
        return guarded<Op>("getOutputDataTypes", int32_t{-1}, [&] {
            requireCounts(nbInputs, nbOutputs);
            outputTypes[Op::kX_OUT] = inputTypes[Op::kX];
            outputTypes[Op::kSIZE_OUT] = inputTypes[Op::kSIZE];
            return int32_t{0};
        });
    }

    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* /* shapeInputs */, int32_t /* nbShapeInputs */, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override
    {
        return guarded<Op>("getOutputShapes", int32_t{-1}, [&] {
            requireCounts(nbInputs, nbOutputs);
            nvinfer1::DimsExprs const& x = inputs[Op::kX];
            require(x.nbDims == 3, "x must be [B,N,C]");
            nvinfer1::IDimensionExpr const* tokens = Op::outputTokens(*x.d[1], mAttrs, exprBuilder);
            require(tokens != nullptr, "could not express the output token count");
            nvinfer1::DimsExprs& xOut = outputs[Op::kX_OUT];
            xOut.nbDims = 3;
            xOut.d[0] = x.d[0];
            xOut.d[1] = tokens;
            xOut.d[2] = x.d[2];
            nvinfer1::DimsExprs& sizeOut = outputs[Op::kSIZE_OUT];
            sizeOut.nbDims = 3;
            sizeOut.d[0] = x.d[0];
            sizeOut.d[1] = tokens;
            sizeOut.d[2] = exprBuilder.constant(1);
            return int32_t{0};
        });
    }

    //! Linear FP32 or FP16, every tensor of the first input's type.
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override
    {
        return guarded<Op>("supportsFormatCombination", false, [&] {
            requireCounts(nbInputs, nbOutputs);
            require(pos >= 0 && pos < nbInputs + nbOutputs, "tensor position out of range");
            nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
            if (desc.format != nvinfer1::TensorFormat::kLINEAR)
            {
                return false;
            }
            if (pos == Op::kX)
            {
                return desc.type == nvinfer1::DataType::kFLOAT || desc.type == nvinfer1::DataType::kHALF;
            }
            return desc.type == inOut[Op::kX].desc.type;
        });
    }

    int32_t getNbOutputs() const noexcept override
    {
        return guarded<Op>("getNbOutputs", int32_t{-1}, [] { return kNB_OUTPUTS; });
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* /* out */, int32_t nbOutputs) noexcept override
    {
        return guarded<Op>("onShapeChange", int32_t{-1}, [&] {
            requireCounts(nbInputs, nbOutputs);
            paramsOf(in);
            return int32_t{0};
        });
    }

    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* /* outputDesc */,
        void const* const* inputs, void* const* outputs, void* /* workspace */, cudaStream_t stream) noexcept override
    {
        return guarded<Op>("enqueue", int32_t{-1}, [&] {
            typename Op::Params const params = paramsOf(inputDesc);
            cudaError_t const status
                = Op::launch(kernelDType(inputDesc[Op::kX].type), params, inputs, outputs, stream);
            if (status != cudaSuccess)
            {
                throw std::runtime_error(std::string("kernel launch failed: ") + cudaGetErrorString(status));
            }
            return int32_t{0};
        });
    }

    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* /* context */) noexcept override
    {
        return guarded<Op>("attachToContext", static_cast<nvinfer1::IPluginV3*>(nullptr),
            [&]() -> nvinfer1::IPluginV3* { return new ReductionPlugin(*this); });
    }

    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        return guarded<Op>("getFieldsToSerialize", static_cast<nvinfer1::PluginFieldCollection const*>(nullptr),
            [&] { return mSerialized.set(Op::fields(), &mAttrs); });
    }

private:
    static void requireCounts(int32_t nbInputs, int32_t nbOutputs)
    {
        require(nbInputs == kNB_INPUTS && nbOutputs == kNB_OUTPUTS, "expects 3 inputs and 2 outputs");
    }

    static void checkRanks(nvinfer1::Dims const& x, nvinfer1::Dims const& second, nvinfer1::Dims const& size)
    {
        require(x.nbDims == 3, "x must be [B,N,C]");
        require(second.nbDims == Op::kSECOND_RANK, "the second input has the wrong rank");
        require(size.nbDims == 3, "size must be [B,N,1]");
    }

    //! Kernel parameters for concrete input shapes, after checking that they agree.
    typename Op::Params paramsOf(nvinfer1::PluginTensorDesc const* in) const
    {
        nvinfer1::Dims const& x = in[Op::kX].dims;
        nvinfer1::Dims const& second = in[Op::kSECOND].dims;
        nvinfer1::Dims const& size = in[Op::kSIZE].dims;
        checkRanks(x, second, size);
        require(second.d[0] == x.d[0] && second.d[1] == x.d[1] && size.d[0] == x.d[0] && size.d[1] == x.d[1],
            "inputs disagree on batch or token count");
        require(size.d[2] == 1, "size must be [B,N,1]");
        typename Op::Params const params = Op::params(mAttrs, x, second);
        char const* problem = Op::check(params);
        if (problem != nullptr)
        {
            throw std::invalid_argument(problem);
        }
        return params;
    }

    std::vector<int32_t> mAttrs;
    IntFieldCollection mSerialized;
};

//! The creator of ReductionPlugin<Op>: field names, and plugins from a field collection.
template <typename Op>
class ReductionPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    ReductionPluginCreator()
    {
        mFieldNames.set(Op::fields());
    }

    char const* getPluginName() const noexcept override
    {
        return guarded<Op>("getPluginName", static_cast<char const*>(nullptr), [] { return Op::kNAME; });
    }

    char const* getPluginVersion() const noexcept override
    {
        return guarded<Op>("getPluginVersion", static_cast<char const*>(nullptr), [] { return Op::kVERSION; });
    }

    char const* getPluginNamespace() const noexcept override
    {
        return guarded<Op>(
            "getPluginNamespace", static_cast<char const*>(nullptr), [] { return kPLUGIN_NAMESPACE; });
    }

    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override
    {
        return guarded<Op>("getFieldNames", static_cast<nvinfer1::PluginFieldCollection const*>(nullptr),
            [&] { return mFieldNames.set(Op::fields()); });
    }

    //! A plugin from `fc` (the ONNX node's attributes at build time, the serialised fields at
    //! runtime); nullptr, with the reason logged, when an attribute is missing or out of range.
    nvinfer1::IPluginV3* createPlugin(nvinfer1::AsciiChar const* /* name */,
        nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /* phase */) noexcept override
    {
        return guarded<Op>("createPlugin", static_cast<nvinfer1::IPluginV3*>(nullptr),
            [&]() -> nvinfer1::IPluginV3* { return new ReductionPlugin<Op>(readIntFields(fc, Op::fields(), Op::kNAME)); });
    }

private:
    IntFieldCollection mFieldNames;
};

} // namespace plugin
} // namespace trimformer
