"""The process layout ``torchrun`` announces (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

Read in one place, so that ``hirn-train`` and ``hirn-run`` agree on what an environment
means. Plain Python: light modules import it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import LaunchError


@dataclass(frozen=True)
class ProcessLayout:
    """This process's place among the processes of one run."""

    rank: int = 0        # 0 .. world_size - 1
    world_size: int = 1
    local_rank: int = 0  # rank on this machine: which GPU the process takes

    @property
    def main(self) -> bool:
        """The first process: the only one that writes shared files."""
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None):
        """The layout in ``environ`` (default ``os.environ``); one process when none is set.

        Defaults: ``RANK`` 0, ``WORLD_SIZE`` 1, and ``LOCAL_RANK`` equal to ``RANK``: torchrun
        sets all three, and where a launcher leaves ``LOCAL_RANK`` out, one process per GPU
        on one machine is the likely layout (0 would put every process on the first GPU).
        """
        environ = os.environ if environ is None else environ
        try:
            rank = int(environ.get("RANK", 0))
            world = int(environ.get("WORLD_SIZE", 1))
            local = int(environ.get("LOCAL_RANK", rank))
        except ValueError as error:
            raise LaunchError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({error}); "
                              "start several processes with torchrun --nproc-per-node N"
                              ) from error
        if world < 1 or not 0 <= rank < world:
            raise LaunchError(f"RANK={rank} does not fit WORLD_SIZE={world}: ranks run from 0 "
                              "to WORLD_SIZE - 1")
        if local < 0:
            raise LaunchError(f"LOCAL_RANK={local} is negative")
        return cls(rank, world, local)
