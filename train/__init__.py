"""Training, data, evaluation and the metrics of HiRN (hirn-train, hirn-eval, hirn-prepare).

The model itself is :mod:`hirn.model`; its main names are also here, as they were."""

from hirn.core.errors import CheckpointError, HirnError, InputError
from hirn.model import HiRN, load_model, load_spynet, save_checkpoint

__all__ = ["HiRN", "load_model", "load_spynet", "save_checkpoint", "HirnError", "InputError",
           "CheckpointError"]
