"""Errors of the deformable-convolution kernel: building it, loading it, calling it.

Bugs stay plain exceptions; these are for a user's machine, tensors and options.
"""

from __future__ import annotations

from hirn.train.errors import HirnError


class KernelBuildError(HirnError):
    """nvcc is missing, or compiling or loading the kernel library failed."""


class KernelInputError(HirnError, ValueError):
    """Tensors or attributes the kernel cannot take (shape, dtype, device, layout)."""


class KernelRuntimeError(HirnError, RuntimeError):
    """A CUDA error while launching the kernel (e.g. no code for this GPU's architecture)."""
