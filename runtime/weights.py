"""Which weights a run uses: a checkpoint of any model size, an ONNX folder, or the demo's
untrained model; and the runner that executes them.

``hirn.train.load_model`` builds the published configuration (64 channels, 7 blocks) unless
told otherwise; a checkpoint of another size (a small model trained for a quick test) carries
its configuration in its weight shapes, which :func:`checkpoint_config` reads back.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from hirn.core.errors import BackendError
from hirn.runtime.backends import BackendConfig, Runner, create_runner

DEMO_SEED = 0  # the demo's untrained weights: HiRN() right after torch.manual_seed(0)
_BLOCK_KEY = re.compile(r"backbone\.backward_1\.main\.2\.(\d+)\.")
_CHANNELS_KEY = "feat_extract.main.0.weight"


def checkpoint_config(path: str | Path) -> dict:
    """``HiRN`` constructor arguments (mid_channels, num_blocks) read from a checkpoint's
    weight shapes; empty when they cannot be read (``load_model`` then reports why)."""
    import torch

    from hirn.train.checkpoint import extract_state_dict

    try:
        state = extract_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception:  # torch raises many types for a damaged file; load_model says which
        return {}
    weight = state.get(_CHANNELS_KEY)
    blocks = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))}
    if weight is None or weight.dim() != 4 or not blocks:
        return {}
    return {"mid_channels": int(weight.shape[0]), "num_blocks": max(blocks) + 1}


def untrained_model():
    """The published architecture with random weights (seeded: the same on every machine)."""
    import torch

    from hirn.train import HiRN

    torch.manual_seed(DEMO_SEED)
    return HiRN().eval()


def build_runner(config: BackendConfig, *, untrained: bool = False) -> Runner:
    """The runner of ``config``; ``untrained`` allows the torch backend without a checkpoint
    (the demo), which a real run refuses."""
    if config.backend != "torch":
        return create_runner(config)
    if config.checkpoint is None and not untrained:
        raise BackendError("no weights given: pass --checkpoint FILE (a .pth of HiRN), "
                           "--onnx DIR (from hirn-export onnx) or --engines DIR")
    from hirn.runtime.backends.torch_backend import TorchRunner
    from hirn.train import load_model

    if config.checkpoint is None:
        model = untrained_model()
    else:
        model = load_model(config.checkpoint, **checkpoint_config(config.checkpoint))
    return TorchRunner.from_config(config, model)


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
