// Drives libhirn_plugins.so the way TensorRT does, without TensorRT or a GPU: dlopen, setLoggerFinder,
// getCreators, the ONNX parser's createPlugin, then the builder's and the runtime's calls. Compiled by
// tests/plugins/test_plugin_headers.py against the same TensorRT headers as the library.
//
//   plugin_harness <library> <namespace> <attributes file> <run enqueue: 0|1>
//
// The attributes file holds the ONNX node's attributes, one per line: "<name> INT <v>", "<name> INTS <v>...",
// or "<name> STRING <s>". The harness prints one JSON object of what it observed; the test asserts on it.
#include <NvInferRuntime.h>
#include <NvInferVersion.h>

#include <dlfcn.h>

#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

using namespace nvinfer1;

// libnvinfer's version query, which the library asks before it trusts TensorRT's logger. The harness plays the
// TensorRT of its headers, or another one when HARNESS_TENSORRT_VERSION is set (linked with -rdynamic).
extern "C" int32_t getInferLibVersion() noexcept
{
    char const* version = std::getenv("HARNESS_TENSORRT_VERSION");
    return version ? int32_t(std::atol(version)) : int32_t(NV_TENSORRT_VERSION);
}

namespace
{

// ---- JSON output ---------------------------------------------------------------------------------------

std::string quote(std::string const& s)
{
    std::string out = "\"";
    for (char c : s)
    {
        if (c == '"' || c == '\\')
        {
            out += '\\';
        }
        out += (c == '\n' || c == '\t') ? ' ' : c;
    }
    return out + "\"";
}

struct Json
{
    std::vector<std::pair<std::string, std::string>> items;

    void raw(std::string const& key, std::string const& value)
    {
        items.emplace_back(key, value);
    }
    void str(std::string const& key, std::string const& value)
    {
        raw(key, quote(value));
    }
    void num(std::string const& key, int64_t value)
    {
        raw(key, std::to_string(value));
    }
    std::string text() const
    {
        std::string out = "{";
        for (size_t i = 0; i < items.size(); ++i)
        {
            out += (i ? ",\n " : "") + quote(items[i].first) + ": " + items[i].second;
        }
        return out + "}";
    }
};

std::string list(std::vector<std::string> const& values)
{
    std::string out = "[";
    for (size_t i = 0; i < values.size(); ++i)
    {
        out += (i ? ", " : "") + values[i];
    }
    return out + "]";
}

// ---- What TensorRT hands a plugin ----------------------------------------------------------------------

class Logger : public ILogger
{
public:
    std::vector<std::string> errors;

    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kERROR)
        {
            errors.emplace_back(msg ? msg : "");
        }
    }
};

class LoggerFinder : public ILoggerFinder
{
public:
    Logger logger;

    ILogger* findLogger() noexcept override
    {
        return &logger;
    }
};

// Dimension expressions: the plugin only passes them through, so each one just carries a name.
class ExprImpl : public apiv::VDimensionExpr
{
public:
    bool isConstant() const override
    {
        return false;
    }
    int64_t getConstantValue() const override
    {
        return INT64_MIN;
    }
    bool isSizeTensor() const override
    {
        return false;
    }
};

class Expr : public IDimensionExpr
{
public:
    explicit Expr(std::string name_)
        : name(std::move(name_))
    {
        mImpl = &impl;
    }
    std::string name;
    ExprImpl impl;
};

class BuilderImpl : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t) override
    {
        return nullptr;
    }
    IDimensionExpr const* operation(DimensionOperation, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }
};

class Builder : public IExprBuilder
{
public:
    Builder()
    {
        mImpl = &impl;
    }
    BuilderImpl impl;
};

Dims dims(std::vector<int64_t> const& values)
{
    Dims d{};
    d.nbDims = int32_t(values.size());
    for (size_t i = 0; i < values.size(); ++i)
    {
        d.d[i] = values[i];
    }
    return d;
}

std::string typeName(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return "FLOAT";
    case DataType::kHALF: return "HALF";
    case DataType::kBF16: return "BF16";
    case DataType::kINT8: return "INT8";
    default: return "OTHER";
    }
}

std::string fieldTypeName(PluginFieldType t)
{
    switch (t)
    {
    case PluginFieldType::kINT32: return "INT32";
    case PluginFieldType::kINT64: return "INT64";
    case PluginFieldType::kFLOAT32: return "FLOAT32";
    case PluginFieldType::kCHAR: return "CHAR";
    default: return "OTHER";
    }
}

size_t fieldBytes(PluginField const& f)
{
    switch (f.type)
    {
    case PluginFieldType::kINT64: return 8 * size_t(f.length);
    case PluginFieldType::kINT32:
    case PluginFieldType::kFLOAT32: return 4 * size_t(f.length);
    case PluginFieldType::kCHAR:
    case PluginFieldType::kINT8: return size_t(f.length);
    default: return 0;
    }
}

// A deep copy of a field collection, as TensorRT keeps the serialised fields in the plan.
struct Fields
{
    std::vector<std::string> names;
    std::vector<std::vector<char>> data;
    std::vector<PluginField> fields;
    PluginFieldCollection collection{};

    void add(std::string const& name, void const* bytes, size_t size, PluginFieldType type, int32_t length)
    {
        names.push_back(name);
        data.emplace_back(static_cast<char const*>(bytes), static_cast<char const*>(bytes) + size);
        fields.emplace_back(nullptr, nullptr, type, length);
    }
    PluginFieldCollection const* get()
    {
        for (size_t i = 0; i < fields.size(); ++i)
        {
            fields[i].name = names[i].c_str();
            fields[i].data = data[i].data();
        }
        collection.nbFields = int32_t(fields.size());
        collection.fields = fields.data();
        return &collection;
    }
    static Fields copy(PluginFieldCollection const* fc)
    {
        Fields out;
        for (int32_t i = 0; fc && i < fc->nbFields; ++i)
        {
            PluginField const& f = fc->fields[i];
            out.add(f.name, f.data, fieldBytes(f), f.type, f.length);
        }
        return out;
    }
    std::string text() const
    {
        std::ostringstream s;
        for (size_t i = 0; i < names.size(); ++i)
        {
            s << names[i] << ":" << fieldTypeName(fields[i].type) << ":";
            for (size_t b = 0; b < data[i].size(); ++b)
            {
                s << int(static_cast<unsigned char>(data[i][b])) << ",";
            }
            s << ";";
        }
        return s.str();
    }
};

// ONNX attributes: name -> (type, values).
using Attributes = std::map<std::string, std::pair<std::string, std::vector<std::string>>>;

Attributes readAttributes(char const* path)
{
    Attributes attrs;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line))
    {
        std::istringstream words(line);
        std::string name, type, value;
        words >> name >> type;
        std::vector<std::string> values;
        while (words >> value)
        {
            values.push_back(value);
        }
        if (!name.empty())
        {
            attrs[name] = {type, values};
        }
    }
    return attrs;
}

// What the ONNX parser's fallback plugin importer passes: the creator's listed fields that the node carries,
// INT and INTS attributes as INT32.
Fields parserFields(IPluginCreatorV3One& creator, Attributes const& attrs)
{
    Fields out;
    PluginFieldCollection const* wanted = creator.getFieldNames();
    for (int32_t i = 0; wanted && i < wanted->nbFields; ++i)
    {
        auto it = attrs.find(wanted->fields[i].name);
        if (it == attrs.end() || (it->second.first != "INT" && it->second.first != "INTS"))
        {
            continue;
        }
        std::vector<int32_t> ints;
        for (auto const& v : it->second.second)
        {
            ints.push_back(int32_t(std::stoll(v)));
        }
        out.add(it->first, ints.data(), ints.size() * 4, PluginFieldType::kINT32, int32_t(ints.size()));
    }
    return out;
}

// Fields with some values replaced (a configuration the kernel must refuse).
Fields withInts(Fields const& base, std::string const& name, std::vector<int32_t> const& ints)
{
    Fields out;
    for (size_t i = 0; i < base.names.size(); ++i)
    {
        if (base.names[i] == name)
        {
            out.add(name, ints.data(), ints.size() * 4, PluginFieldType::kINT32, int32_t(ints.size()));
        }
        else
        {
            out.add(base.names[i], base.data[i].data(), base.data[i].size(), base.fields[i].type,
                base.fields[i].length);
        }
    }
    return out;
}

// The plugin's IO for HiRN's layer: input [N, C, H, W], offset, mask, weight [O, C, k, k], bias, output.
struct Io
{
    int64_t c = 128, o = 64, k = 3, groups = 16;
    DataType features = DataType::kHALF, offset = DataType::kHALF, mask = DataType::kHALF;
    DataType weight = DataType::kHALF, output = DataType::kHALF;
    TensorFormat format = TensorFormat::kLINEAR;

    std::vector<std::vector<int64_t>> shapes(int64_t n, int64_t h, int64_t w) const
    {
        int64_t const taps = k * k;
        return {{n, c, h, w}, {n, 2 * groups * taps, h, w}, {n, groups * taps, h, w}, {o, c, k, k}, {o}, {n, o, h, w}};
    }
    std::vector<DynamicPluginTensorDesc> dynamic(std::vector<int64_t> const& lo, std::vector<int64_t> const& hi) const
    {
        // Dynamic N, H and W (-1) within the profile [lo, hi] = (N, H, W).
        auto const any = shapes(-1, -1, -1);
        auto const mins = shapes(lo[0], lo[1], lo[2]);
        auto const maxs = shapes(hi[0], hi[1], hi[2]);
        DataType const types[] = {features, offset, mask, weight, weight, output};
        std::vector<DynamicPluginTensorDesc> out(6);
        for (size_t i = 0; i < 6; ++i)
        {
            out[i].desc.dims = dims(any[i]);
            out[i].desc.type = types[i];
            out[i].desc.format = format;
            out[i].desc.scale = 1.f;
            out[i].min = dims(mins[i]);
            out[i].max = dims(maxs[i]);
            out[i].opt = dims(maxs[i]);
        }
        return out;
    }
    std::vector<PluginTensorDesc> concrete(int64_t n, int64_t h, int64_t w) const
    {
        auto const s = shapes(n, h, w);
        DataType const types[] = {features, offset, mask, weight, weight, output};
        std::vector<PluginTensorDesc> out(6);
        for (size_t i = 0; i < 6; ++i)
        {
            out[i].dims = dims(s[i]);
            out[i].type = types[i];
            out[i].format = format;
            out[i].scale = 1.f;
        }
        return out;
    }
};

// The first position supportsFormatCombination refuses, or -1 (TensorRT asks position by position).
int32_t refusedAt(IPluginV3OneBuild* build, Io const& io)
{
    auto const desc = io.dynamic({1, 64, 64}, {1, 64, 64});
    for (int32_t pos = 0; pos < 6; ++pos)
    {
        if (!build->supportsFormatCombination(pos, desc.data(), 5, 1))
        {
            return pos;
        }
    }
    return -1;
}

struct Plugin
{
    IPluginV3* plugin{nullptr};
    IPluginV3OneCore* core{nullptr};
    IPluginV3OneBuild* build{nullptr};
    IPluginV3OneRuntime* runtime{nullptr};

    explicit Plugin(IPluginV3* p)
        : plugin(p)
    {
        if (p)
        {
            core = static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
            build = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
            runtime = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        }
    }
    ~Plugin()
    {
        delete plugin;
    }
    Plugin(Plugin const&) = delete;
    Plugin& operator=(Plugin const&) = delete;
};

// configurePlugin's result for a profile, and the errors it logged.
std::string configure(Plugin& p, Io const& io, std::vector<int64_t> const& lo, std::vector<int64_t> const& hi,
    Logger& logger)
{
    logger.errors.clear();
    auto const desc = io.dynamic(lo, hi);
    int32_t const status = p.build->configurePlugin(desc.data(), 5, desc.data() + 5, 1);
    size_t const workspace = p.build->getWorkspaceSize(desc.data(), 5, desc.data() + 5, 1);
    std::vector<std::string> errors;
    for (auto const& e : logger.errors)
    {
        errors.push_back(quote(e));
    }
    return "{\"status\": " + std::to_string(status) + ", \"workspace\": " + std::to_string(workspace)
        + ", \"errors\": " + list(errors) + "}";
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 5)
    {
        std::fprintf(stderr, "usage: %s <library> <namespace> <attributes file> <run enqueue: 0|1>\n", argv[0]);
        return 2;
    }
    Json out;
    out.str("tensorrt_headers", std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR));

    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib)
    {
        std::fprintf(stderr, "dlopen: %s\n", dlerror());
        return 3;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
    out.raw("entry_points", std::string("{\"getCreators\": ") + (getCreators ? "true" : "false")
            + ", \"setLoggerFinder\": " + (setLoggerFinder ? "true" : "false") + ", \"getPluginCreators\": "
            + (dlsym(lib, "getPluginCreators") ? "true" : "false") + "}");
    if (!getCreators || !setLoggerFinder)
    {
        std::printf("%s\n", out.text().c_str());
        return 0;
    }
    static LoggerFinder finder; // outlives the library's use of it
    setLoggerFinder(&finder);
    Logger& logger = finder.logger;

    // The registry's view: every creator with its interface kind, name, version and namespace.
    int32_t nbCreators = -1;
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    std::vector<std::string> described;
    IPluginCreatorV3One* found = nullptr;
    int32_t matches = 0;
    for (int32_t i = 0; i < nbCreators; ++i)
    {
        InterfaceInfo const info = creators[i]->getInterfaceInfo();
        std::string desc = "{\"kind\": " + quote(info.kind) + ", \"major\": " + std::to_string(info.major);
        if (std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0)
        {
            auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
            desc += ", \"name\": " + quote(c->getPluginName()) + ", \"version\": " + quote(c->getPluginVersion())
                + ", \"namespace\": " + quote(c->getPluginNamespace());
            // IPluginRegistry::getCreator(name, version, namespace) for the exporter's node.
            if (std::strcmp(c->getPluginName(), "HirnDeformConv") == 0 && std::strcmp(c->getPluginVersion(), "1") == 0
                && std::strcmp(c->getPluginNamespace(), argv[2]) == 0)
            {
                found = c;
                ++matches;
            }
        }
        described.push_back(desc + "}");
    }
    out.raw("creators", list(described));
    out.num("lookup_matches", matches);
    if (!found)
    {
        std::printf("%s\n", out.text().c_str());
        return 0;
    }
    std::vector<std::string> names;
    PluginFieldCollection const* wanted = found->getFieldNames();
    for (int32_t i = 0; wanted && i < wanted->nbFields; ++i)
    {
        names.push_back(quote(std::string(wanted->fields[i].name) + ":" + fieldTypeName(wanted->fields[i].type) + ":"
            + std::to_string(wanted->fields[i].length)));
    }
    out.raw("field_names", list(names));

    // The ONNX parser: createPlugin with the node's attributes.
    Attributes const attrs = readAttributes(argv[3]);
    Fields onnx = parserFields(*found, attrs);
    out.str("parser_fields", onnx.text());
    logger.errors.clear();
    Plugin p(found->createPlugin("hirn_dcn_node", onnx.get(), TensorRTPhase::kBUILD));
    out.raw("created", p.plugin && p.core && p.build && p.runtime ? "true" : "false");
    if (!p.plugin || !p.core || !p.build || !p.runtime)
    {
        std::printf("%s\n", out.text().c_str());
        return 0;
    }
    out.str("plugin_id", std::string(p.core->getPluginName()) + "/" + p.core->getPluginVersion() + "/"
            + p.core->getPluginNamespace());
    auto const groupsIt = attrs.find("deformable_groups");
    Io io;
    io.groups = groupsIt != attrs.end() ? std::stoll(groupsIt->second.second.at(0)) : 16;

    // Output count, types and shapes.
    out.num("nb_outputs", p.build->getNbOutputs());
    std::vector<std::string> types;
    for (auto const& in : {std::vector<DataType>{DataType::kHALF, DataType::kFLOAT, DataType::kHALF, DataType::kHALF,
                                DataType::kHALF},
             std::vector<DataType>{DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT,
                 DataType::kFLOAT}})
    {
        DataType type = DataType::kINT8;
        int32_t const status = p.build->getOutputDataTypes(&type, 1, in.data(), 5);
        types.push_back(quote(typeName(in[0]) + "->" + (status == 0 ? typeName(type) : "refused")));
    }
    out.raw("output_types", list(types));
    {
        std::vector<std::unique_ptr<Expr>> owned;
        std::vector<DimsExprs> inputs(5);
        char const* tensors[] = {"input", "offset", "mask", "weight", "bias"};
        for (int32_t t = 0; t < 5; ++t)
        {
            inputs[t].nbDims = t == 4 ? 1 : 4;
            for (int32_t d = 0; d < inputs[t].nbDims; ++d)
            {
                owned.push_back(std::make_unique<Expr>(std::string(tensors[t]) + "." + std::to_string(d)));
                inputs[t].d[d] = owned.back().get();
            }
        }
        DimsExprs output{};
        Builder builder;
        int32_t const status = p.build->getOutputShapes(inputs.data(), 5, nullptr, 0, &output, 1, builder);
        std::vector<std::string> shape;
        for (int32_t d = 0; status == 0 && d < output.nbDims; ++d)
        {
            shape.push_back(quote(output.d[d] ? static_cast<Expr const*>(output.d[d])->name : "null"));
        }
        out.raw("output_shape", status == 0 ? list(shape) : "null");
    }

    // Format combinations, as TensorRT tries them.
    std::vector<std::string> formats;
    auto tryFormats = [&](std::string const& name, Io io2) {
        formats.push_back(quote(name) + ": " + std::to_string(refusedAt(p.build, io2)));
    };
    // A case: ``base`` with the named tensors set to ``type``.
    using Field = DataType Io::*;
    auto with = [](Io base, std::initializer_list<Field> fields, DataType type) {
        for (Field field : fields)
        {
            base.*field = type;
        }
        return base;
    };
    std::initializer_list<Field> const every{&Io::features, &Io::offset, &Io::mask, &Io::weight, &Io::output};
    Io const all32 = with(io, every, DataType::kFLOAT);
    tryFormats("fp32", all32);
    tryFormats("fp16", io);
    tryFormats("fp16_fp32_offset", with(io, {&Io::offset}, DataType::kFLOAT));
    Io const fp32Positions = with(io, {&Io::offset, &Io::mask}, DataType::kFLOAT);
    tryFormats("fp16_fp32_offset_mask", fp32Positions);
    tryFormats("fp32_fp16_offset", with(all32, {&Io::offset}, DataType::kHALF));
    tryFormats("fp16_fp32_weight", with(io, {&Io::weight}, DataType::kFLOAT));
    tryFormats("fp16_fp32_output", with(io, {&Io::output}, DataType::kFLOAT));
    tryFormats("bf16", with(io, every, DataType::kBF16));
    Io hwc8 = io;
    hwc8.format = TensorFormat::kHWC8;
    tryFormats("fp16_hwc8", hwc8);
    out.raw("formats", "{" + [&] {
        std::string s;
        for (size_t i = 0; i < formats.size(); ++i)
        {
            s += (i ? ", " : "") + formats[i];
        }
        return s;
    }() + "}");

    // configurePlugin with dynamic N, H, W: HiRN's layer, then configurations the kernel cannot run.
    std::vector<int64_t> const lo{1, 64, 64}, hi{4, 540, 960};
    out.raw("configure_fp16", configure(p, io, lo, hi, logger));
    out.raw("configure_fp32", configure(p, all32, lo, hi, logger));
    out.raw("configure_fp16_fp32_offset", configure(p, fp32Positions, lo, hi, logger));
    {
        // 3 offset groups do not divide 128 channels.
        Fields bad = withInts(onnx, "deformable_groups", {3});
        Plugin q(found->createPlugin("bad_groups", bad.get(), TensorRTPhase::kBUILD));
        Io io3 = io;
        io3.groups = 3;
        out.raw("configure_bad_groups", q.plugin ? configure(q, io3, lo, hi, logger) : "null");
    }
    {
        // A 5x5 kernel: 25 taps, the kernel is built for 9.
        Io io5 = io;
        io5.k = 5;
        out.raw("configure_bad_taps", configure(p, io5, lo, hi, logger));
    }
    {
        // Dilation 40: the dilated 3x3 kernel (81 px) exceeds the smallest padded input of the profile (66 px).
        Fields bad = withInts(onnx, "dilation", {40, 40});
        Plugin q(found->createPlugin("bad_dilation", bad.get(), TensorRTPhase::kBUILD));
        out.raw("configure_bad_dilation", q.plugin ? configure(q, io, lo, hi, logger) : "null");
    }

    // A plugin configured for the FP16 profile and serialised (as the builder does), then the runtime plugin
    // created from those fields.
    Plugin b(found->createPlugin("hirn_dcn_node", onnx.get(), TensorRTPhase::kBUILD));
    configure(b, io, lo, hi, logger);
    Fields serial = Fields::copy(b.runtime->getFieldsToSerialize());
    out.str("serialized", serial.text());
    Plugin r(found->createPlugin("hirn_dcn_node", serial.get(), TensorRTPhase::kRUNTIME));
    out.raw("deserialized", r.plugin && r.core && r.runtime ? "true" : "false");
    if (r.runtime)
    {
        out.str("reserialized", Fields::copy(r.runtime->getFieldsToSerialize()).text());
        Plugin context(r.runtime->attachToContext(nullptr));
        out.raw("attached", context.runtime ? "true" : "false");

        // Runtime shapes: one inside the profile, one beyond its max (more workspace than was allocated).
        auto inside = io.concrete(1, 180, 320);
        auto beyond = io.concrete(4, 1080, 1920);
        logger.errors.clear();
        out.num("shape_inside", context.runtime->onShapeChange(inside.data(), 5, inside.data() + 5, 1));
        out.num("shape_beyond", context.runtime->onShapeChange(beyond.data(), 5, beyond.data() + 5, 1));
        out.str("shape_beyond_error", logger.errors.empty() ? "" : logger.errors.back());

        if (std::strcmp(argv[4], "1") == 0)
        {
            // No GPU: the launch must fail with an error code, never touch these (fake, aligned) addresses.
            context.runtime->onShapeChange(inside.data(), 5, inside.data() + 5, 1);
            void const* ins[5];
            for (int32_t i = 0; i < 5; ++i)
            {
                ins[i] = reinterpret_cast<void const*>(uintptr_t(4096) * (i + 1));
            }
            void* outs[1] = {reinterpret_cast<void*>(uintptr_t(4096) * 6)};
            logger.errors.clear();
            int32_t const status = context.runtime->enqueue(
                inside.data(), inside.data() + 5, ins, outs, reinterpret_cast<void*>(uintptr_t(4096) * 7), nullptr);
            out.num("enqueue_status", status);
            out.str("enqueue_error", logger.errors.empty() ? "" : logger.errors.back());
        }
    }
    std::printf("%s\n", out.text().c_str());
    return 0;
}
