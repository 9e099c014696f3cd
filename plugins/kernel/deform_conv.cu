// HiRN's modulated deformable convolution: CUDA kernels, their CPU emulation and the C API.
// The per-thread code lives in deform_conv.cuh; see there for the algorithm.
#include "deform_conv.cuh"
#include "deform_conv.h"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#if defined(__CUDACC__)
#include <mma.h>
#endif

namespace hirn
{
namespace dcn
{
namespace
{

thread_local std::string gLastError;

hirn_status_t fail(hirn_status_t status, std::string const& why)
{
    gLastError = why;
    return status;
}

// FP16 tile product on tensor cores: warp w owns output channels (w/2)*16..+15 and four 16-pixel slabs.
// The bodies exist in the device pass only; the host pass never instantiates a kernel body.
struct WmmaAccum
{
#if defined(__CUDA_ARCH__)
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> f[4];
#endif

    __device__ void zero()
    {
#if defined(__CUDA_ARCH__)
#pragma unroll
        for (int j = 0; j < 4; ++j)
        {
            nvcuda::wmma::fill_fragment(f[j], 0.f);
        }
#endif
    }

    __device__ void step(__half const* w, __half const* s, int rows, int tid)
    {
#if defined(__CUDA_ARCH__)
        using L = Layout<__half>;
        int const warp = tid / 32;
        int const wo = warp / 2;
        int const wp = (warp % 2) * 4;
        for (int k = 0; k < rows; k += 16)
        {
            nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half, nvcuda::wmma::row_major> a;
            nvcuda::wmma::load_matrix_sync(a, w + wo * 16 * L::kLdW + k, L::kLdW);
#pragma unroll
            for (int j = 0; j < 4; ++j)
            {
                nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __half, nvcuda::wmma::row_major> b;
                nvcuda::wmma::load_matrix_sync(b, s + k * L::kLdS + (wp + j) * 16, L::kLdS);
                nvcuda::wmma::mma_sync(f[j], a, b, f[j]);
            }
        }
#endif
    }

    __device__ void store(float* c, int tid) const
    {
#if defined(__CUDA_ARCH__)
        int const warp = tid / 32;
        int const wo = warp / 2;
        int const wp = (warp % 2) * 4;
#pragma unroll
        for (int j = 0; j < 4; ++j)
        {
            nvcuda::wmma::store_matrix_sync(
                c + wo * 16 * kLdC + (wp + j) * 16, f[j], kLdC, nvcuda::wmma::mem_row_major);
        }
#endif
    }
};

template <typename T>
struct DeviceAccum
{
    using type = FmaAccum;
};
template <>
struct DeviceAccum<__half>
{
    using type = WmmaAccum;
};

template <typename T, int CPI>
__global__ void packInputKernel(Problem p, T const* in, T* packed, int64_t items)
{
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < items; i += int64_t(gridDim.x) * blockDim.x)
    {
        packInputItem<T, CPI>(p, in, packed, i);
    }
}

template <typename T>
__global__ void packWeightKernel(Problem p, T const* weight, T* packed, int64_t items)
{
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < items; i += int64_t(gridDim.x) * blockDim.x)
    {
        packWeightItem<T>(p, weight, packed, i);
    }
}

// grid = (pixel tiles, output-channel blocks, images); dynamic shared memory = Smem<T>::kBytes.
template <typename T, int CPI>
__global__ void __launch_bounds__(kThreads, 3) deformConvKernel(Problem p, Tensors<T> t)
{
    extern __shared__ __align__(128) unsigned char smemRaw[];
    Smem<T> sm(smemRaw);
    int const tid = threadIdx.x;
    int const pix0 = blockIdx.x * kTileP;
    int const oBlock = blockIdx.y;
    int const n = blockIdx.z;
    int const rows = Layout<T>::kChunkC * p.taps;
    int const items = (Layout<T>::kChunkC / CPI) * p.taps * kTileP;

    typename DeviceAccum<T>::type acc;
    acc.zero();
    for (int chunk = 0; chunk < p.chunks; ++chunk)
    {
        copyWeightTile<T>(t, p, oBlock, chunk, tid, sm.w);
#pragma unroll 2
        for (int it = tid; it < items; it += kThreads)
        {
            sampleItem<T, CPI>(p, t, n, pix0, chunk, it, sm.s);
        }
        __syncthreads();
        acc.step(sm.w, sm.s, rows, tid);
        __syncthreads(); // the next chunk overwrites both tiles
    }
    acc.store(sm.c, tid); // c aliases w and s: safe after the barrier above
    __syncthreads();
    for (int e = tid; e < kTileO * kTileP; e += kThreads)
    {
        writeOutputItem<T>(p, t, n, pix0, oBlock, e, sm.c);
    }
}

int64_t ceilDiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

size_t alignUp(size_t v)
{
    return (v + 255) / 256 * 256;
}

template <typename T>
size_t packedWeightBytes(Problem const& p)
{
    return size_t(p.o_blocks) * p.chunks * Layout<T>::kWElems * sizeof(T);
}

template <typename T>
size_t workspaceBytes(Problem const& p)
{
    return alignUp(size_t(p.n) * p.c_in * p.h * size_t(p.w) * sizeof(T)) + packedWeightBytes<T>(p);
}

template <typename T>
void placeWorkspace(Problem const& p, Tensors<T>& t, void* workspace)
{
    auto* bytes = static_cast<unsigned char*>(workspace);
    t.packed_input = reinterpret_cast<T*>(bytes);
    t.packed_weight = reinterpret_cast<T*>(bytes + alignUp(size_t(p.n) * p.c_in * p.h * size_t(p.w) * sizeof(T)));
}

hirn_status_t makeProblem(hirn_deform_conv_shape_t const* s, hirn_dtype_t dtype, Problem* p)
{
    if (s == nullptr)
    {
        return fail(HIRN_STATUS_INVALID_ARGUMENT, "shape is NULL");
    }
    if (dtype != HIRN_DTYPE_FLOAT32 && dtype != HIRN_DTYPE_FLOAT16)
    {
        return fail(HIRN_STATUS_UNSUPPORTED, "dtype must be HIRN_DTYPE_FLOAT32 or HIRN_DTYPE_FLOAT16");
    }
    if (s->batch < 0 || s->in_channels < 1 || s->height < 1 || s->width < 1 || s->out_channels < 1)
    {
        return fail(HIRN_STATUS_INVALID_ARGUMENT, "batch must be >= 0 and channels, height and width >= 1");
    }
    if (s->kernel_h < 1 || s->kernel_w < 1 || s->stride_h < 1 || s->stride_w < 1 || s->dilation_h < 1
        || s->dilation_w < 1 || s->pad_h < 0 || s->pad_w < 0)
    {
        return fail(HIRN_STATUS_INVALID_ARGUMENT, "kernel, stride and dilation must be >= 1 and padding >= 0");
    }
    if (s->deformable_groups < 1 || s->in_channels % s->deformable_groups != 0)
    {
        return fail(HIRN_STATUS_INVALID_ARGUMENT,
            "deformable_groups = " + std::to_string(s->deformable_groups) + " must divide the "
                + std::to_string(s->in_channels) + " input channels");
    }
    if (int64_t(s->kernel_h) * s->kernel_w > kMaxTaps)
    {
        return fail(HIRN_STATUS_UNSUPPORTED,
            "kernel " + std::to_string(s->kernel_h) + "x" + std::to_string(s->kernel_w)
                + " has more than 9 taps; this kernel is built for up to 3x3");
    }
    int64_t const hOut = (int64_t(s->height) + 2 * s->pad_h - int64_t(s->dilation_h) * (s->kernel_h - 1) - 1) / s->stride_h + 1;
    int64_t const wOut = (int64_t(s->width) + 2 * s->pad_w - int64_t(s->dilation_w) * (s->kernel_w - 1) - 1) / s->stride_w + 1;
    if (hOut < 1 || wOut < 1 || int64_t(s->height) + 2 * s->pad_h < int64_t(s->dilation_h) * (s->kernel_h - 1) + 1
        || int64_t(s->width) + 2 * s->pad_w < int64_t(s->dilation_w) * (s->kernel_w - 1) + 1)
    {
        return fail(HIRN_STATUS_INVALID_ARGUMENT, "the (dilated) kernel is larger than the padded input");
    }
    if (hOut * wOut > INT_MAX - kTileP || int64_t(s->height) * s->width > INT_MAX || s->batch > 65535)
    {
        return fail(HIRN_STATUS_UNSUPPORTED, "image too large (H*W must fit in 31 bits, batch <= 65535)");
    }
    Problem& q = *p;
    q.n = s->batch;
    q.c_in = s->in_channels;
    q.h = s->height;
    q.w = s->width;
    q.c_out = s->out_channels;
    q.kh = s->kernel_h;
    q.kw = s->kernel_w;
    q.sh = s->stride_h;
    q.sw = s->stride_w;
    q.ph = s->pad_h;
    q.pw = s->pad_w;
    q.dh = s->dilation_h;
    q.dw = s->dilation_w;
    q.groups = s->deformable_groups;
    q.cpg = s->in_channels / s->deformable_groups;
    q.taps = s->kernel_h * s->kernel_w;
    q.h_out = int(hOut);
    q.w_out = int(wOut);
    q.hw_out = int(hOut * wOut);
    int const chunkC = dtype == HIRN_DTYPE_FLOAT16 ? Layout<__half>::kChunkC : Layout<float>::kChunkC;
    q.chunks = int(ceilDiv(q.c_in, chunkC));
    q.o_blocks = int(ceilDiv(q.c_out, kTileO));
    return HIRN_STATUS_SUCCESS;
}

template <typename T, int CPI>
hirn_status_t launchForward(Problem const& p, Tensors<T> const& t, cudaStream_t stream)
{
    // Above 48 KB of shared memory a kernel must opt in. The opt-in belongs to the current context,
    // so it is set before every launch: a host-side call of a few microseconds, thread-safe, and
    // allowed during CUDA-graph capture (it is not a stream operation).
    cudaError_t err = cudaFuncSetAttribute(
        deformConvKernel<T, CPI>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Smem<T>::kBytes));
    if (err != cudaSuccess)
    {
        return fail(HIRN_STATUS_CUDA_ERROR, std::string("CUDA setup failed: ") + cudaGetErrorString(err));
    }
    int64_t const inputItems = int64_t(p.n) * p.groups * p.h * p.w * (p.cpg / CPI);
    int64_t const weightItems = int64_t(p.o_blocks) * p.chunks * Layout<T>::kWElems;
    int64_t const maxBlocks = 1 << 20; // grid-stride loops cover the rest
    packInputKernel<T, CPI><<<unsigned(std::min(ceilDiv(inputItems, kThreads), maxBlocks)), kThreads, 0, stream>>>(
        p, t.input, t.packed_input, inputItems);
    packWeightKernel<T><<<unsigned(std::min(ceilDiv(weightItems, kThreads), maxBlocks)), kThreads, 0, stream>>>(
        p, t.weight, t.packed_weight, weightItems);
    dim3 const grid(unsigned(ceilDiv(p.hw_out, kTileP)), unsigned(p.o_blocks), unsigned(p.n));
    deformConvKernel<T, CPI><<<grid, kThreads, Smem<T>::kBytes, stream>>>(p, t);
    err = cudaGetLastError();
    if (err != cudaSuccess)
    {
        return fail(HIRN_STATUS_CUDA_ERROR, std::string("kernel launch failed: ") + cudaGetErrorString(err));
    }
    return HIRN_STATUS_SUCCESS;
}

// ---- CPU emulation: the kernels' per-thread code, thread by thread between the barriers ----------------

template <typename T>
struct HostAccum
{
    FmaAccum a[kThreads]; // exactly the device's per-thread FMA accumulators

    void zero()
    {
        for (auto& x : a)
        {
            x.zero();
        }
    }
    void step(T const* w, T const* s, int rows)
    {
        for (int tid = 0; tid < kThreads; ++tid)
        {
            a[tid].step(w, s, rows, tid);
        }
    }
    void store(float* c) const
    {
        for (int tid = 0; tid < kThreads; ++tid)
        {
            a[tid].store(c, tid);
        }
    }
};

// What the WMMA calls compute: C[o][p] += sum_r A[o][r] * B[r][p] on the same shared-memory layouts.
template <>
struct HostAccum<__half>
{
    std::vector<float> acc = std::vector<float>(size_t(kTileO) * kTileP);

    void zero()
    {
        std::fill(acc.begin(), acc.end(), 0.f);
    }
    void step(__half const* w, __half const* s, int rows)
    {
        using L = Layout<__half>;
        for (int o = 0; o < kTileO; ++o)
        {
            for (int r = 0; r < rows; ++r)
            {
                float const a = __half2float(w[o * L::kLdW + r]);
                for (int px = 0; px < kTileP; ++px)
                {
                    acc[size_t(o) * kTileP + px] += a * __half2float(s[r * L::kLdS + px]);
                }
            }
        }
    }
    void store(float* c) const
    {
        for (int o = 0; o < kTileO; ++o)
        {
            for (int px = 0; px < kTileP; ++px)
            {
                c[o * kLdC + px] = acc[size_t(o) * kTileP + px];
            }
        }
    }
};

struct FreeDeleter
{
    void operator()(void* ptr) const
    {
        std::free(ptr);
    }
};

template <typename T, int CPI>
hirn_status_t runHost(Problem const& p, Tensors<T> t)
{
    std::unique_ptr<void, FreeDeleter> workspace(std::aligned_alloc(256, alignUp(workspaceBytes<T>(p))));
    std::unique_ptr<void, FreeDeleter> smemRaw(std::aligned_alloc(128, alignUp(Smem<T>::kBytes)));
    if (!workspace || !smemRaw)
    {
        return fail(HIRN_STATUS_INVALID_ARGUMENT, "out of host memory");
    }
    placeWorkspace<T>(p, t, workspace.get());
    int64_t const inputItems = int64_t(p.n) * p.groups * p.h * p.w * (p.cpg / CPI);
    for (int64_t i = 0; i < inputItems; ++i)
    {
        packInputItem<T, CPI>(p, t.input, t.packed_input, i);
    }
    int64_t const weightItems = int64_t(p.o_blocks) * p.chunks * Layout<T>::kWElems;
    for (int64_t i = 0; i < weightItems; ++i)
    {
        packWeightItem<T>(p, t.weight, t.packed_weight, i);
    }
    Smem<T> sm(static_cast<unsigned char*>(smemRaw.get()));
    auto acc = std::make_unique<HostAccum<T>>();
    int const rows = Layout<T>::kChunkC * p.taps;
    int const items = (Layout<T>::kChunkC / CPI) * p.taps * kTileP;
    for (int n = 0; n < p.n; ++n)
    {
        for (int oBlock = 0; oBlock < p.o_blocks; ++oBlock)
        {
            for (int pix0 = 0; pix0 < p.hw_out; pix0 += kTileP)
            {
                acc->zero();
                for (int chunk = 0; chunk < p.chunks; ++chunk)
                {
                    for (int tid = 0; tid < kThreads; ++tid)
                    {
                        copyWeightTile<T>(t, p, oBlock, chunk, tid, sm.w);
                        for (int it = tid; it < items; it += kThreads)
                        {
                            sampleItem<T, CPI>(p, t, n, pix0, chunk, it, sm.s);
                        }
                    }
                    acc->step(sm.w, sm.s, rows);
                }
                acc->store(sm.c);
                for (int e = 0; e < kTileO * kTileP; ++e)
                {
                    writeOutputItem<T>(p, t, n, pix0, oBlock, e, sm.c);
                }
            }
        }
    }
    return HIRN_STATUS_SUCCESS;
}

template <typename T>
Tensors<T> makeTensors(void const* input, void const* offset, void const* mask, void const* weight,
    void const* bias, void* output)
{
    Tensors<T> t{};
    t.input = static_cast<T const*>(input);
    t.offset = offset;
    t.mask = mask;
    t.weight = static_cast<T const*>(weight);
    t.bias = static_cast<T const*>(bias);
    t.output = static_cast<T*>(output);
    return t;
}

template <typename T>
hirn_status_t dispatch(Problem const& p, Tensors<T> t, void* workspace, cudaStream_t stream, bool host)
{
    // 8-channel vectors need every group to start on a multiple of 8 channels.
    bool const vec = p.cpg % kVec == 0;
    if (host)
    {
        return vec ? runHost<T, kVec>(p, t) : runHost<T, 1>(p, t);
    }
    placeWorkspace<T>(p, t, workspace);
    return vec ? launchForward<T, kVec>(p, t, stream) : launchForward<T, 1>(p, t, stream);
}

hirn_status_t forward(hirn_deform_conv_shape_t const* shape, hirn_dtype_t dtype, hirn_dtype_t offsetDtype,
    hirn_dtype_t maskDtype, void const* input, void const* offset, void const* mask, void const* weight,
    void const* bias, void* output, void* workspace, size_t workspaceBytesGiven, cudaStream_t stream, bool host)
{
    gLastError.clear();
    Problem p{};
    hirn_status_t status = makeProblem(shape, dtype, &p);
    if (status != HIRN_STATUS_SUCCESS)
    {
        return status;
    }
    for (hirn_dtype_t const d : {offsetDtype, maskDtype})
    {
        if (d != dtype && d != HIRN_DTYPE_FLOAT32)
        {
            return fail(HIRN_STATUS_UNSUPPORTED, "offset and mask must be FP32 or the input's dtype");
        }
    }
    p.offset_f32 = offsetDtype == HIRN_DTYPE_FLOAT32;
    p.mask_f32 = maskDtype == HIRN_DTYPE_FLOAT32;
    if (!input || !offset || !weight || !output)
    {
        return fail(HIRN_STATUS_INVALID_ARGUMENT, "input, offset, weight and output must not be NULL");
    }
    if (p.n == 0)
    {
        return HIRN_STATUS_SUCCESS;
    }
    if (!host)
    {
        size_t const need = dtype == HIRN_DTYPE_FLOAT16 ? workspaceBytes<__half>(p) : workspaceBytes<float>(p);
        if (workspace == nullptr || workspaceBytesGiven < need || reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
        {
            return fail(HIRN_STATUS_INVALID_ARGUMENT,
                "workspace must be 16-byte aligned and hold " + std::to_string(need) + " bytes, got "
                    + std::to_string(workspaceBytesGiven));
        }
    }
    if (dtype == HIRN_DTYPE_FLOAT16)
    {
        return dispatch<__half>(p, makeTensors<__half>(input, offset, mask, weight, bias, output), workspace, stream, host);
    }
    return dispatch<float>(p, makeTensors<float>(input, offset, mask, weight, bias, output), workspace, stream, host);
}

} // namespace
} // namespace dcn
} // namespace hirn

using namespace hirn::dcn;

extern "C" {

int hirn_deform_conv_abi_version(void)
{
    return HIRN_DEFORM_CONV_ABI_VERSION;
}

hirn_status_t hirn_deform_conv_output_size(hirn_deform_conv_shape_t const* shape, int* out_h, int* out_w)
{
    gLastError.clear();
    Problem p{};
    hirn_status_t const status = makeProblem(shape, HIRN_DTYPE_FLOAT32, &p);
    if (status == HIRN_STATUS_SUCCESS && out_h && out_w)
    {
        *out_h = p.h_out;
        *out_w = p.w_out;
    }
    return status;
}

hirn_status_t hirn_deform_conv_check(hirn_deform_conv_shape_t const* shape, hirn_dtype_t dtype)
{
    gLastError.clear();
    Problem p{};
    return makeProblem(shape, dtype, &p);
}

size_t hirn_deform_conv_workspace_size(hirn_deform_conv_shape_t const* shape, hirn_dtype_t dtype)
{
    Problem p{};
    if (makeProblem(shape, dtype, &p) != HIRN_STATUS_SUCCESS)
    {
        return 0;
    }
    return dtype == HIRN_DTYPE_FLOAT16 ? workspaceBytes<__half>(p) : workspaceBytes<float>(p);
}

hirn_status_t hirn_deform_conv_forward(hirn_deform_conv_shape_t const* shape, hirn_dtype_t dtype,
    hirn_dtype_t offset_dtype, hirn_dtype_t mask_dtype, void const* input, void const* offset, void const* mask,
    void const* weight, void const* bias, void* output, void* workspace, size_t workspace_bytes,
    cudaStream_t stream)
{
    return forward(shape, dtype, offset_dtype, mask_dtype, input, offset, mask, weight, bias, output, workspace,
        workspace_bytes, stream, false);
}

hirn_status_t hirn_deform_conv_forward_host(hirn_deform_conv_shape_t const* shape, hirn_dtype_t dtype,
    hirn_dtype_t offset_dtype, hirn_dtype_t mask_dtype, void const* input, void const* offset, void const* mask,
    void const* weight, void const* bias, void* output)
{
    return forward(shape, dtype, offset_dtype, mask_dtype, input, offset, mask, weight, bias, output, nullptr, 0,
        nullptr, true);
}

char const* hirn_status_string(hirn_status_t status)
{
    switch (status)
    {
    case HIRN_STATUS_SUCCESS: return "success";
    case HIRN_STATUS_INVALID_ARGUMENT: return "invalid argument";
    case HIRN_STATUS_UNSUPPORTED: return "unsupported";
    case HIRN_STATUS_CUDA_ERROR: return "CUDA error";
    }
    return "unknown status";
}

char const* hirn_deform_conv_last_error(void)
{
    return gLastError.c_str();
}

} // extern "C"
