"""Every exception hirn raises for a user's mistake, in one hierarchy.

Bugs stay plain exceptions. Each class says which kind of input was wrong; the
message says what was wrong, what was expected and what to do. ``is_out_of_memory`` tells
memory running out from the other exceptions of libraries.
"""

from __future__ import annotations

import errno


class HirnError(Exception):
    """Base of every error caused by input, files or options a user gave."""


# --- the model and its weights ---------------------------------------------------------------

class InputError(HirnError, ValueError):
    """A tensor, frame or clip the model cannot take as given."""


class CheckpointError(HirnError, ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


# --- training and evaluation -------------------------------------------------------------------

class ConfigError(HirnError, ValueError):
    """A training configuration that cannot be used as written."""


class DataError(HirnError):
    """A data folder, clip or frame that is missing or does not fit."""


class DatasetError(HirnError):
    """A data root, clip or frame folder that is missing or does not fit the protocol."""


# --- exported graphs and engines ---------------------------------------------------------------

class ModelFolderError(HirnError):
    """An exported folder that is missing, incomplete, altered or of another version."""


class EngineBuildError(HirnError):
    """Options, graphs or a machine that an engine build cannot use; TensorRT missing."""


class EngineFolderError(HirnError):
    """An engine folder that is missing, incomplete, altered, or built for another
    TensorRT version or GPU."""


class ProfileError(HirnError, ValueError):
    """A frame size or batch outside the optimization profile the engines were built for."""


# --- the runtime -------------------------------------------------------------------------------

class BackendError(HirnError):
    """A backend that cannot be used as asked (missing package, provider or device)."""


class MediaError(HirnError):
    """A video or image folder that cannot be read or written as asked."""


class SourceError(MediaError, ValueError):
    """An input that is missing, not a video, empty, or whose images differ in size."""


class DecodeError(SourceError):
    """A video or image that stopped decoding part-way (unreadable or truncated).

    Args:
        frames_read: how many frames were decoded before the failure.
    """

    def __init__(self, message: str, frames_read: int):
        super().__init__(message)
        self.frames_read = frames_read


class DamagedFramesError(SourceError):
    """Frames the decoder marked corrupt (it concealed the damage), refused under --strict."""


class SinkError(MediaError):
    """An output that cannot be written: it exists, is the input, its folder is not
    writable or is full, or the codec does not fit the container."""


class OutputExistsError(SinkError):
    """An output that exists already, where replacing it was not asked for.

    Args:
        path: the output.
        why: what was found, e.g. "already exists".
    """

    def __init__(self, path, why: str = "already exists"):
        super().__init__(f"{path} {why}: pass overwrite=True to replace it, or choose "
                         f"another output")
        self.path, self.why = path, why


class ResumeError(MediaError):
    """A work folder of --resume made for another input or other options, or damaged."""


class WindowMemoryError(MediaError):
    """A window of the requested size cannot fit in the memory this run has."""


class TileError(HirnError, ValueError):
    """A ``--tile`` size or ``--tile-overlap`` the network cannot run."""


class NonFiniteOutputError(HirnError):
    """The model's output holds NaN or Inf: weights that are not finite (or overflow), or
    FP16 overflow."""


class BatchError(HirnError):
    """A batch folder that cannot be processed as asked, or files of it that failed."""


class LaunchError(HirnError, ValueError):
    """A torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK) that is no valid process
    layout."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is this process running out of memory (or of address space, under
    ``ulimit -v``), which no input or option of the user's caused as such.

    Besides MemoryError and a GPU's (torch.cuda.OutOfMemoryError): torch's CPU allocator
    and Python's threads, which raise RuntimeError; an FFmpeg codec that cannot start its
    threads (EAGAIN); torch's libraries that cannot be mapped; and oneDNN, whose error
    names no cause, counted only where an address-space limit makes it the likely one.
    """
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error)
    if isinstance(error, RuntimeError):
        return (any(said in text for said in _ALLOCATION_FAILED)
                or (_ONEDNN_FAILED in text and address_space_limit() is not None))
    if isinstance(error, ImportError):
        return "failed to map segment" in text
    # PyAV's errors live in av.error; an EAGAIN that escapes PyAV is never "try again"
    return (isinstance(error, OSError) and error.errno == errno.EAGAIN
            and type(error).__module__ == "av.error")


_ALLOCATION_FAILED = ("can't allocate memory", "can't start new thread")
_ONEDNN_FAILED = "could not create a primitive"


def address_space_limit() -> int | None:
    """The bytes of address space this process may map (``ulimit -v``); None: no limit."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    return None if limit == resource.RLIM_INFINITY else limit


# --- the deformable-convolution kernel ---------------------------------------------------------

class KernelBuildError(HirnError):
    """nvcc is missing, or compiling or loading the kernel library failed."""


class KernelInputError(HirnError, ValueError):
    """Tensors or attributes the kernel cannot take (shape, dtype, device, layout)."""


class KernelRuntimeError(HirnError, RuntimeError):
    """A CUDA error while launching the kernel (e.g. no code for this GPU's architecture)."""
