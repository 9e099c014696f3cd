"""The deformable-convolution CUDA kernel and its TensorRT plugin."""
