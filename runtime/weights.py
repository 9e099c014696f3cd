"""Which backend a run uses, from the one source of weights given: a checkpoint (torch), an
ONNX folder (onnxruntime) or an engine folder (tensorrt), or the built-in default weights
(``--checkpoint default``, or no weights at all). Loads nothing heavy.

Building the runner is :func:`hirn.runtime.backends.create_runner`'s alone.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from hirn.core.default_weights import DEFAULT_CHECKPOINT, DEFAULT_NAME, DEFAULT_SUMMARY
from hirn.core.errors import BackendError
from hirn.runtime.backends.base import BackendConfig

log = logging.getLogger(__name__)


def infer_backend(config: BackendConfig) -> BackendConfig:
    """Fill in ``backend`` from the one weights option given (``backend=None``: infer);
    ``--checkpoint default`` names the built-in weights, which the torch backend also takes
    when given no weights (an information line says which weights run)."""
    given = {"torch": config.checkpoint, "onnxruntime": config.onnx_dir,
             "tensorrt": config.engines_dir}
    named = {"torch": "--checkpoint", "onnxruntime": "--onnx", "openvino": "--onnx",
             "tensorrt": "--engines"}
    present = [b for b, path in given.items() if path is not None]
    if len(present) > 1:
        raise BackendError(f"{' and '.join(named[b] for b in present)} were both given: "
                           f"pass one source of weights")
    backend = config.backend
    if backend is None:
        backend = present[0] if present else "torch"
    elif present and named[present[0]] != named.get(backend):
        raise BackendError(f"--backend {backend} does not run {named[present[0]]}; "
                           f"{named.get(backend)} is what it needs (or leave --backend out)")
    named_default = config.checkpoint is not None and str(config.checkpoint) == DEFAULT_NAME
    if named_default or (not present and backend == "torch"):
        config = replace(config, checkpoint=DEFAULT_CHECKPOINT)
        log.info("weights: %s", DEFAULT_SUMMARY)
    return replace(config, backend=backend)
