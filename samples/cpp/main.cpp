// trimformer_infer: one inference of a trimformer TensorRT engine from C++ (TensorRT 10/11 API).
//
//   trimformer_infer BUNDLE/engines/PROFILE.plan [--plugins libtrimformer_plugins.so]
//                    [--batch N] [--count N] [--seed S]
//
// Loads the plugin library into the runtime's plugin registry (the fused token-reduction
// kernels the engine calls; engines built with the AOT Python plugins carry their kernels and
// need none), deserialises the engine, takes every input's shape from the engine
// (a dynamic dimension from its optimisation profile's "opt" shape, the batch from --batch),
// fills inputs with random values (floating point: N(0, 1); integer: ones, a valid token id and
// attention mask), runs enqueueV3 on a CUDA stream and prints the first values of every output.
#include <NvInfer.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace
{

//! TensorRT's messages at warning level and above, on stderr.
class Logger : public nvinfer1::ILogger
{
public:
    void log(Severity severity, nvinfer1::AsciiChar const* message) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            std::fprintf(stderr, "[TensorRT] %s\n", message);
        }
    }
};

void checkCuda(cudaError_t status, char const* what)
{
    if (status != cudaSuccess)
    {
        throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
    }
}

//! A device allocation freed on scope exit.
struct DeviceBuffer
{
    explicit DeviceBuffer(size_t bytes)
    {
        checkCuda(cudaMalloc(&data, bytes == 0 ? 1 : bytes), "cudaMalloc");
    }
    DeviceBuffer(DeviceBuffer const&) = delete;
    DeviceBuffer& operator=(DeviceBuffer const&) = delete;
    ~DeviceBuffer()
    {
        cudaFree(data);
    }
    void* data = nullptr;
};

struct Options
{
    std::string engine;
    std::string plugins;
    int64_t batch = 1;
    int64_t count = 8;
    uint32_t seed = 0;
};

Options parseOptions(int argc, char** argv)
{
    Options options;
    char const* fromEnv = std::getenv("TRIMFORMER_PLUGIN_LIB");
    options.plugins = fromEnv != nullptr ? fromEnv : "";
    for (int i = 1; i < argc; ++i)
    {
        std::string const arg = argv[i];
        bool const hasValue = i + 1 < argc;
        if (arg == "--plugins" && hasValue)
        {
            options.plugins = argv[++i];
        }
        else if (arg == "--batch" && hasValue)
        {
            options.batch = std::stoll(argv[++i]);
        }
        else if (arg == "--count" && hasValue)
        {
            options.count = std::stoll(argv[++i]);
        }
        else if (arg == "--seed" && hasValue)
        {
            options.seed = static_cast<uint32_t>(std::stoul(argv[++i]));
        }
        else if (options.engine.empty() && arg.rfind("--", 0) != 0)
        {
            options.engine = arg;
        }
        else
        {
            throw std::invalid_argument("unknown or incomplete argument " + arg);
        }
    }
    if (options.engine.empty())
    {
        throw std::invalid_argument("no engine given");
    }
    if (options.batch < 1 || options.count < 0)
    {
        throw std::invalid_argument("--batch must be >= 1 and --count >= 0");
    }
    return options;
}

std::vector<char> readFile(std::string const& path)
{
    std::ifstream file(path, std::ios::binary);
    if (!file)
    {
        throw std::runtime_error("cannot read " + path + "; build it with trimformer build BUNDLE --device PROFILE");
    }
    return std::vector<char>(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
}

size_t elementSize(nvinfer1::DataType type, char const* tensor)
{
    switch (type)
    {
    case nvinfer1::DataType::kFLOAT:
    case nvinfer1::DataType::kINT32: return 4;
    case nvinfer1::DataType::kHALF:
    case nvinfer1::DataType::kBF16: return 2;
    case nvinfer1::DataType::kINT64: return 8;
    case nvinfer1::DataType::kINT8:
    case nvinfer1::DataType::kUINT8:
    case nvinfer1::DataType::kBOOL: return 1;
    default: break;
    }
    throw std::runtime_error(std::string("tensor ") + tensor + " has a data type this sample does not handle");
}

int64_t volume(nvinfer1::Dims const& dims, char const* tensor)
{
    int64_t count = 1;
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        if (dims.d[i] < 0)
        {
            throw std::runtime_error(std::string("tensor ") + tensor + " has a shape known only at run time");
        }
        count *= dims.d[i];
    }
    return count;
}

std::string shapeOf(nvinfer1::Dims const& dims)
{
    std::string text = "(";
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        text += (i ? ", " : "") + std::to_string(dims.d[i]);
    }
    return text + ")";
}

//! The input's shape: the engine's, each dynamic dimension from profile 0's "opt" shape, and
//! the first (batch) dimension `batch` when it is dynamic and the profile allows it.
nvinfer1::Dims inputShape(nvinfer1::ICudaEngine const& engine, char const* name, int64_t batch)
{
    nvinfer1::Dims dims = engine.getTensorShape(name);
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        if (dims.d[i] >= 0)
        {
            continue;
        }
        nvinfer1::Dims const low = engine.getProfileShape(name, 0, nvinfer1::OptProfileSelector::kMIN);
        nvinfer1::Dims const opt = engine.getProfileShape(name, 0, nvinfer1::OptProfileSelector::kOPT);
        nvinfer1::Dims const high = engine.getProfileShape(name, 0, nvinfer1::OptProfileSelector::kMAX);
        dims.d[i] = opt.d[i];
        if (i == 0)
        {
            if (batch < low.d[0] || batch > high.d[0])
            {
                throw std::invalid_argument("--batch " + std::to_string(batch) + " is outside the engine's "
                    + std::to_string(low.d[0]) + ".." + std::to_string(high.d[0]) + " for " + name);
            }
            dims.d[0] = batch;
        }
    }
    return dims;
}

//! `count` random host values of `type`, as bytes.
std::vector<unsigned char> randomValues(nvinfer1::DataType type, int64_t count, std::mt19937& generator)
{
    std::normal_distribution<float> normal(0.F, 1.F);
    std::vector<unsigned char> bytes(static_cast<size_t>(count) * elementSize(type, "input"));
    for (int64_t i = 0; i < count; ++i)
    {
        void* at = bytes.data() + static_cast<size_t>(i) * elementSize(type, "input");
        switch (type)
        {
        case nvinfer1::DataType::kFLOAT: *static_cast<float*>(at) = normal(generator); break;
        case nvinfer1::DataType::kHALF: *static_cast<__half*>(at) = __float2half(normal(generator)); break;
        case nvinfer1::DataType::kBF16:
            *static_cast<__nv_bfloat16*>(at) = __float2bfloat16(normal(generator));
            break;
        case nvinfer1::DataType::kINT32: *static_cast<int32_t*>(at) = 1; break;
        case nvinfer1::DataType::kINT64: *static_cast<int64_t*>(at) = 1; break;
        default: *static_cast<uint8_t*>(at) = 1; break;
        }
    }
    return bytes;
}

float valueAt(nvinfer1::DataType type, unsigned char const* bytes, int64_t i)
{
    void const* at = bytes + static_cast<size_t>(i) * elementSize(type, "output");
    switch (type)
    {
    case nvinfer1::DataType::kFLOAT: return *static_cast<float const*>(at);
    case nvinfer1::DataType::kHALF: return __half2float(*static_cast<__half const*>(at));
    case nvinfer1::DataType::kBF16: return __bfloat162float(*static_cast<__nv_bfloat16 const*>(at));
    case nvinfer1::DataType::kINT32: return static_cast<float>(*static_cast<int32_t const*>(at));
    case nvinfer1::DataType::kINT64: return static_cast<float>(*static_cast<int64_t const*>(at));
    case nvinfer1::DataType::kINT8: return static_cast<float>(*static_cast<int8_t const*>(at));
    default: return static_cast<float>(*static_cast<uint8_t const*>(at));
    }
}

int run(Options const& options)
{
    Logger logger;
    std::unique_ptr<nvinfer1::IRuntime> runtime(nvinfer1::createInferRuntime(logger));
    if (!runtime)
    {
        throw std::runtime_error("createInferRuntime failed");
    }
    if (!options.plugins.empty())
    {
        if (runtime->getPluginRegistry().loadLibrary(options.plugins.c_str()) == nullptr)
        {
            throw std::runtime_error("cannot load the plugin library " + options.plugins
                + "; build it with trimformer plugins build");
        }
        std::printf("plugins: %s\n", options.plugins.c_str());
    }
    std::vector<char> const plan = readFile(options.engine);
    std::unique_ptr<nvinfer1::ICudaEngine> engine(runtime->deserializeCudaEngine(plan.data(), plan.size()));
    if (!engine)
    {
        throw std::runtime_error("cannot deserialise " + options.engine
            + ": built by another TensorRT version or for another GPU, or its plugins are not loaded (--plugins, "
              "$TRIMFORMER_PLUGIN_LIB)");
    }
    std::unique_ptr<nvinfer1::IExecutionContext> context(engine->createExecutionContext());
    if (!context)
    {
        throw std::runtime_error("createExecutionContext failed");
    }
    cudaStream_t stream = nullptr;
    checkCuda(cudaStreamCreate(&stream), "cudaStreamCreate");
    std::unique_ptr<CUstream_st, cudaError_t (*)(cudaStream_t)> streamOwner(stream, cudaStreamDestroy);

    int32_t const count = engine->getNbIOTensors();
    for (int32_t i = 0; i < count; ++i)
    {
        char const* name = engine->getIOTensorName(i);
        if (engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT
            && !context->setInputShape(name, inputShape(*engine, name, options.batch)))
        {
            throw std::runtime_error(std::string("setInputShape refused ") + name);
        }
    }

    std::mt19937 generator(options.seed);
    std::vector<std::unique_ptr<DeviceBuffer>> buffers;
    std::vector<std::vector<unsigned char>> hostOutputs(static_cast<size_t>(count));
    for (int32_t i = 0; i < count; ++i)
    {
        char const* name = engine->getIOTensorName(i);
        nvinfer1::DataType const type = engine->getTensorDataType(name);
        nvinfer1::Dims const dims = context->getTensorShape(name);
        int64_t const elements = volume(dims, name);
        size_t const bytes = static_cast<size_t>(elements) * elementSize(type, name);
        buffers.push_back(std::make_unique<DeviceBuffer>(bytes));
        void* device = buffers.back()->data;
        if (engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT)
        {
            std::vector<unsigned char> const host = randomValues(type, elements, generator);
            checkCuda(cudaMemcpyAsync(device, host.data(), bytes, cudaMemcpyHostToDevice, stream), "copy in");
            checkCuda(cudaStreamSynchronize(stream), "copy in");
            std::printf("input  %s %s\n", name, shapeOf(dims).c_str());
        }
        else
        {
            hostOutputs[static_cast<size_t>(i)].resize(bytes);
        }
        if (!context->setTensorAddress(name, device))
        {
            throw std::runtime_error(std::string("setTensorAddress refused ") + name);
        }
    }

    if (!context->enqueueV3(stream))
    {
        throw std::runtime_error("enqueueV3 failed (TensorRT logged why)");
    }
    for (int32_t i = 0; i < count; ++i)
    {
        std::vector<unsigned char>& host = hostOutputs[static_cast<size_t>(i)];
        if (!host.empty())
        {
            checkCuda(cudaMemcpyAsync(host.data(), buffers[static_cast<size_t>(i)]->data, host.size(),
                          cudaMemcpyDeviceToHost, stream),
                "copy out");
        }
    }
    checkCuda(cudaStreamSynchronize(stream), "inference");

    for (int32_t i = 0; i < count; ++i)
    {
        char const* name = engine->getIOTensorName(i);
        if (engine->getTensorIOMode(name) != nvinfer1::TensorIOMode::kOUTPUT)
        {
            continue;
        }
        nvinfer1::DataType const type = engine->getTensorDataType(name);
        nvinfer1::Dims const dims = context->getTensorShape(name);
        int64_t const shown = std::min(options.count, volume(dims, name));
        std::printf("output %s %s:", name, shapeOf(dims).c_str());
        for (int64_t j = 0; j < shown; ++j)
        {
            std::printf(" %.6g", valueAt(type, hostOutputs[static_cast<size_t>(i)].data(), j));
        }
        std::printf("\n");
    }
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    Options options;
    try
    {
        options = parseOptions(argc, argv);
    }
    catch (std::exception const& e)
    {
        std::fprintf(stderr,
            "error: %s\nusage: %s ENGINE.plan [--plugins LIB] [--batch N] [--count N] [--seed S]\n", e.what(),
            argv[0]);
        return 2;
    }
    try
    {
        return run(options);
    }
    catch (std::exception const& e)
    {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
