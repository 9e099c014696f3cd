"""HiRN in PyTorch: the model, its checkpoints, and (later) training."""

from hirn.core.errors import CheckpointError, HirnError, InputError

from .checkpoint import load_model, load_spynet, save_checkpoint
from .hirn import HiRN

__all__ = ["HiRN", "load_model", "load_spynet", "save_checkpoint", "HirnError", "InputError",
           "CheckpointError"]
