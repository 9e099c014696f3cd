/* Plain C API of HiRN's modulated deformable convolution (DCNv2) CUDA kernel.
 *
 * Semantics are those of torchvision.ops.deform_conv2d (weight groups = 1):
 *   input  [N, C_in, H, W]
 *   offset [N, 2*G*kh*kw, H_out, W_out]  channel 2*(g*kh*kw + k) = dy, +1 = dx of tap k in group g
 *   mask   [N, G*kh*kw, H_out, W_out]    (may be NULL: every mask value is 1)
 *   weight [C_out, C_in, kh, kw]
 *   bias   [C_out]                       (may be NULL: no bias)
 *   output [N, C_out, H_out, W_out]
 * All tensors are dense NCHW. input, weight, bias and output share one dtype (FP32 or FP16);
 * offset and mask are each either FP32 or that dtype (FP32 offsets keep FP16 features' sampling
 * positions exact). Accumulation is FP32. Input channel c belongs to offset group c / (C_in / G).
 */
#ifndef HIRN_DEFORM_CONV_H
#define HIRN_DEFORM_CONV_H

#include <stddef.h>

#include <cuda_runtime_api.h>

#if defined(_WIN32)
#define HIRN_DCN_API __declspec(dllexport)
#else
#define HIRN_DCN_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a signature or struct below changes. */
#define HIRN_DEFORM_CONV_ABI_VERSION 2

typedef enum {
    HIRN_DTYPE_FLOAT32 = 0,
    HIRN_DTYPE_FLOAT16 = 1
} hirn_dtype_t;

typedef enum {
    HIRN_STATUS_SUCCESS = 0,
    HIRN_STATUS_INVALID_ARGUMENT = 1, /* shapes or attributes inconsistent, NULL tensor, workspace too small */
    HIRN_STATUS_UNSUPPORTED = 2,      /* a valid op this kernel does not implement (kh*kw > 9, dtype) */
    HIRN_STATUS_CUDA_ERROR = 3        /* a CUDA call or launch failed */
} hirn_status_t;

typedef struct {
    int batch;       /* N */
    int in_channels; /* C_in */
    int height;      /* H of the input */
    int width;       /* W of the input */
    int out_channels;
    int kernel_h;
    int kernel_w;
    int stride_h;
    int stride_w;
    int pad_h;
    int pad_w;
    int dilation_h;
    int dilation_w;
    int deformable_groups; /* G, must divide C_in */
} hirn_deform_conv_shape_t;

HIRN_DCN_API int hirn_deform_conv_abi_version(void);

/* Output height and width of a shape; HIRN_STATUS_INVALID_ARGUMENT if the shape is not valid. */
HIRN_DCN_API hirn_status_t hirn_deform_conv_output_size(const hirn_deform_conv_shape_t* shape, int* out_h,
                                                        int* out_w);

/* Whether the kernel runs this shape and dtype (same checks as the forward call, no pointers). */
HIRN_DCN_API hirn_status_t hirn_deform_conv_check(const hirn_deform_conv_shape_t* shape, hirn_dtype_t dtype);

/* Bytes of device workspace the forward call needs: the input regrouped channels-last per offset group
 * plus the weights re-laid in per-block tiles. 0 for an invalid shape. */
HIRN_DCN_API size_t hirn_deform_conv_workspace_size(const hirn_deform_conv_shape_t* shape, hirn_dtype_t dtype);

/* Enqueue the convolution on `stream`; device pointers; workspace at least workspace_size() bytes,
 * 16-byte aligned. dtype is that of input, weight, bias and output; offset_dtype and mask_dtype are
 * each HIRN_DTYPE_FLOAT32 or dtype. Returns without synchronising. */
HIRN_DCN_API hirn_status_t hirn_deform_conv_forward(const hirn_deform_conv_shape_t* shape, hirn_dtype_t dtype,
                                                    hirn_dtype_t offset_dtype, hirn_dtype_t mask_dtype,
                                                    const void* input, const void* offset, const void* mask,
                                                    const void* weight, const void* bias, void* output,
                                                    void* workspace, size_t workspace_bytes, cudaStream_t stream);

/* The same computation on the CPU, executing the device kernels' own per-thread code block by block
 * (host pointers, single-threaded, slow). It exists so that the kernels' index arithmetic, packing and
 * tiling are tested where no GPU is present. */
HIRN_DCN_API hirn_status_t hirn_deform_conv_forward_host(const hirn_deform_conv_shape_t* shape, hirn_dtype_t dtype,
                                                         hirn_dtype_t offset_dtype, hirn_dtype_t mask_dtype,
                                                         const void* input, const void* offset, const void* mask,
                                                         const void* weight, const void* bias, void* output);

HIRN_DCN_API const char* hirn_status_string(hirn_status_t status);

/* What the last failing call on this thread objected to ("" if none). */
HIRN_DCN_API const char* hirn_deform_conv_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* HIRN_DEFORM_CONV_H */
