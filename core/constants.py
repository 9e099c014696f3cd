"""Numbers of the HiRN architecture that every package needs, defined once."""

from __future__ import annotations

SCALE = 4            # HR side / LR side
MIN_SIZE = 64        # the smallest LR height and width the network takes
SIZE_MULTIPLE = 2    # LR sides must be even: SpyNet's pyramid halves them

# Graphs that run in FP32 in every precision: flows and their chaining lose sub-pixel
# accuracy in half precision (sampling grids at high resolution).
FP32_GRAPHS = ("flow", "compose")

# fp16: features in float16 (GPUs); bf16: features in bfloat16 (CPUs that compute it natively)
PRECISIONS = ("fp32", "fp16", "bf16")
