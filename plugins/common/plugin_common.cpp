#include "plugin_common.h"

#include <cstdint>
#include <cstdio>
#include <stdexcept>

namespace trimformer
{
namespace plugin
{
namespace
{
nvinfer1::ILoggerFinder* gLoggerFinder = nullptr;
} // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    gLoggerFinder = finder;
}

void logError(char const* plugin, char const* where, char const* what) noexcept
{
    try
    {
        std::string const message = std::string("trimformer::") + plugin + "::" + where + ": " + what;
        nvinfer1::ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
        if (logger != nullptr)
        {
            logger->log(nvinfer1::ILogger::Severity::kERROR, message.c_str());
        }
        else
        {
            std::fprintf(stderr, "%s\n", message.c_str());
        }
    }
    catch (...)
    {
        std::fprintf(stderr, "trimformer plugin: an error occurred and could not be logged\n");
    }
}

std::vector<int32_t> readIntFields(
    nvinfer1::PluginFieldCollection const* fc, std::vector<IntField> const& fields, char const* plugin)
{
    require(fc != nullptr, "no PluginFieldCollection given");
    std::vector<int32_t> values;
    values.reserve(fields.size());
    for (IntField const& field : fields)
    {
        nvinfer1::PluginField const* found = nullptr;
        for (int32_t i = 0; i < fc->nbFields; ++i)
        {
            if (fc->fields[i].name != nullptr && std::string(fc->fields[i].name) == field.name)
            {
                found = &fc->fields[i];
            }
        }
        std::string const label = std::string(plugin) + ": attribute " + field.name;
        if (found == nullptr)
        {
            throw std::invalid_argument(label + " is missing");
        }
        if (found->data == nullptr || found->length != 1)
        {
            throw std::invalid_argument(label + " must be one integer");
        }
        int64_t value = 0;
        if (found->type == nvinfer1::PluginFieldType::kINT32)
        {
            value = *static_cast<int32_t const*>(found->data);
        }
        else if (found->type == nvinfer1::PluginFieldType::kINT64)
        {
            value = *static_cast<int64_t const*>(found->data);
        }
        else
        {
            throw std::invalid_argument(label + " must be an INT32 or INT64 field");
        }
        if (value < field.minimum || value > field.maximum)
        {
            throw std::invalid_argument(label + "=" + std::to_string(value) + " is outside "
                + std::to_string(field.minimum) + ".." + std::to_string(field.maximum));
        }
        values.push_back(static_cast<int32_t>(value));
    }
    return values;
}

nvinfer1::PluginFieldCollection const* IntFieldCollection::set(
    std::vector<IntField> const& fields, std::vector<int32_t> const* values)
{
    mFields.clear();
    for (size_t i = 0; i < fields.size(); ++i)
    {
        void const* data = values != nullptr ? &(*values)[i] : nullptr;
        mFields.emplace_back(fields[i].name, data, nvinfer1::PluginFieldType::kINT32, 1);
    }
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
    return &mCollection;
}

KernelDType kernelDType(nvinfer1::DataType type)
{
    switch (type)
    {
    case nvinfer1::DataType::kFLOAT: return KernelDType::kFLOAT;
    case nvinfer1::DataType::kHALF: return KernelDType::kHALF;
    default: break;
    }
    throw std::invalid_argument("only FP32 and FP16 tensors are supported");
}

void require(bool ok, char const* what)
{
    if (!ok)
    {
        throw std::invalid_argument(what);
    }
}

int32_t dimAsInt32(int64_t value)
{
    require(value >= 0 && value <= INT32_MAX, "a dimension is negative or does not fit int32");
    return static_cast<int32_t>(value);
}

} // namespace plugin
} // namespace trimformer
