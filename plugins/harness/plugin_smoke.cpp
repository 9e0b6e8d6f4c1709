// Drives the plugin library through TensorRT's plugin interfaces the way TensorRT does, without
// TensorRT's runtime or a GPU: creators from getCreators, plugins from field collections (as the
// ONNX parser passes node attributes), types and formats, shape checks, and the serialisation
// round trip. Shape expressions (IExprBuilder) and enqueue need TensorRT and a GPU: not here.
// Prints one line per failed check and "OK" at the end; exits 1 on any failure.
#include <NvInferRuntime.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

using namespace nvinfer1;

namespace
{

int gFailures = 0;

void check(bool ok, char const* what)
{
    if (!ok)
    {
        std::printf("FAIL %s\n", what);
        ++gFailures;
    }
}

IPluginCreatorV3One* creatorNamed(char const* name)
{
    int32_t count = 0;
    IPluginCreatorInterface* const* creators = getCreators(count);
    for (int32_t i = 0; i < count; ++i)
    {
        auto* creator = static_cast<IPluginCreatorV3One*>(creators[i]);
        if (std::strcmp(creator->getPluginName(), name) == 0)
        {
            return creator;
        }
    }
    return nullptr;
}

PluginTensorDesc desc(DataType type, std::initializer_list<int64_t> dims)
{
    PluginTensorDesc d{};
    d.type = type;
    d.format = TensorFormat::kLINEAR;
    d.dims.nbDims = static_cast<int32_t>(dims.size());
    int32_t i = 0;
    for (int64_t v : dims)
    {
        d.dims.d[i++] = v;
    }
    return d;
}

int32_t fieldValue(PluginFieldCollection const* fc, char const* name)
{
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        if (std::strcmp(fc->fields[i].name, name) == 0)
        {
            return *static_cast<int32_t const*>(fc->fields[i].data);
        }
    }
    return -1;
}

void bipartiteMerge()
{
    IPluginCreatorV3One* creator = creatorNamed("BipartiteMerge");
    check(creator != nullptr, "BipartiteMerge creator exists");
    if (creator == nullptr)
    {
        return;
    }
    check(std::strcmp(creator->getPluginVersion(), "2") == 0, "version 2");
    check(std::strcmp(creator->getPluginNamespace(), "trimformer") == 0, "namespace trimformer");
    PluginFieldCollection const* names = creator->getFieldNames();
    check(names->nbFields == 2 && std::strcmp(names->fields[0].name, "r") == 0, "fields r, protected");

    int64_t r = 4; // the ONNX parser may hand INT64 attributes
    int32_t protectedTokens = 1;
    PluginField fields[] = {PluginField("r", &r, PluginFieldType::kINT64, 1),
        PluginField("protected", &protectedTokens, PluginFieldType::kINT32, 1)};
    PluginFieldCollection fc{2, fields};
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin("merge", &fc, TensorRTPhase::kBUILD));
    check(plugin != nullptr, "createPlugin from INT64/INT32 fields");
    if (!plugin)
    {
        return;
    }
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    check(std::strcmp(core->getPluginName(), "BipartiteMerge") == 0, "core name");
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    check(build->getNbOutputs() == 2, "two outputs");
    DataType in[3] = {DataType::kHALF, DataType::kHALF, DataType::kHALF};
    DataType out[2] = {DataType::kFLOAT, DataType::kFLOAT};
    check(build->getOutputDataTypes(out, 2, in, 3) == 0 && out[0] == DataType::kHALF && out[1] == DataType::kHALF,
        "output types follow the inputs");

    DynamicPluginTensorDesc io[5]{};
    io[0].desc = desc(DataType::kFLOAT, {2, 17, 8});
    io[1].desc = desc(DataType::kFLOAT, {2, 17, 4});
    io[2].desc = desc(DataType::kFLOAT, {2, 17, 1});
    io[3].desc = desc(DataType::kFLOAT, {2, 13, 8});
    io[4].desc = desc(DataType::kFLOAT, {2, 13, 1});
    check(build->supportsFormatCombination(0, io, 3, 2), "FP32 linear x");
    check(build->supportsFormatCombination(4, io, 3, 2), "FP32 size_out with FP32 x");
    io[1].desc.type = DataType::kHALF;
    check(!build->supportsFormatCombination(1, io, 3, 2), "mixed types refused");
    io[1].desc.type = DataType::kFLOAT;
    io[0].desc.type = DataType::kINT32;
    check(!build->supportsFormatCombination(0, io, 3, 2), "INT32 refused");
    io[0].desc.type = DataType::kFLOAT;
    check(build->configurePlugin(io, 3, io + 3, 2) == 0, "configurePlugin");
    check(build->supportsFormatCombination(7, io, 3, 2) == false, "bad position refused, not a crash");

    auto* runtime
        = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginTensorDesc shapes[3] = {io[0].desc, io[1].desc, io[2].desc};
    PluginTensorDesc outs[2] = {io[3].desc, io[4].desc};
    check(runtime->onShapeChange(shapes, 3, outs, 2) == 0, "onShapeChange accepts N=17, r=4");
    shapes[0].dims.d[1] = shapes[1].dims.d[1] = shapes[2].dims.d[1] = 8; // r=4 > (8-1)/2
    check(runtime->onShapeChange(shapes, 3, outs, 2) != 0, "onShapeChange refuses r > (N-p)/2");

    PluginFieldCollection const* saved = runtime->getFieldsToSerialize();
    check(fieldValue(saved, "r") == 4 && fieldValue(saved, "protected") == 1, "serialised fields");
    std::unique_ptr<IPluginV3> restored(creator->createPlugin("merge", saved, TensorRTPhase::kRUNTIME));
    check(restored != nullptr, "createPlugin from serialised fields");
    std::unique_ptr<IPluginV3> copy(plugin->clone());
    auto* copied = static_cast<IPluginV3OneRuntime*>(copy->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(fieldValue(copied->getFieldsToSerialize(), "r") == 4, "clone keeps attributes");

    PluginFieldCollection missing{1, fields};
    check(creator->createPlugin("merge", &missing, TensorRTPhase::kBUILD) == nullptr, "missing attribute refused");
}

void topKSelect()
{
    IPluginCreatorV3One* creator = creatorNamed("TopKSelect");
    check(creator != nullptr, "TopKSelect creator exists");
    if (creator == nullptr)
    {
        return;
    }
    int32_t k = 5;
    int32_t protectedTokens = 1;
    int32_t fuse = 2;
    PluginField fields[] = {PluginField("k", &k, PluginFieldType::kINT32, 1),
        PluginField("protected", &protectedTokens, PluginFieldType::kINT32, 1),
        PluginField("fuse", &fuse, PluginFieldType::kINT32, 1)};
    PluginFieldCollection fc{3, fields};
    check(creator->createPlugin("select", &fc, TensorRTPhase::kBUILD) == nullptr, "fuse=2 refused");
    fuse = 1;
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin("select", &fc, TensorRTPhase::kBUILD));
    check(plugin != nullptr, "createPlugin");
    if (!plugin)
    {
        return;
    }
    auto* runtime
        = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginTensorDesc in[3]
        = {desc(DataType::kHALF, {3, 9, 8}), desc(DataType::kHALF, {3, 9}), desc(DataType::kHALF, {3, 9, 1})};
    PluginTensorDesc out[2] = {desc(DataType::kHALF, {3, 7, 8}), desc(DataType::kHALF, {3, 7, 1})};
    check(runtime->onShapeChange(in, 3, out, 2) == 0, "onShapeChange accepts k=5 of 8");
    in[1] = desc(DataType::kHALF, {3, 9, 1});
    check(runtime->onShapeChange(in, 3, out, 2) != 0, "scores of rank 3 refused");
    PluginFieldCollection const* saved = runtime->getFieldsToSerialize();
    check(fieldValue(saved, "k") == 5 && fieldValue(saved, "fuse") == 1, "serialised fields");
}

void diverseSelect()
{
    IPluginCreatorV3One* creator = creatorNamed("DiverseSelect");
    check(creator != nullptr, "DiverseSelect creator exists");
    if (creator == nullptr)
    {
        return;
    }
    int32_t k = 9;
    int32_t protectedTokens = 1;
    PluginField fields[] = {PluginField("k", &k, PluginFieldType::kINT32, 1),
        PluginField("protected", &protectedTokens, PluginFieldType::kINT32, 1)};
    PluginFieldCollection fc{2, fields};
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin("diverse", &fc, TensorRTPhase::kBUILD));
    check(plugin != nullptr, "createPlugin");
    if (!plugin)
    {
        return;
    }
    auto* runtime
        = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginTensorDesc in[3] = {desc(DataType::kFLOAT, {2, 10, 8}), desc(DataType::kFLOAT, {2, 10, 4}),
        desc(DataType::kFLOAT, {2, 10, 1})};
    PluginTensorDesc out[2] = {desc(DataType::kFLOAT, {2, 10, 8}), desc(DataType::kFLOAT, {2, 10, 1})};
    check(runtime->onShapeChange(in, 3, out, 2) == 0, "onShapeChange accepts k=9 of 9 unprotected");
    protectedTokens = 2;
    std::unique_ptr<IPluginV3> tooMany(creator->createPlugin("diverse", &fc, TensorRTPhase::kBUILD));
    auto* refusing
        = static_cast<IPluginV3OneRuntime*>(tooMany->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(refusing->onShapeChange(in, 3, out, 2) != 0, "onShapeChange refuses k > N-protected");
    in[1] = desc(DataType::kFLOAT, {2, 10});
    check(runtime->onShapeChange(in, 3, out, 2) != 0, "features of rank 2 refused");
    PluginFieldCollection const* saved = runtime->getFieldsToSerialize();
    check(fieldValue(saved, "k") == 9 && fieldValue(saved, "protected") == 1, "serialised fields");
}

} // namespace

int main()
{
    int32_t count = 0;
    getCreators(count);
    check(count == 3, "three creators");
    bipartiteMerge();
    topKSelect();
    diverseSelect();
    if (gFailures == 0)
    {
        std::printf("OK\n");
    }
    return gFailures == 0 ? 0 : 1;
}
