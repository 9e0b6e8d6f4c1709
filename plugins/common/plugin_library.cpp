// The entry points TensorRT looks for in a plugin library loaded with trtexec --dynamicPlugins,
// IPluginRegistry::loadLibrary or the ONNX Runtime TensorRT EP's trt_extra_plugin_lib_paths.
#include "../bipartite_merge/bipartite_merge_plugin.h"
#include "../diverse_select/diverse_select_plugin.h"
#include "../topk_select/topk_select_plugin.h"

// TENSORRTAPI exports only while building TensorRT itself; the library is built with hidden
// visibility, so its two entry points are exported explicitly.
#define TRIMFORMER_PLUGIN_EXPORT __attribute__((visibility("default")))

extern "C" TRIMFORMER_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    trimformer::plugin::setLoggerFinder(finder);
}

extern "C" TRIMFORMER_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static nvinfer1::IPluginCreatorInterface* const kCreators[] = {
        trimformer::plugin::bipartiteMergeCreator(),
        trimformer::plugin::topKSelectCreator(),
        trimformer::plugin::diverseSelectCreator(),
    };
    nbCreators = static_cast<int32_t>(sizeof(kCreators) / sizeof(kCreators[0]));
    return kCreators;
}
