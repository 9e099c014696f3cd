// Entry points TensorRT looks up when it loads libhirn_plugins.so (IPluginRegistry::loadLibrary,
// trtexec --staticPlugins / --dynamicPlugins, version-compatible plans): getCreators and setLoggerFinder.
//
// The creator is offered twice: in namespace "hirn" (the ONNX node's domain, for the network API and
// for nodes that carry plugin_namespace="hirn") and in the default namespace "", which is where the
// ONNX parser looks for a node that has no plugin_namespace attribute (it ignores the node's domain).
// The library does not register itself when merely dlopen'ed: that would clash with loadLibrary.
#include "deform_conv_plugin.h"

#include <cstdio>

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
}

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
    hirn::trt::gLoggerFinder = finder;
}

extern "C" HIRN_TRT_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static hirn::trt::DeformConvPluginCreator named(hirn::trt::kPluginNamespace);
    static hirn::trt::DeformConvPluginCreator unnamed("");
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&named, &unnamed};
    nbCreators = 2;
    return creators;
}
