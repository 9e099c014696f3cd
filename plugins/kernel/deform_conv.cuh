// Per-thread building blocks of the fused deformable-convolution kernel.
//
// Every function here is __host__ __device__ and works on one thread's share of a block's work, so the
// CUDA kernels (deform_conv.cu) and the CPU emulation of those kernels run the very same index arithmetic.
//
// Algorithm (implicit GEMM, nothing materialised in global memory):
//   out[o, p] = bias[o] + sum_k W[o, k] * S[k, p],   k = c * taps + tap,  S = mask * bilinear(input)
// A block owns kTileP output pixels (a run of the flattened H_out*W_out plane) of one image and kTileO
// output channels. It walks the K dimension in chunks of kChunkC input channels: copies that chunk's
// pre-laid weight tile into shared memory, samples the matching S rows (each thread handles one pixel x
// tap x group of up to 8 channels: one offset/mask read and four 16-byte corner reads from the input
// regrouped channels-last per offset group), then multiplies the two tiles (FP16: tensor cores via WMMA,
// FP32: CUDA-core FMA), accumulating in FP32 registers.
#pragma once

#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace hirn
{
namespace dcn
{

constexpr int kThreads = 256; // threads per block
constexpr int kTileP = 128;   // output pixels per block
constexpr int kTileO = 64;    // output channels per block
constexpr int kMaxTaps = 9;   // kh * kw the shared-memory tiles are sized for
constexpr int kVec = 8;       // channels per sampling item when C_in / G is a multiple of 8
constexpr int kLdC = kTileP + 4; // row pitch (floats) of the FP32 result tile

// Shape of one call, validated and derived on the host.
struct Problem
{
    int n, c_in, h, w, c_out, kh, kw, sh, sw, ph, pw, dh, dw, groups;
    int cpg;    // input channels per offset group
    int taps;   // kh * kw
    int h_out, w_out, hw_out;
    int chunks;   // ceil(c_in / kChunkC)
    int o_blocks; // ceil(c_out / kTileO)
    bool offset_f32; // offsets are FP32 (else the features' dtype)
    bool mask_f32;   // mask is FP32 (else the features' dtype)
};

template <typename T>
struct Tensors
{
    T const* input;  // [N, C_in, H, W]
    void const* offset; // [N, 2*G*taps, H_out, W_out], T or float (Problem::offset_f32)
    void const* mask;   // [N, G*taps, H_out, W_out], T or float (Problem::mask_f32), or nullptr
    T const* weight; // [C_out, C_in, kh, kw]
    T const* bias;   // [C_out] or nullptr
    T* output;       // [N, C_out, H_out, W_out]
    T* packed_input; // workspace: [N, G, H, W, C_in/G]
    T* packed_weight; // workspace: [o_blocks, chunks] tiles of Layout<T>::kWElems
};

// Shared-memory tile geometry per dtype. Row pitches are padded so that tensor-core fragment loads and
// 16-byte vector reads hit distinct banks; all sub-arrays start at multiples of 32 bytes (WMMA needs it).
template <typename T>
struct Layout;

template <>
struct Layout<float>
{
    static constexpr int kChunkC = 8;                 // input channels per K chunk
    static constexpr int kRows = kChunkC * kMaxTaps;  // K rows per chunk (at most)
    static constexpr int kLdW = kTileO + 4;           // weights stored transposed: [row][o]
    static constexpr int kWElems = kRows * kLdW;
    static constexpr int kLdS = kTileP + 4;           // sampled columns: [row][pixel]
    static constexpr int kSElems = kRows * kLdS;
    static constexpr bool kWeightRowIsO = false;
};

template <>
struct Layout<__half>
{
    static constexpr int kChunkC = 16; // 16 * taps rows: always a multiple of the MMA depth 16
    static constexpr int kRows = kChunkC * kMaxTaps;
    static constexpr int kLdW = kRows + 8; // weights stored [o][row] (WMMA matrix_a, row-major)
    static constexpr int kWElems = kTileO * kLdW;
    static constexpr int kLdS = kTileP + 8; // [row][pixel] (WMMA matrix_b, row-major)
    static constexpr int kSElems = kRows * kLdS;
    static constexpr bool kWeightRowIsO = true;
};

template <typename T>
struct Smem
{
    static constexpr size_t kOpBytes = (Layout<T>::kWElems + Layout<T>::kSElems) * sizeof(T);
    static constexpr size_t kCBytes = size_t(kTileO) * kLdC * sizeof(float);
    static constexpr size_t kBytes = kOpBytes > kCBytes ? kOpBytes : kCBytes;
    static_assert(Layout<T>::kWElems * sizeof(T) % 32 == 0, "sampled tile must start 32-byte aligned");

    T* w;     // weight tile of the current chunk
    T* s;     // sampled, modulated columns of the current chunk
    float* c; // FP32 result tile; aliases w and s once the K loop is over

    __host__ __device__ explicit Smem(unsigned char* base)
        : w(reinterpret_cast<T*>(base))
        , s(reinterpret_cast<T*>(base) + Layout<T>::kWElems)
        , c(reinterpret_cast<float*>(base))
    {
    }
};

__host__ __device__ inline float toFloat(float v)
{
    return v;
}
__host__ __device__ inline float toFloat(__half v)
{
    return __half2float(v);
}
template <typename T>
__host__ __device__ inline T fromFloat(float v);
template <>
__host__ __device__ inline float fromFloat<float>(float v)
{
    return v;
}
template <>
__host__ __device__ inline __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}

// Element i of an offset or mask tensor that holds either T or float. FP16 features may come with
// FP32 offsets, so that positions far from the origin keep their fraction (FP16's spacing is 1 px
// beyond 1024). The flag is uniform across a launch, so the branch never diverges.
template <typename T>
__host__ __device__ inline float loadPosition(void const* base, bool f32, int64_t i)
{
    return f32 ? static_cast<float const*>(base)[i] : toFloat(static_cast<T const*>(base)[i]);
}

// N consecutive channels; whole-struct copies compile to 16-byte loads and stores.
template <typename T, int N>
struct alignas(sizeof(T) * N >= 16 ? 16 : sizeof(T) * N) Vec
{
    T x[N];
};

// Regroup the input [N, C, H, W] -> [N, G, H, W, C/G]: item = (image*group, pixel, channel vector).
template <typename T, int CPI>
__host__ __device__ inline void packInputItem(Problem const& p, T const* in, T* packed, int64_t item)
{
    int const vecs = p.cpg / CPI;
    int64_t const hw = int64_t(p.h) * p.w;
    int const cv = int(item % vecs);
    int64_t const rest = item / vecs;
    int64_t const pix = rest % hw;
    int64_t const ng = rest / hw; // n * G + g
    T const* src = in + (ng * p.cpg + int64_t(cv) * CPI) * hw + pix;
    Vec<T, CPI> v;
#pragma unroll
    for (int k = 0; k < CPI; ++k)
    {
        v.x[k] = src[k * hw];
    }
    *reinterpret_cast<Vec<T, CPI>*>(packed + (ng * hw + pix) * p.cpg + int64_t(cv) * CPI) = v;
}

// One element of the weight tiles: tile (o_block, chunk) holds W[o, c*taps + tap] for the chunk's
// channels in the layout the block's shared memory wants, zeros where o or c is past the tensor.
template <typename T>
__host__ __device__ inline void packWeightItem(Problem const& p, T const* weight, T* packed, int64_t idx)
{
    using L = Layout<T>;
    int64_t const tile = idx / L::kWElems;
    int const e = int(idx % L::kWElems);
    int const oBlock = int(tile / p.chunks);
    int const chunk = int(tile % p.chunks);
    int const o = L::kWeightRowIsO ? e / L::kLdW : e % L::kLdW;
    int const r = L::kWeightRowIsO ? e % L::kLdW : e / L::kLdW;
    int const og = oBlock * kTileO + o;
    int const c = chunk * L::kChunkC + r / p.taps;
    bool const valid = o < kTileO && r < L::kChunkC * p.taps && og < p.c_out && c < p.c_in;
    packed[idx] = valid ? weight[(int64_t(og) * p.c_in + c) * p.taps + r % p.taps] : fromFloat<T>(0.f);
}

// Copy the pre-laid weight tile of (oBlock, chunk) into shared memory, 16 bytes per access.
template <typename T>
__host__ __device__ inline void copyWeightTile(Tensors<T> const& t, Problem const& p, int oBlock, int chunk,
    int tid, T* sw)
{
    constexpr int kWords = Layout<T>::kWElems * int(sizeof(T)) / 16;
    uint4 const* src = reinterpret_cast<uint4 const*>(
        t.packed_weight + (int64_t(oBlock) * p.chunks + chunk) * Layout<T>::kWElems);
    uint4* dst = reinterpret_cast<uint4*>(sw);
    for (int i = tid; i < kWords; i += kThreads)
    {
        dst[i] = src[i];
    }
}

// Sampling item = (pixel, tap, vector of CPI channels of one group) within the current chunk. Writes the
// CPI modulated bilinear samples into rows (c_local + i) * taps + tap of the shared S tile (zeros when
// the channel or pixel lies past the tensor, so that stale rows from the previous chunk never count).
template <typename T, int CPI>
__host__ __device__ inline void sampleItem(
    Problem const& p, Tensors<T> const& t, int n, int pix0, int chunk, int item, T* s)
{
    using L = Layout<T>;
    int const px = item % kTileP;
    int const rest = item / kTileP;
    int const tap = rest % p.taps;
    int const cLocal = (rest / p.taps) * CPI;
    int const c = chunk * L::kChunkC + cLocal;
    int const pixel = pix0 + px;

    float acc[CPI];
#pragma unroll
    for (int i = 0; i < CPI; ++i)
    {
        acc[i] = 0.f;
    }
    if (c < p.c_in && pixel < p.hw_out)
    {
        int const g = c / p.cpg;
        int const oy = pixel / p.w_out;
        int const ox = pixel - oy * p.w_out;
        int const ki = tap / p.kw;
        int const kj = tap - ki * p.kw;
        int64_t const hwOut = p.hw_out;
        int const gt = g * p.taps + tap;
        int64_t const off = (int64_t(n) * 2 * p.groups * p.taps + 2 * gt) * hwOut + pixel;
        float const dy = loadPosition<T>(t.offset, p.offset_f32, off);
        float const dx = loadPosition<T>(t.offset, p.offset_f32, off + hwOut);
        float const m = t.mask
            ? loadPosition<T>(t.mask, p.mask_f32, (int64_t(n) * p.groups * p.taps + gt) * hwOut + pixel)
            : 1.f;
        // Same expression as torchvision: integer base position plus the fractional offset.
        float const y = float(oy * p.sh - p.ph + ki * p.dh) + dy;
        float const x = float(ox * p.sw - p.pw + kj * p.dw) + dx;
        // torchvision's rule: a sample at or beyond one pixel outside reads 0 (also rejects NaN).
        if (y > -1.f && y < float(p.h) && x > -1.f && x < float(p.w))
        {
            int const y0 = int(floorf(y));
            int const x0 = int(floorf(x));
            float const ly = y - float(y0);
            float const lx = x - float(x0);
            float const hy = 1.f - ly;
            float const hx = 1.f - lx;
            T const* base = t.packed_input + (int64_t(n) * p.groups + g) * p.h * int64_t(p.w) * p.cpg
                + (c - g * p.cpg);
            int const ys[2] = {y0, y0 + 1};
            int const xs[2] = {x0, x0 + 1};
            float const wy[2] = {hy * m, ly * m};
            float const wx[2] = {hx, lx};
#pragma unroll
            for (int a = 0; a < 2; ++a)
            {
#pragma unroll
                for (int b = 0; b < 2; ++b)
                {
                    // Corners outside the input count as zero.
                    if (ys[a] >= 0 && ys[a] < p.h && xs[b] >= 0 && xs[b] < p.w)
                    {
                        Vec<T, CPI> const v = *reinterpret_cast<Vec<T, CPI> const*>(
                            base + (int64_t(ys[a]) * p.w + xs[b]) * p.cpg);
                        float const wgt = wy[a] * wx[b];
#pragma unroll
                        for (int i = 0; i < CPI; ++i)
                        {
                            acc[i] += wgt * toFloat(v.x[i]);
                        }
                    }
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < CPI; ++i)
    {
        s[((cLocal + i) * p.taps + tap) * L::kLdS + px] = fromFloat<T>(acc[i]);
    }
}

// FP32 tile product on CUDA cores: thread (to, tp) owns output channels to*4..+3 and pixels
// tp*4..+3 and 64+tp*4..+3 of the 64 x 128 tile.
struct FmaAccum
{
    float v[4][8];

    __host__ __device__ void zero()
    {
#pragma unroll
        for (int i = 0; i < 4; ++i)
        {
#pragma unroll
            for (int j = 0; j < 8; ++j)
            {
                v[i][j] = 0.f;
            }
        }
    }

    __host__ __device__ void step(float const* w, float const* s, int rows, int tid)
    {
        using L = Layout<float>;
        int const to = tid / 16;
        int const tp = tid % 16;
#pragma unroll 4
        for (int r = 0; r < rows; ++r)
        {
            float4 const a = *reinterpret_cast<float4 const*>(w + r * L::kLdW + to * 4);
            float4 const b0 = *reinterpret_cast<float4 const*>(s + r * L::kLdS + tp * 4);
            float4 const b1 = *reinterpret_cast<float4 const*>(s + r * L::kLdS + kTileP / 2 + tp * 4);
            float const av[4] = {a.x, a.y, a.z, a.w};
            float const bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
            {
#pragma unroll
                for (int j = 0; j < 8; ++j)
                {
#if defined(__CUDA_ARCH__)
                    v[i][j] = fmaf(av[i], bv[j], v[i][j]);
#else
                    v[i][j] += av[i] * bv[j]; // libm's fmaf is emulated (slow) on CPUs built without FMA
#endif
                }
            }
        }
    }

    __host__ __device__ void store(float* c, int tid) const
    {
        int const to = tid / 16;
        int const tp = tid % 16;
#pragma unroll
        for (int i = 0; i < 4; ++i)
        {
#pragma unroll
            for (int j = 0; j < 4; ++j)
            {
                c[(to * 4 + i) * kLdC + tp * 4 + j] = v[i][j];
                c[(to * 4 + i) * kLdC + kTileP / 2 + tp * 4 + j] = v[i][j + 4];
            }
        }
    }
};

// Output element e of the block's tile: add the bias in FP32, round once to T.
template <typename T>
__host__ __device__ inline void writeOutputItem(
    Problem const& p, Tensors<T> const& t, int n, int pix0, int oBlock, int e, float const* c)
{
    int const o = e / kTileP;
    int const px = e % kTileP;
    int const og = oBlock * kTileO + o;
    int const pixel = pix0 + px;
    if (og < p.c_out && pixel < p.hw_out)
    {
        float const b = t.bias ? toFloat(t.bias[og]) : 0.f;
        t.output[(int64_t(n) * p.c_out + og) * p.hw_out + pixel] = fromFloat<T>(c[o * kLdC + px] + b);
    }
}

} // namespace dcn
} // namespace hirn
