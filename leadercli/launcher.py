"""What a launcher (torchrun, `accelerate launch`, mpirun) tells a process: its rank, the number of processes and
its local rank, read from the environment. Torch-free, so that the CLI can read it at start-up: under a launcher
only the main process (rank 0) prints (`console.set_rank`). The data-parallel training itself is
`leadercli/training/distributed.py`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from leadercli.errors import SettingsError

# what each launcher sets: torchrun / `accelerate launch` (torch names), and mpirun (accelerate's CPU launcher)
RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMI_RANK")
WORLD_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMI_SIZE")
LOCAL_VARS = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")


@dataclass(frozen=True)
class Launch:
    """What the launcher told this process (world 1 without a launcher)."""

    rank: int  # this process's index, 0 = the main process
    world: int  # number of processes
    local_rank: int  # index on this machine (selects the GPU)
    launcher: str  # "torchrun", "accelerate", "mpi" or "none"

    @property
    def main(self) -> bool:
        return self.rank == 0


def _int_env(names: Sequence[str], environ: Mapping[str, str], default: int) -> tuple[int, str | None]:
    for name in names:
        raw = environ.get(name)
        if raw not in (None, ""):
            try:
                return int(raw), name
            except ValueError:
                raise SettingsError(
                    f"environment variable {name}={raw!r} is not a whole number",
                    "Start the command with torchrun or accelerate launch, or unset the variable",
                ) from None
    return default, None


def launch_env(environ: Mapping[str, str] | None = None) -> Launch:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun, `accelerate launch` or mpirun set them."""
    env = os.environ if environ is None else environ
    world, wname = _int_env(WORLD_VARS, env, 1)
    rank, _ = _int_env(RANK_VARS, env, 0)
    local, _ = _int_env(LOCAL_VARS, env, rank)
    if world < 1 or not 0 <= rank < world:
        raise SettingsError(
            f"launcher environment gives rank {rank} of {world} processes",
            "Start the command with torchrun or accelerate launch (they set RANK and WORLD_SIZE)",
        )
    if wname is None or world == 1:
        launcher = "none" if wname is None else ("accelerate" if _accelerate(env) else "torchrun")
    elif wname != "WORLD_SIZE":
        launcher = "mpi"
    else:
        launcher = "accelerate" if _accelerate(env) else "torchrun"
    return Launch(rank, world, local, launcher)


def _accelerate(env: Mapping[str, str]) -> bool:
    return any(k.startswith("ACCELERATE_") for k in env)
