// Entry points TensorRT looks up when it loads libhirn_plugins.so (IPluginRegistry::loadLibrary,
// trtexec --dynamicPlugins, version-compatible plans): getCreators and setLoggerFinder.
//
// One creator, in namespace "hirn" (the ONNX node's domain): loadLibrary fails when any creator it returns
// is registered already, so the same plugin must not be offered twice under two namespaces. The library
// does not register itself when merely dlopen'ed: that would clash with loadLibrary.
#include "deform_conv_plugin.h"

#include <cstdio>
#include <string>

#include <dlfcn.h>

#if defined(_WIN32)
#define HIRN_TRT_API __declspec(dllexport)
#else
#define HIRN_TRT_API __attribute__((visibility("default")))
#endif

namespace hirn
{
namespace trt
{
namespace
{
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};

// The major of the TensorRT in this process: its libnvinfer by soname (a Python import loads it privately),
// else a getInferLibVersion in the global scope; the headers' major when neither is found.
int32_t loadedTensorRTMajor()
{
    for (int32_t major = 10; major <= 13; ++major)
    {
        std::string const soname = "libnvinfer.so." + std::to_string(major);
        if (void* handle = dlopen(soname.c_str(), RTLD_LAZY | RTLD_NOLOAD))
        {
            dlclose(handle);
            return major;
        }
    }
    using Version = int32_t (*)();
    auto const version = reinterpret_cast<Version>(dlsym(RTLD_DEFAULT, "getInferLibVersion"));
    return version ? version() / 10000 : NV_TENSORRT_MAJOR;
}
} // namespace

void logError(std::string const& message) noexcept
{
    nvinfer1::ILogger* logger = gLoggerFinder ? gLoggerFinder->findLogger() : nullptr;
    if (logger)
    {
        logger->log(nvinfer1::ILogger::Severity::kERROR, message.c_str());
    }
    else
    {
        std::fprintf(stderr, "[hirn_plugins] %s\n", message.c_str());
    }
}

} // namespace trt
} // namespace hirn

extern "C" HIRN_TRT_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    // ILogger and ILoggerFinder changed their layout in TensorRT 11 (both became IVersionedInterface): a
    // library built against another major's headers would call the wrong virtual function. The TensorRT
    // that loads the library is in the process already; ask it, and fall back to stderr on a mismatch.
    int32_t const loaded = hirn::trt::loadedTensorRTMajor();
    if (loaded != NV_TENSORRT_MAJOR)
    {
        std::fprintf(stderr,
            "[hirn_plugins] built against TensorRT %d headers but loaded by TensorRT %d: rebuild the library "
            "against the headers of the TensorRT that loads it; errors go to stderr\n",
            NV_TENSORRT_MAJOR, int(loaded));
        hirn::trt::gLoggerFinder = nullptr;
        return;
    }
    hirn::trt::gLoggerFinder = finder;
}

extern "C" HIRN_TRT_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static hirn::trt::DeformConvPluginCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}
