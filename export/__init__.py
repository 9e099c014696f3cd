"""Per-step ONNX graphs, their manifest, and TensorRT engines."""
