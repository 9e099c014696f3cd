"""HiRN in PyTorch: the model, its checkpoints, and (later) training."""

from .checkpoint import load_model, load_spynet, save_checkpoint
from .errors import CheckpointError, HirnError, InputError
from .hirn import HiRN

__all__ = ["HiRN", "load_model", "load_spynet", "save_checkpoint", "HirnError", "InputError",
           "CheckpointError"]
