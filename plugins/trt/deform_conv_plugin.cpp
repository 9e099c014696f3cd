// TensorRT plugin HirnDeformConv: shape and type rules, serialisation, and the enqueue that calls the
// kernel's C API (plugins/kernel/deform_conv.h).
#include "deform_conv_plugin.h"

#include "deform_conv.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <sstream>

namespace hirn
{
namespace trt
{
namespace
{

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::PluginFieldType;

constexpr int32_t kSuccess = 0;
constexpr int32_t kFailure = -1;

bool toDtype(DataType type, hirn_dtype_t* dtype)
{
    if (type == DataType::kFLOAT)
    {
        *dtype = HIRN_DTYPE_FLOAT32;
        return true;
    }
    if (type == DataType::kHALF)
    {
        *dtype = HIRN_DTYPE_FLOAT16;
        return true;
    }
    return false;
}

std::string dimsText(Dims const& d)
{
    std::ostringstream s;
    s << "[";
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        s << (i ? ", " : "") << d.d[i];
    }
    s << "]";
    return s.str();
}

// The kernel's shape from the input and weight dimensions; false (and why) if they cannot describe a call.
bool toShape(Dims const& input, Dims const& weight, DeformConvAttrs const& a, hirn_deform_conv_shape_t* s,
    std::string* why)
{
    if (input.nbDims != 4 || weight.nbDims != 4)
    {
        *why = "input " + dimsText(input) + " and weight " + dimsText(weight) + " must both be 4-D";
        return false;
    }
    for (int32_t i = 0; i < 4; ++i)
    {
        if (input.d[i] < 0 || input.d[i] > INT32_MAX || weight.d[i] < 0 || weight.d[i] > INT32_MAX)
        {
            *why = "dimensions out of range: input " + dimsText(input) + ", weight " + dimsText(weight);
            return false;
        }
    }
    s->batch = int(input.d[0]);
    s->in_channels = int(input.d[1]);
    s->height = int(input.d[2]);
    s->width = int(input.d[3]);
    s->out_channels = int(weight.d[0]);
    s->kernel_h = int(weight.d[2]);
    s->kernel_w = int(weight.d[3]);
    s->stride_h = a.stride[0];
    s->stride_w = a.stride[1];
    s->pad_h = a.padding[0];
    s->pad_w = a.padding[1];
    s->dilation_h = a.dilation[0];
    s->dilation_w = a.dilation[1];
    s->deformable_groups = a.deformableGroups;
    return true;
}

// Every known dimension of the inputs against the others; -1 (not yet known at build time) passes.
std::string checkDims(Dims const* in, int32_t nbInputs, DeformConvAttrs const& a)
{
    if (nbInputs != 4 && nbInputs != 5)
    {
        return "expects 4 or 5 inputs (input, offset, mask, weight[, bias]), got " + std::to_string(nbInputs);
    }
    for (int32_t i = 0; i < 4; ++i)
    {
        if (in[i].nbDims != 4)
        {
            return "input " + std::to_string(i) + " must be 4-D, got " + dimsText(in[i]);
        }
    }
    auto known = [](int64_t v) { return v >= 0; };
    auto differ = [&](int64_t x, int64_t y) { return known(x) && known(y) && x != y; };
    Dims const &x = in[0], &off = in[1], &mask = in[2], &w = in[3];
    int64_t const taps = known(w.d[2]) && known(w.d[3]) ? w.d[2] * w.d[3] : -1;
    int64_t const g = a.deformableGroups;
    if (differ(w.d[1], x.d[1]))
    {
        return "weight " + dimsText(w) + " must have the input's " + std::to_string(x.d[1]) + " channels";
    }
    if (known(taps) && (differ(off.d[1], 2 * g * taps) || differ(mask.d[1], g * taps)))
    {
        return "offset " + dimsText(off) + " and mask " + dimsText(mask) + " must have 2*G*kh*kw and G*kh*kw "
            + "channels for deformable_groups = " + std::to_string(g);
    }
    if (differ(off.d[0], x.d[0]) || differ(mask.d[0], x.d[0]) || differ(mask.d[2], off.d[2])
        || differ(mask.d[3], off.d[3]))
    {
        return "offset " + dimsText(off) + " and mask " + dimsText(mask) + " must share batch and H_out, W_out";
    }
    if (nbInputs == 5 && (in[4].nbDims != 1 || differ(in[4].d[0], w.d[0])))
    {
        return "bias " + dimsText(in[4]) + " must be [C_out] for weight " + dimsText(w);
    }
    if (known(x.d[2]) && known(x.d[3]) && known(taps))
    {
        hirn_deform_conv_shape_t shape{};
        std::string why;
        Dims probe = x;
        probe.d[0] = known(x.d[0]) ? x.d[0] : 1;
        probe.d[1] = known(x.d[1]) ? x.d[1] : g;
        Dims wprobe = w;
        wprobe.d[0] = known(w.d[0]) ? w.d[0] : 1;
        wprobe.d[1] = probe.d[1];
        if (!toShape(probe, wprobe, a, &shape, &why))
        {
            return why;
        }
        int hOut = 0, wOut = 0;
        if (hirn_deform_conv_check(&shape, HIRN_DTYPE_FLOAT16) != HIRN_STATUS_SUCCESS
            || hirn_deform_conv_output_size(&shape, &hOut, &wOut) != HIRN_STATUS_SUCCESS)
        {
            return hirn_deform_conv_last_error();
        }
        if (differ(off.d[2], hOut) || differ(off.d[3], wOut))
        {
            return "offset " + dimsText(off) + " must be " + std::to_string(hOut) + "x" + std::to_string(wOut)
                + " (the convolution's output size for input " + dimsText(x) + ")";
        }
    }
    return "";
}

bool allKnown(Dims const& d)
{
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        if (d.d[i] < 0)
        {
            return false;
        }
    }
    return true;
}

// The kernel's rules (taps <= 9, groups divide C_in, kernel within the padded input, size limits) at one
// bound of the build profile. Engines have dynamic H and W, so this is where a bad configuration shows
// before any shape is known; "" if fine or if the bound is not known.
std::string checkBound(Dims const& input, Dims const& weight, DeformConvAttrs const& a, char const* which)
{
    if (!allKnown(input) || !allKnown(weight))
    {
        return "";
    }
    hirn_deform_conv_shape_t shape{};
    std::string why;
    if (!toShape(input, weight, a, &shape, &why))
    {
        return why;
    }
    if (hirn_deform_conv_check(&shape, HIRN_DTYPE_FLOAT16) != HIRN_STATUS_SUCCESS)
    {
        return std::string("at the profile's ") + which + " input " + dimsText(input) + " and weight "
            + dimsText(weight) + ": " + hirn_deform_conv_last_error();
    }
    return "";
}

// Workspace for the largest shape of the profile; 0 if the bounds are unknown or invalid.
size_t maxWorkspace(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs, DeformConvAttrs const& a)
{
    hirn_deform_conv_shape_t shape{};
    hirn_dtype_t dtype{};
    std::string why;
    if (nbInputs < 4 || !toDtype(in[0].desc.type, &dtype) || !toShape(in[0].max, in[3].max, a, &shape, &why))
    {
        return 0;
    }
    return hirn_deform_conv_workspace_size(&shape, dtype);
}

bool isFloat(DataType type)
{
    return type == DataType::kFLOAT || type == DataType::kHALF;
}

bool readInts(nvinfer1::PluginField const& f, int32_t* out, int32_t count, std::string* why)
{
    if (f.data == nullptr || (f.length != count && !(count == 2 && f.length == 1)))
    {
        *why = std::string("field ") + f.name + " must hold " + std::to_string(count) + " integers";
        return false;
    }
    for (int32_t i = 0; i < count; ++i)
    {
        int32_t const j = f.length == 1 ? 0 : i; // a single value applies to both axes
        if (f.type == PluginFieldType::kINT32)
        {
            out[i] = static_cast<int32_t const*>(f.data)[j];
        }
        else if (f.type == PluginFieldType::kINT64)
        {
            out[i] = int32_t(static_cast<int64_t const*>(f.data)[j]);
        }
        else
        {
            *why = std::string("field ") + f.name + " must be INT32 or INT64";
            return false;
        }
    }
    return true;
}

} // namespace

DeformConvPlugin::DeformConvPlugin(DeformConvAttrs const& attrs, size_t workspaceBytes)
    : mAttrs(attrs)
    , mWorkspaceBytes(workspaceBytes)
{
    std::ostringstream id;
    id << "s" << mAttrs.stride[0] << "x" << mAttrs.stride[1] << "_p" << mAttrs.padding[0] << "x"
       << mAttrs.padding[1] << "_d" << mAttrs.dilation[0] << "x" << mAttrs.dilation[1] << "_g"
       << mAttrs.deformableGroups;
    mTimingCacheId = id.str();
}

nvinfer1::IPluginCapability* DeformConvPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* DeformConvPlugin::clone() noexcept
{
    try
    {
        auto* plugin = new DeformConvPlugin(mAttrs, mWorkspaceBytes);
        plugin->mNbInputs = mNbInputs;
        return plugin;
    }
    catch (std::exception const& e)
    {
        logError(std::string("HirnDeformConv clone: ") + e.what());
    }
    return nullptr;
}

char const* DeformConvPlugin::getPluginName() const noexcept
{
    return kPluginName;
}

char const* DeformConvPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* DeformConvPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t DeformConvPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    try
    {
        std::vector<Dims> dims;
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            dims.push_back(in[i].desc.dims);
        }
        std::string why = nbOutputs == 1 ? checkDims(dims.data(), nbInputs, mAttrs) : "expects 1 output";
        if (why.empty())
        {
            why = checkBound(in[0].min, in[3].min, mAttrs, "min");
        }
        if (why.empty())
        {
            why = checkBound(in[0].max, in[3].max, mAttrs, "max");
        }
        size_t const workspace = maxWorkspace(in, nbInputs, mAttrs);
        if (why.empty() && workspace == 0 && allKnown(in[0].max) && allKnown(in[3].max))
        {
            why = "no workspace size for the profile's max input " + dimsText(in[0].max) + " and weight "
                + dimsText(in[3].max);
        }
        if (!why.empty())
        {
            logError("HirnDeformConv: " + why);
            return kFailure;
        }
        mNbInputs = nbInputs;
        // The largest of every profile configured: a runtime shape beyond it has no workspace.
        mWorkspaceBytes = std::max(mWorkspaceBytes, workspace);
        return kSuccess;
    }
    catch (std::exception const& e)
    {
        logError(std::string("HirnDeformConv configurePlugin: ") + e.what());
    }
    return kFailure;
}

int32_t DeformConvPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbOutputs != 1 || nbInputs < 4)
    {
        return kFailure;
    }
    outputTypes[0] = inputTypes[0]; // one dtype for every tensor
    return kSuccess;
}

int32_t DeformConvPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbOutputs != 1 || (nbInputs != 4 && nbInputs != 5) || inputs[0].nbDims != 4 || inputs[1].nbDims != 4
        || inputs[3].nbDims != 4)
    {
        logError("HirnDeformConv: expects 4-D input, offset, mask, weight (and an optional bias)");
        return kFailure;
    }
    // [N, C_out, H_out, W_out]: the output grid is the offset's (checked against the input in onShapeChange).
    outputs[0].nbDims = 4;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[0].d[1] = inputs[3].d[0];
    outputs[0].d[2] = inputs[1].d[2];
    outputs[0].d[3] = inputs[1].d[3];
    return kSuccess;
}

bool DeformConvPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t /*nbInputs*/, int32_t /*nbOutputs*/) noexcept
{
    nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != nvinfer1::TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 0)
    {
        return isFloat(desc.type);
    }
    if (pos == 1 || pos == 2)
    {
        // Offsets and mask: FP32 beside FP16 features keeps the sampling positions exact.
        return desc.type == inOut[0].desc.type || desc.type == DataType::kFLOAT;
    }
    return desc.type == inOut[0].desc.type; // weight, bias and output
}

int32_t DeformConvPlugin::getNbOutputs() const noexcept
{
    return 1;
}

size_t DeformConvPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return maxWorkspace(inputs, nbInputs, mAttrs); // the largest shape of the profile
}

char const* DeformConvPlugin::getTimingCacheID() noexcept
{
    return mTimingCacheId.c_str();
}

int32_t DeformConvPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    try
    {
        std::vector<Dims> dims;
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            dims.push_back(in[i].dims);
        }
        std::string why = nbOutputs == 1 ? checkDims(dims.data(), nbInputs, mAttrs) : "expects 1 output";
        hirn_deform_conv_shape_t shape{};
        hirn_dtype_t dtype{};
        if (why.empty() && toDtype(in[0].type, &dtype) && toShape(in[0].dims, in[3].dims, mAttrs, &shape, &why)
            && mWorkspaceBytes > 0 && hirn_deform_conv_workspace_size(&shape, dtype) > mWorkspaceBytes)
        {
            why = "input " + dimsText(in[0].dims) + " needs more workspace than the "
                + std::to_string(mWorkspaceBytes) + " bytes of the profile the engine was built for";
        }
        if (!why.empty())
        {
            logError("HirnDeformConv: " + why);
            return kFailure;
        }
        mNbInputs = nbInputs;
        return kSuccess;
    }
    catch (std::exception const& e)
    {
        logError(std::string("HirnDeformConv onShapeChange: ") + e.what());
    }
    return kFailure;
}

int32_t DeformConvPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) noexcept
{
    try
    {
        hirn_deform_conv_shape_t shape{};
        hirn_dtype_t dtype{};
        std::string why;
        if (!toDtype(inputDesc[0].type, &dtype) || !toShape(inputDesc[0].dims, inputDesc[3].dims, mAttrs, &shape, &why))
        {
            logError("HirnDeformConv enqueue: " + (why.empty() ? std::string("dtype must be FP32 or FP16") : why));
            return kFailure;
        }
        int hOut = 0, wOut = 0;
        if (hirn_deform_conv_output_size(&shape, &hOut, &wOut) != HIRN_STATUS_SUCCESS
            || outputDesc[0].dims.d[2] != hOut || outputDesc[0].dims.d[3] != wOut)
        {
            logError("HirnDeformConv enqueue: output " + dimsText(outputDesc[0].dims) + " does not fit input "
                + dimsText(inputDesc[0].dims) + " " + hirn_deform_conv_last_error());
            return kFailure;
        }
        hirn_dtype_t offsetDtype{}, maskDtype{};
        if (!toDtype(inputDesc[1].type, &offsetDtype) || !toDtype(inputDesc[2].type, &maskDtype))
        {
            logError("HirnDeformConv enqueue: offset and mask must be FP32 or FP16");
            return kFailure;
        }
        // TensorRT allocated what getWorkspaceSize asked for the profile's max shape (serialised with the
        // plan), so the kernel checks this shape's need against that; a plugin made from ONNX fields alone
        // (never configured) does not know it and can only trust the profile.
        size_t const bytes = mWorkspaceBytes > 0 ? mWorkspaceBytes : hirn_deform_conv_workspace_size(&shape, dtype);
        void const* bias = mNbInputs == 5 ? inputs[4] : nullptr;
        hirn_status_t const status = hirn_deform_conv_forward(&shape, dtype, offsetDtype, maskDtype, inputs[0],
            inputs[1], inputs[2], inputs[3], bias, outputs[0], workspace, bytes, stream);
        if (status != HIRN_STATUS_SUCCESS)
        {
            logError(std::string("HirnDeformConv enqueue: ") + hirn_status_string(status) + ": "
                + hirn_deform_conv_last_error());
            return kFailure;
        }
        return kSuccess;
    }
    catch (std::exception const& e)
    {
        logError(std::string("HirnDeformConv enqueue: ") + e.what());
    }
    return kFailure;
}

nvinfer1::IPluginV3* DeformConvPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone(); // no per-context resources: the kernel needs only the workspace TensorRT provides
}

nvinfer1::PluginFieldCollection const* DeformConvPlugin::getFieldsToSerialize() noexcept
{
    mSerialFields.clear();
    mSerialFields.emplace_back("stride", mAttrs.stride, PluginFieldType::kINT32, 2);
    mSerialFields.emplace_back("padding", mAttrs.padding, PluginFieldType::kINT32, 2);
    mSerialFields.emplace_back("dilation", mAttrs.dilation, PluginFieldType::kINT32, 2);
    mSerialFields.emplace_back("deformable_groups", &mAttrs.deformableGroups, PluginFieldType::kINT32, 1);
    mSerialWorkspace = int64_t(mWorkspaceBytes);
    mSerialFields.emplace_back(kWorkspaceField, &mSerialWorkspace, PluginFieldType::kINT64, 1);
    mSerialCollection.nbFields = int32_t(mSerialFields.size());
    mSerialCollection.fields = mSerialFields.data();
    return &mSerialCollection;
}

DeformConvPluginCreator::DeformConvPluginCreator()
{
    // The attributes the ONNX parser copies from the node (it only passes the names listed here).
    mFields.emplace_back("stride", nullptr, PluginFieldType::kINT32, 2);
    mFields.emplace_back("padding", nullptr, PluginFieldType::kINT32, 2);
    mFields.emplace_back("dilation", nullptr, PluginFieldType::kINT32, 2);
    mFields.emplace_back("deformable_groups", nullptr, PluginFieldType::kINT32, 1);
    mCollection.nbFields = int32_t(mFields.size());
    mCollection.fields = mFields.data();
}

char const* DeformConvPluginCreator::getPluginName() const noexcept
{
    return kPluginName;
}

char const* DeformConvPluginCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* DeformConvPluginCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

nvinfer1::PluginFieldCollection const* DeformConvPluginCreator::getFieldNames() noexcept
{
    return &mCollection;
}

nvinfer1::IPluginV3* DeformConvPluginCreator::createPlugin(
    char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    try
    {
        DeformConvAttrs attrs; // missing fields keep HiRN's values (1, 1, 1, 16)
        int64_t workspaceBytes = 0;
        std::string why;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields && why.empty(); ++i)
        {
            nvinfer1::PluginField const& f = fc->fields[i];
            std::string const field = f.name ? f.name : "";
            if (field == "stride")
            {
                readInts(f, attrs.stride, 2, &why);
            }
            else if (field == "padding")
            {
                readInts(f, attrs.padding, 2, &why);
            }
            else if (field == "dilation")
            {
                readInts(f, attrs.dilation, 2, &why);
            }
            else if (field == "deformable_groups")
            {
                readInts(f, &attrs.deformableGroups, 1, &why);
            }
            else if (field == kWorkspaceField && f.type == PluginFieldType::kINT64 && f.length == 1 && f.data)
            {
                workspaceBytes = *static_cast<int64_t const*>(f.data); // from a serialised plan
            }
            else
            {
                why = "unknown field '" + field + "' (expected stride, padding, dilation, deformable_groups; "
                    + kWorkspaceField + " in plans)";
            }
        }
        if (why.empty()
            && (attrs.stride[0] < 1 || attrs.stride[1] < 1 || attrs.dilation[0] < 1 || attrs.dilation[1] < 1
                || attrs.padding[0] < 0 || attrs.padding[1] < 0 || attrs.deformableGroups < 1))
        {
            why = "stride, dilation and deformable_groups must be >= 1 and padding >= 0";
        }
        if (why.empty() && workspaceBytes < 0)
        {
            why = std::string(kWorkspaceField) + " must be >= 0";
        }
        if (!why.empty())
        {
            logError(std::string("HirnDeformConv ") + (name ? name : "") + ": " + why);
            return nullptr;
        }
        return new DeformConvPlugin(attrs, size_t(workspaceBytes));
    }
    catch (std::exception const& e)
    {
        logError(std::string("HirnDeformConv createPlugin: ") + e.what());
    }
    return nullptr;
}

} // namespace trt
} // namespace hirn
