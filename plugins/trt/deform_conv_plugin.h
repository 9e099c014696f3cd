// TensorRT 10/11 IPluginV3 plugin "HirnDeformConv" (version "1") running the kernel of plugins/kernel.
//
// IO (linear NCHW; FP32 or FP16 features, offset and mask FP32 or the features' dtype):
//   inputs  0 input  [N, C_in, H, W]
//           1 offset [N, 2*G*kh*kw, H_out, W_out]
//           2 mask   [N, G*kh*kw, H_out, W_out]
//           3 weight [C_out, C_in, kh, kw]
//           4 bias   [C_out]                       (optional)
//   output  0 output [N, C_out, H_out, W_out]
// Fields (= ONNX attributes of hirn::HirnDeformConv): stride[2], padding[2], dilation[2],
// deformable_groups[1], INT32 (INT64 accepted too); plans also store workspace_bytes (INT64), the
// workspace TensorRT allocates for the build profile's max shape.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace hirn
{
namespace trt
{

constexpr char const* kPluginName = "HirnDeformConv";
constexpr char const* kPluginVersion = "1";
// = the ONNX node's domain (PLUGIN_DOMAIN in train/deform_conv.py); the library's only namespace.
constexpr char const* kPluginNamespace = "hirn";
constexpr char const* kWorkspaceField = "workspace_bytes";

struct DeformConvAttrs
{
    int32_t stride[2]{1, 1};
    int32_t padding[2]{1, 1};
    int32_t dilation[2]{1, 1};
    int32_t deformableGroups{16};
};

class DeformConvPlugin final : public nvinfer1::IPluginV3,
                               public nvinfer1::IPluginV3OneCore,
                               public nvinfer1::IPluginV3OneBuild,
                               public nvinfer1::IPluginV3OneRuntime
{
public:
    DeformConvPlugin(DeformConvAttrs const& attrs, size_t workspaceBytes);
    ~DeformConvPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    char const* getTimingCacheID() noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    DeformConvAttrs mAttrs;
    size_t mWorkspaceBytes{0}; // for the build profile's max shape; 0 = not known
    int64_t mSerialWorkspace{0};
    std::string mTimingCacheId;
    int32_t mNbInputs{5};
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialCollection{};
};

class DeformConvPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    DeformConvPluginCreator();
    ~DeformConvPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

// Report through the logger TensorRT handed to setLoggerFinder (stderr when it gave none).
void logError(std::string const& message) noexcept;

} // namespace trt
} // namespace hirn
