"""Which backend a run uses, from the one source of weights given: a checkpoint (torch), an
ONNX folder (onnxruntime) or an engine folder (tensorrt). Loads nothing heavy.

Building the runner is :func:`hirn.runtime.backends.create_runner`'s alone.
"""

from __future__ import annotations

from dataclasses import replace

from hirn.core.errors import BackendError
from hirn.runtime.backends.base import BackendConfig


def infer_backend(config: BackendConfig) -> BackendConfig:
    """Fill in ``backend`` from the one weights option given (``backend=None``: infer)."""
    given = {"torch": config.checkpoint, "onnxruntime": config.onnx_dir,
             "tensorrt": config.engines_dir}
    named = {"torch": "--checkpoint", "onnxruntime": "--onnx", "tensorrt": "--engines"}
    present = [b for b, path in given.items() if path is not None]
    if len(present) > 1:
        raise BackendError(f"{' and '.join(named[b] for b in present)} were both given: "
                           f"pass one source of weights")
    backend = config.backend
    if backend is None:
        backend = present[0] if present else "torch"
    elif present and present[0] != backend:
        raise BackendError(f"--backend {backend} does not run {named[present[0]]}; "
                           f"{named[backend]} is what it needs (or leave --backend out)")
    return replace(config, backend=backend)
