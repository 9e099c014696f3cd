"""One process or many (``torchrun``): rank, device, DDP wrapping, collectives.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (read by
:class:`hirn.core.launch.ProcessLayout`); without them the run is a single
process and every helper here is a no-op.
"""

from __future__ import annotations

import datetime
import hashlib
import inspect

import torch
import torch.distributed as dist
from torch import nn

from hirn.core.errors import HirnError
from hirn.core.launch import ProcessLayout

Dist = ProcessLayout  # rank, world_size, local_rank; main: the process that writes files


def from_env() -> Dist:
    """The process layout torchrun announced (one process when it did not)."""
    return Dist.from_env()


def pick_device(option: str, d: Dist) -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` (this process's GPU) / ``cuda:N`` (one process only)."""
    if option == "auto":
        option = "cuda" if torch.cuda.is_available() else "cpu"
    if option.startswith("cuda"):
        if not torch.cuda.is_available():
            raise HirnError(f"--device {option}: no CUDA GPU is available; use --device cpu")
        if option == "cuda":
            option = f"cuda:{d.local_rank}"
        elif d.world_size > 1:
            raise HirnError("--device cuda:N picks one GPU; under torchrun use --device cuda "
                            "(each process takes the GPU of its LOCAL_RANK)")
        torch.cuda.set_device(torch.device(option))
    elif option != "cpu":
        raise HirnError(f"--device {option!r} is not understood; use auto, cpu, cuda or cuda:N")
    return torch.device(option)


def init(d: Dist, device: torch.device, backend: str | None) -> None:
    """Join the process group (gloo on CPU, NCCL on CUDA unless ``backend`` says)."""
    if d.world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=60))


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """DDP over the parameters that require grad now (rebuild when that set changes).

    Frozen parameters (SpyNet during ``fix_flow``) are left out of the reducer,
    so no ``find_unused_parameters`` graph walk is needed on each iteration.
    """
    if d.world_size == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # SpyNet's mean/std buffers are constants: no need to broadcast them each step
    # (the option was renamed in recent PyTorch).
    key = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
           else "broadcast_buffers")
    return ddp(model, device_ids=ids, **{key: False})


def mean(value: torch.Tensor, d: Dist) -> float:
    """The mean of a scalar tensor over the processes."""
    if d.world_size > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= d.world_size
    return float(value)


def gather(obj: object, d: Dist) -> list:
    """Every process's ``obj``, in rank order."""
    if d.world_size == 1:
        return [obj]
    out: list = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def agree_stop(signum: int, d: Dist, device: torch.device) -> int:
    """The stop signal any process received (0: none), the same in every process.

    Called once per iteration, so that all processes stop at the same one: a one-integer
    all_reduce, next to a step's gradient all_reduces (and the loss is read on the CPU each
    iteration anyway, so it adds no GPU synchronisation).
    """
    if d.world_size == 1:
        return signum
    flag = torch.tensor([signum], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def barrier(d: Dist) -> None:
    if d.world_size > 1:
        dist.barrier()


def checksum(model: nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in state-dict order."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
