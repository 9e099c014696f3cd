"""HiRN in PyTorch: the network, its blocks, SpyNet, the deformable convolution, the step
modules the runtime exports and walks, and checkpoint I/O. Training lives in hirn.train."""

from hirn.core.errors import CheckpointError, HirnError, InputError

from .checkpoint import load_model, load_spynet, save_checkpoint
from .hirn import HiRN

__all__ = ["HiRN", "load_model", "load_spynet", "save_checkpoint", "HirnError", "InputError",
           "CheckpointError"]
