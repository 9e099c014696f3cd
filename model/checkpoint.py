"""Reading and writing HiRN checkpoints in the published format.

A published checkpoint is a dict with the state dict under ``params`` (and
``params_ema`` when trained with EMA). Bare state dicts and ``module.``
prefixes (DataParallel / DDP) are accepted too. A checkpoint describes its own
model size: the weight shapes give ``mid_channels`` and ``num_blocks``, and a
``model`` entry (written by ``hirn-train``) states them too; other top-level
entries (``provenance``, ...) are ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from hirn.core.errors import CheckpointError, is_out_of_memory
from hirn.core.files import atomic_file

PARAM_KEYS = ("params", "params_ema")
MODEL_KEY = "model"  # {"mid_channels": ..., "num_blocks": ...}, when the checkpoint says
MODEL_OPTIONS = ("mid_channels", "num_blocks")  # the HiRN arguments a checkpoint decides
_SHOWN = 5  # keys listed per kind of mismatch
# Weights whose shapes give the model size: the first convolution's output channels, and the
# residual blocks of one propagation backbone (every backbone has as many).
_CHANNELS_KEY = "feat_extract.main.0.weight"
_BACKBONE_KEY = "backbone.backward_1.main.0.weight"
_BLOCK_KEY = re.compile(r"backbone\.backward_1\.main\.2\.(\d+)\.")


def _read(path: str | os.PathLike, map_location) -> object:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file: pass the path "
                              f"of a .pth file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        if is_out_of_memory(exc):  # not the file's fault: said as such by the command
            raise
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''} - is it a "
                              "complete PyTorch .pth file?") from exc


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(v, Tensor) for v in obj.values())


def extract_state_dict(checkpoint: object, param_key: str | None = None,
                       source: str = "checkpoint") -> dict[str, Tensor]:
    """The state dict inside a loaded checkpoint, ``module.`` prefixes removed; other
    top-level entries (``model``, ``provenance``, ...) are ignored.

    Args:
        checkpoint: what ``torch.load`` returned.
        param_key: ``params`` or ``params_ema``; default ``params``, else the
            only one present. Ignored for a bare state dict.
        source: how to name the checkpoint in errors.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source} holds a {type(checkpoint).__name__}, not a dict of "
                              "weights")
    present = [k for k in PARAM_KEYS if k in checkpoint]
    if present:
        if param_key is None:
            param_key = "params" if "params" in present else present[0]
        elif param_key not in checkpoint:
            raise CheckpointError(f"{source} has no {param_key!r} entry; it has {present}")
        state = checkpoint[param_key]
    elif param_key is not None and param_key in checkpoint:
        state = checkpoint[param_key]
    elif _is_state_dict(checkpoint):
        state = checkpoint
    else:
        keys = list(checkpoint)[:_SHOWN]
        raise CheckpointError(f"{source} has neither 'params' nor 'params_ema' and is not a "
                              f"state dict (top-level keys: {keys}); pass param_key to pick one")
    if not _is_state_dict(state):
        raise CheckpointError(f"{source}[{param_key!r}] is not a state dict of tensors")
    prefix = "module."
    if all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(f'"{k}"' for k in keys[:_SHOWN])
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return shown + more


def check_state_dict(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], source: str,
                     target: str = "HiRN", strict: bool = True) -> None:
    """Raise :class:`CheckpointError` describing every mismatch with ``expected``."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k}: {list(state[k].shape)} vs model {list(expected[k].shape)}"
                   for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if strict and missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if strict and unexpected:
        hint = ""
        if any(k.startswith("module.") for k in unexpected):
            hint = " (some start with 'module.': a mix of prefixed and plain keys)"
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}{hint}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} keys with the wrong shape: {_listing(wrong_shape)}")
    if problems:
        raise CheckpointError(f"{source} does not fit {target}:\n  " + "\n  ".join(problems)
                              + "\nIs it a checkpoint of the same model and configuration?")


def config_from_shapes(state: Mapping[str, Tensor]) -> dict[str, int]:
    """``mid_channels`` and ``num_blocks`` read from a state dict's weight shapes; only those
    that can be read (a state dict of another network gives none)."""
    config = {}
    weight = state.get(_CHANNELS_KEY)
    if isinstance(weight, Tensor) and weight.dim() == 4:
        config["mid_channels"] = int(weight.shape[0])
    if _BACKBONE_KEY in state:
        blocks = [int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))]
        config["num_blocks"] = max(blocks) + 1 if blocks else 0
    return config


def model_config(checkpoint: object, state: Mapping[str, Tensor],
                 source: str = "checkpoint") -> dict[str, int]:
    """The ``HiRN`` arguments a checkpoint was trained with.

    Its ``model`` entry (what ``hirn-train`` writes) where present, checked against the
    weight shapes (a disagreement means that one of them was edited); the shapes fill in
    what it lacks, and alone describe published and older checkpoints.
    """
    shapes = config_from_shapes(state)
    stated = checkpoint.get(MODEL_KEY) if isinstance(checkpoint, Mapping) else None
    if stated is None:
        return shapes
    if not isinstance(stated, Mapping):
        raise CheckpointError(f"{source}[{MODEL_KEY!r}] is a {type(stated).__name__}, not a "
                              f"dict of model options such as {list(MODEL_OPTIONS)}")
    stated = {k: stated[k] for k in MODEL_OPTIONS if k in stated}
    if conflicts := [f"{k}={stated[k]} (weights: {shapes[k]})" for k in stated
                     if k in shapes and stated[k] != shapes[k]]:
        raise CheckpointError(f"{source} states {', '.join(conflicts)}: its {MODEL_KEY!r} "
                              "entry and its weights disagree; was one of them edited?")
    return {**shapes, **stated}


def _target(model: nn.Module) -> str:
    target = type(model).__name__
    if hasattr(model, "mid_channels"):
        target += f" (mid_channels={model.mid_channels}, num_blocks={model.num_blocks})"
    return target


def check_finite(state: Mapping[str, Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` naming the first weight with NaN or Inf values (such
    weights make every output NaN: black frames)."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{source} has weights that are not finite (NaN or Inf), "
                                  f"first in {key!r}: the file is damaged or its training "
                                  f"diverged; use another checkpoint")


def _load_into(model: nn.Module, state: Mapping[str, Tensor], source: str,
               strict: bool) -> nn.Module:
    check_state_dict(model.state_dict(), state, source, _target(model), strict=strict)
    check_finite(state, source)
    model.load_state_dict(state, strict=strict)
    return model


def load_state(model: nn.Module, path: str | os.PathLike, *, param_key: str | None = None,
               strict: bool = True, map_location="cpu") -> nn.Module:
    """Load a checkpoint file into ``model`` (in place) and return it."""
    state = extract_state_dict(_read(path, map_location), param_key, source=str(path))
    return _load_into(model, state, str(path), strict)


def load_model(path: str | os.PathLike, *, param_key: str | None = None, strict: bool = True,
               map_location="cpu", **config):
    """Build a :class:`HiRN` of the checkpoint's size from a checkpoint file, in eval mode.

    The file is read once; ``mid_channels`` and ``num_blocks`` come from its weight shapes
    (and its ``model`` entry, see :func:`model_config`).

    Args:
        path: a ``.pth`` checkpoint (published format, bare state dict, or
            with ``module.`` prefixes).
        param_key: ``params`` or ``params_ema`` (default: ``params``, else the
            only one present).
        strict: require every key to match.
        map_location: passed to ``torch.load``.
        **config: ``HiRN`` constructor arguments; they win over what the checkpoint says
            (what neither gives: the published model's).
    """
    from .hirn import HiRN

    checkpoint = _read(path, map_location)
    state = extract_state_dict(checkpoint, param_key, source=str(path))
    model = HiRN(**{**model_config(checkpoint, state, str(path)), **config})
    _load_into(model, state, str(path), strict)
    return model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu"
                    ).eval()


def save_checkpoint(path: str | os.PathLike, params: nn.Module | Mapping[str, Tensor],
                    params_ema: nn.Module | Mapping[str, Tensor] | None = None, *,
                    model: Mapping | None = None, provenance: Mapping | None = None) -> Path:
    """Write ``{"params": ..., ["params_ema", "model", "provenance"]}`` atomically.

    ``torch.load(path)["params"]`` reads it as any published checkpoint, also with
    ``weights_only=True``: which is why ``model`` and ``provenance`` may hold only plain
    values (dict, list, str, int, float, bool, None).

    Args:
        model: the ``HiRN`` options, ``{"mid_channels", "num_blocks"}``.
        provenance: where the weights come from (``hirn-train``: configuration name,
            iteration, data roots, hirn version, date).
    """
    def state_of(obj):
        obj = obj.state_dict() if isinstance(obj, nn.Module) else obj
        return {k: v.detach().cpu() for k, v in obj.items()}

    checkpoint = {"params": state_of(params)}
    if params_ema is not None:
        checkpoint["params_ema"] = state_of(params_ema)
    for key, value in (("model", model), ("provenance", provenance)):
        if value is not None:
            checkpoint[key] = _plain(value, key)
    with atomic_file(path) as f:
        torch.save(checkpoint, f)
    return Path(path)


def _plain(value, where: str):
    """``value`` as plain dicts and lists, checked to load with ``weights_only=True``."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"checkpoint entry {where} is a {type(value).__name__}: only dict, list, "
                    "str, int, float, bool and None load with weights_only=True")


def load_spynet(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Initialise ``model.spynet`` from SpyNet weights (e.g. ``spynet_sintel_final.pth``).

    The file maps ``basic_module.*`` (optionally prefixed ``spynet.``) to
    tensors; the mean/std buffers keep their fixed values when absent.
    """
    state = extract_state_dict(_read(path, "cpu"), source=str(path))
    state = {k.removeprefix("spynet."): v for k, v in state.items()}
    # The mean/std buffers are constants: files without them keep ours.
    expected = {k: v for k, v in model.spynet.state_dict().items()
                if k in state or k not in ("mean", "std")}
    check_state_dict(expected, state, str(path), "SpyNet")
    model.spynet.load_state_dict(state, strict=False)
    return model
