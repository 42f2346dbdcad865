"""Data-parallel training for the student recipes (`leader train student`, `leader distill`) on torch.distributed.

Launch with torch's launcher or accelerate's, as for the teacher:

    torchrun --standalone --nproc_per_node 2 -m leadercli train student          # CPU (gloo) or GPUs (NCCL)
    accelerate launch --multi_gpu --num_processes 2 -m leadercli train student   # GPUs

This module owns the plumbing; `training/loop.py` (`fit`) and the recipes call it:
- `launch_env` reads what the launcher set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from torchrun and
  `accelerate launch`; the MPI names accelerate reads under mpirun); `start` joins the process group, gloo on
  CPU and NCCL on GPU (one GPU per process, `cuda:LOCAL_RANK`), and mutes the console of every process but
  the main one (rank 0): it alone prints, evaluates, early-stops and writes the run.
- The global batch is `student.batch_size`, whatever the process count: every process draws the same
  epoch order (a function of seed and epoch), cuts the same global batches, and takes its contiguous `shard`
  of each (sizes differ by at most one row). `sync_grads` then sets every process's gradients to
  Σ_r (b_r / B) · ∇(mean loss of shard r), which is the gradient of the mean loss over the global batch of B
  rows: the 1-process gradient, up to float rounding. One flat all-reduce per step carries the gradients,
  a used-or-not flag per parameter (a parameter no shard used keeps `grad = None`, as in one process, so Adam
  skips it) and the loss terms for the log. A manual all-reduce, not DistributedDataParallel: no wrapper
  (state-dict names stay as they are), modules outside the model (distill heads) need nothing extra, and for
  a model of ~0.4 M parameters one collective per step is all DDP's buckets would give.
- Every process applies the same Adam step to the same gradients, so the weights stay equal on all of them
  (`broadcast_module` makes them equal once at the start); the main process's checkpoint is the run's state.

What differs from one process (documented in the README): dropout masks are drawn per process (each process's
torch RNG is reseeded at every epoch from (seed, epoch, rank), so a data-parallel run is itself repeatable and
resumes exactly); loss terms that are not a mean over rows (the contrastive profile alignment of `distill`)
see the process's shard as their batch. With dropout off and no alignment term, the loss curve of N processes
equals the 1-process curve to float tolerance (tests/training/test_distributed.py).

The recipes call `join` first (models with nothing to train, popularity and previous, run on the main
process alone; the other processes return at once with status 0), let the main process alone prepare the run
folder (`barrier`) and compute a missing teacher feature cache (`main_first`), and return on the followers
when `fit` is done: `fit` ends with `all_done`, so a process that died during training fails the command
before the main process writes anything as finished. The run folder must be on a file system every process
sees (each reads the checkpoint on `--resume`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as tdist

from leadercli import console
from leadercli.errors import SettingsError
from leadercli.launcher import Launch, launch_env

__all__ = ["Dist", "Launch", "launch_env"]  # Launch and launch_env: the launcher's environment, re-exported


@dataclass(frozen=True)
class Dist:
    """The process group this process trains in (world 1: no group, every collective is a no-op)."""

    rank: int
    world: int
    backend: str | None  # "gloo", "nccl", None for one process
    device: torch.device  # where collective tensors live (the training device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def current(device: torch.device | None = None) -> Dist:
    """The process group `start` joined, or a 1-process Dist (what `fit` calls; it needs no argument)."""
    dev = device if device is not None else torch.device("cpu")
    if not (tdist.is_available() and tdist.is_initialized()):
        return Dist(0, 1, None, dev)
    return Dist(tdist.get_rank(), tdist.get_world_size(), tdist.get_backend(), dev)


def start(device: torch.device, launch: Launch | None = None) -> tuple[Dist, torch.device]:
    """Join the launcher's process group (a no-op for one process); returns it and this process's device.

    gloo on CPU, NCCL on CUDA with one GPU per process (cuda:LOCAL_RANK). Every process but the main one is
    muted (no logs, progress or results; its errors still print, prefixed with its rank)."""
    launch = launch or launch_env()
    if launch.world == 1:
        return Dist(0, 1, None, device), device
    if device.type == "cuda":
        n = torch.cuda.device_count()
        if launch.local_rank >= n:
            raise SettingsError(
                f"process {launch.rank} has LOCAL_RANK {launch.local_rank} but this machine has {n} GPU(s)",
                "Launch at most one process per GPU (--nproc_per_node / --num_processes)",
            )
        device = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise SettingsError(
            f"data-parallel training on {device.type} is not supported ({launch.world} processes)",
            "Set hardware.device = cpu or cuda, or start one process",
        )
    _mute_followers(launch)
    if not tdist.is_initialized():
        env = os.environ
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
        if missing:
            raise SettingsError(
                f"{launch.world} processes were launched but {' and '.join(missing)} is not set",
                "Start the command with torchrun or accelerate launch, or set MASTER_ADDR and MASTER_PORT",
            )
        tdist.init_process_group(backend, rank=launch.rank, world_size=launch.world)
    return Dist(launch.rank, launch.world, backend, device), device


def shutdown() -> None:
    """Leave the process group, if one was joined (the CLI calls it when a command ends, however it ends)."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def _mute_followers(launch: Launch) -> None:
    console.set_rank(launch.rank, launch.world)


def follower_exits(launch: Launch | None = None) -> bool:
    """For a model with nothing to train under a launcher with N > 1 processes: True on every process but the
    main one, which should return at once (status 0, nothing written); the main process runs alone."""
    launch = launch or launch_env()
    if launch.world > 1:
        _mute_followers(launch)
    return not launch.main


def join(device: torch.device, trains: bool = True, name: str = "") -> tuple[Dist | None, torch.device]:
    """What a recipe calls first: `start` for a model that trains. A model with nothing to train (`trains`
    False) runs on the main process alone (a 1-process Dist) and every other process gets None: it returns at
    once, with status 0."""
    launch = launch_env()
    if trains or launch.world == 1:
        return start(device, launch)
    if follower_exits(launch):
        return None, device
    console.info(
        f"{name} has nothing to train: it runs on the main process alone "
        f"(the other {launch.world - 1} process(es) exit)"
    )
    return Dist(0, 1, None, device), device


# -- the step --------------------------------------------------------------------------------------------------
def shard(batch_idx: np.ndarray, dist: Dist) -> np.ndarray:
    """This process's rows of one global batch: the r-th of N contiguous slices (sizes differ by at most one;
    the first B mod N processes take one row more). In rank order the slices are the global batch."""
    if not dist.active:
        return batch_idx
    n = len(batch_idx)
    base, extra = divmod(n, dist.world)
    lo = dist.rank * base + min(dist.rank, extra)
    return batch_idx[lo : lo + base + (dist.rank < extra)]


def check_batch(batch_size: int, dist: Dist, key: str = "student.batch_size") -> None:
    """Every process must hold at least one row of every full global batch."""
    if dist.active and batch_size < dist.world:
        raise SettingsError(
            f"{key} {batch_size} is smaller than the {dist.world} processes: each process takes a share of "
            "every global batch of that size",
            f"Raise {key} to at least {dist.world}, or launch fewer processes",
        )


def sync_grads(
    params: Sequence[torch.nn.Parameter], weight: float, terms: Sequence[torch.Tensor], dist: Dist
) -> list[torch.Tensor]:
    """After this process's backward of its shard's mean loss: gradients := Σ_r weight_r · grad_r over the
    processes (weight_r = shard rows / global rows), the global batch's mean-loss gradient; a parameter left
    without a gradient by every shard keeps None. `terms` (scalar loss terms, same order on every process) are
    reduced the same way and returned. One all-reduce."""
    if not dist.active:
        return list(terms)
    dev = dist.device
    parts = [
        (p.grad.detach().reshape(-1) * weight) if p.grad is not None else torch.zeros(p.numel(), device=dev)
        for p in params
    ]
    used = torch.tensor([float(p.grad is not None) for p in params], device=dev)  # (P,)
    vals = torch.stack([t.detach().float().reshape(()) for t in terms]).to(dev) * weight if terms else None
    flat = torch.cat(parts + [used] + ([vals] if vals is not None else []))  # (ΣP + P + T,)
    tdist.all_reduce(flat)
    at = 0
    for p in params:
        n = p.numel()
        chunk = flat[at : at + n]
        at += n
        if p.grad is not None:
            p.grad.copy_(chunk.view_as(p.grad))
        else:
            p.grad = chunk.view_as(p).clone()
    for p, u in zip(params, flat[at : at + len(params)].tolist(), strict=True):
        if u == 0:
            p.grad = None
    at += len(params)
    return list(flat[at : at + len(terms)].unbind()) if terms else []


def seed_epoch(seed: int, epoch: int, dist: Dist) -> None:
    """With several processes: torch's RNG (dropout) from (seed, epoch, rank), so each process draws its own
    masks and a resumed run draws the same ones as an uninterrupted run. One process: untouched (its RNG state
    is what the checkpoint saves)."""
    if dist.active:
        torch.manual_seed(int(np.random.SeedSequence([seed, epoch, dist.rank]).generate_state(1)[0]))


def broadcast_module(module: torch.nn.Module, dist: Dist) -> None:
    """The main process's parameters and buffers on every process."""
    if not dist.active:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            tdist.broadcast(t.data, src=0)


def agree(flag: bool, dist: Dist) -> bool:
    """The main process's decision (e.g. early stop) on every process; the others wait for it here."""
    if not dist.active:
        return flag
    t = torch.tensor([int(flag)], device=dist.device)
    tdist.broadcast(t, src=0)
    return bool(t.item())


def share_fields(obj, dist: Dist) -> None:
    """The main process's values of a dataclass's numeric fields (int, float, bool) on every process, in place
    (the training counters: epoch, best, patience, so the early-stop decision is the main process's)."""
    if not dist.active:
        return
    names = [f.name for f in dataclasses.fields(obj)]
    t = torch.tensor([float(getattr(obj, n)) for n in names], dtype=torch.float64, device=dist.device)
    tdist.broadcast(t, src=0)
    for n, v in zip(names, t.tolist(), strict=True):
        setattr(obj, n, type(getattr(obj, n))(v))


@contextlib.contextmanager
def main_first(dist: Dist) -> Iterator[None]:
    """The block runs on the main process first (e.g. computing a cache every process then reads), then on the
    others. A main process that fails here never releases them: its exit fails their barrier."""
    if dist.active and not dist.main:
        barrier(dist)
    yield
    if dist.active and dist.main:
        barrier(dist)


def barrier(dist: Dist) -> None:
    """Every process waits here for every other (e.g. until the main process has prepared the run folder)."""
    if dist.active:
        tdist.all_reduce(torch.zeros(1, device=dist.device))


def all_done(dist: Dist) -> None:
    """Every process got here: called before the main process writes a run as finished, so that a process that
    failed during training fails the command first (its peers' collectives raise)."""
    if not dist.active:
        return
    t = torch.ones(1, device=dist.device)
    tdist.all_reduce(t)
    if int(t.item()) != dist.world:  # cannot happen with a healthy group; a guard, not a code path
        raise RuntimeError(f"{int(t.item())} of {dist.world} processes finished training")


def manifest_fields(dist: Dist, global_batch: int) -> dict:
    """What the run's manifest records about data parallelism."""
    base, extra = divmod(global_batch, dist.world)
    return {
        "world_size": dist.world,
        "backend": dist.backend,
        "global_batch": global_batch,
        "batch_per_process": [base + (r < extra) for r in range(dist.world)],
    }
