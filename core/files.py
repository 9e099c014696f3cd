"""File helpers every package uses: atomic writes and the natural order of frame names.

Plain Python on purpose (no torch, no numpy): light modules import it.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name (nvcc, say),
    renamed to ``path`` when the block ends without error and removed otherwise.

    The temporary name is hidden (``.NAME.*`` + ``suffix``), so readers never see a partial
    file under ``path``, nor take the temporary for a finished one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Write ``path`` through a temporary file beside it, synced and renamed into place only
    on success, so that readers (and an interrupted run) never see a partial file.

    The temporary file is hidden (``.NAME.*.tmp``) and removed on any error or interruption.
    """
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
        # mkstemp creates the file 0600; a finished file gets the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(f.fileno(), 0o666 & ~umask)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path, "w") as f:
        f.write(text)
    return Path(path)


def natural_key(name: str | os.PathLike) -> list:
    """Sort key that puts ``frame2`` before ``frame10`` (case-insensitive otherwise).

    Every command orders a folder of frames with it, so training, evaluation and
    ``hirn-run`` read the same folder in the same order.
    """
    name = Path(name).name if isinstance(name, os.PathLike) else name
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower())
            for part in re.split(r"(\d+)", name) if part]
