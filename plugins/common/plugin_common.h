// Helpers shared by the trimformer TensorRT plugins: names, logging through TensorRT's logger,
// integer attribute fields (read from and serialised to a PluginFieldCollection).
#pragma once

#include "kernel_common.h"

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace trimformer
{
namespace plugin
{

constexpr char const* kPLUGIN_NAMESPACE = "trimformer";

//! Log an error through the logger TensorRT handed to setLoggerFinder (stderr before that).
void logError(char const* plugin, char const* where, char const* what) noexcept;

//! Remember TensorRT's logger finder (called from the library's setLoggerFinder entry point).
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

//! One scalar integer attribute of a plugin and the range it accepts.
struct IntField
{
    char const* name;
    int32_t minimum;
    int32_t maximum;
};

//! The values of `fields`, in order, read from `fc` (kINT32 or kINT64 scalars; other fields,
//! such as ones a parser adds, are ignored). Throws std::invalid_argument naming the plugin and
//! the field that is missing, not an integer scalar, or out of range.
std::vector<int32_t> readIntFields(
    nvinfer1::PluginFieldCollection const* fc, std::vector<IntField> const& fields, char const* plugin);

//! A PluginFieldCollection of scalar kINT32 fields (names only, or names and values) whose
//! storage this object owns; rebuild it after copying the owner.
class IntFieldCollection
{
public:
    IntFieldCollection() = default;
    IntFieldCollection(IntFieldCollection const&) = delete;
    IntFieldCollection& operator=(IntFieldCollection const&) = delete;

    //! Point the collection at `fields`' names and, when given, at `values` (same length).
    nvinfer1::PluginFieldCollection const* set(
        std::vector<IntField> const& fields, std::vector<int32_t> const* values = nullptr);

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

//! The kernel element type of a TensorRT data type; throws std::invalid_argument otherwise.
KernelDType kernelDType(nvinfer1::DataType type);

//! Throw std::invalid_argument(`what`) unless `ok`.
void require(bool ok, char const* what);

//! A dimension as int32, which the kernels take; throws when it does not fit or is negative.
int32_t dimAsInt32(int64_t value);

} // namespace plugin
} // namespace trimformer
