"""Resume state of a training run: the one checkpoint format every recipe writes and reads (never pickle).

A checkpoint is a folder (`CHECKPOINT_DIR` inside the run folder, or any path given):

| file | content |
|---|---|
| `state.safetensors` | `param.<name>` — the weights being trained (all of a student, LoRA + head of a teacher); `optim.<param id>.<name>` — the optimizer state; `rng.torch` — torch's CPU RNG state |
| `state.json` | `state` (the recipe's own counters: step/epoch, best, …), `optim_groups` (optimizer param groups), `scheduler` (LR scheduler state or null), `rng` (python `random` and numpy global states) |

It is written to a temporary sibling and renamed into place, so a kill leaves either the previous checkpoint or
the new one. `load_state` restores everything in place and returns the recipe's `state` dict; resuming then
gives the same weights as an uninterrupted run (tested for both recipes).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from leadercli.errors import ArtifactError

CHECKPOINT_DIR = "checkpoint"
TENSORS = "state.safetensors"
META = "state.json"
PARAM = "param."
OPTIM = "optim."
RNG_TORCH = "rng.torch"


def exists(path: Path) -> bool:
    return (Path(path) / META).is_file() and (Path(path) / TENSORS).is_file()


def save_state(
    path: Path,
    params: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    state: dict,
    scheduler=None,
) -> None:
    """Write `params` (name → tensor), the optimizer, the scheduler, the RNG states and `state` to `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors = {f"{PARAM}{n}": p.detach().float().cpu().contiguous() for n, p in params.items()}
    tensors.update(optimizer_tensors(optimizer))
    tensors[RNG_TORCH] = torch.get_rng_state()
    save_file(tensors, str(tmp / TENSORS))
    meta = {
        "state": state,
        "optim_groups": optimizer.state_dict()["param_groups"],
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": {"python": _py_state(), "numpy": _np_state()},
    }
    (tmp / META).write_text(json.dumps(meta))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def load_state(
    path: Path,
    params: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler=None,
) -> dict:
    """Restore `params` (copied in place, dtype and device kept), optimizer, scheduler and RNG from `path`."""
    path = Path(path)
    try:
        tensors = load_file(str(path / TENSORS))
        meta = json.loads((path / META).read_text())
    except Exception as exc:  # noqa: BLE001 - OSError, JSON or safetensors' own error type
        raise ArtifactError(
            f"checkpoint {path} is unreadable ({type(exc).__name__})", "Start again without --resume"
        ) from None
    missing = [n for n in params if f"{PARAM}{n}" not in tensors]
    if missing:
        raise ArtifactError(
            f"checkpoint {path} does not hold the weights of this model ({len(missing)} missing)",
            "Start again without --resume",
        )
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"{PARAM}{n}"].to(device=p.device, dtype=p.dtype))
    restore_optimizer(optimizer, tensors, meta["optim_groups"])
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors[RNG_TORCH])
    rng = meta.get("rng", {})
    if "python" in rng:
        _set_py_state(rng["python"])
    if "numpy" in rng:
        _set_np_state(rng["numpy"])
    return meta["state"]


def module_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every entry of a module's state dict (weights and buffers), for a recipe that trains all of it."""
    return dict(module.state_dict())


def trainable_tensors(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters that train (LoRA + head of a teacher)."""
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Optimizer state as flat tensors `optim.<param id>.<name>` (safetensors has no nested objects)."""
    out = {}
    for pid, st in optimizer.state_dict()["state"].items():
        for k, v in st.items():
            out[f"{OPTIM}{pid}.{k}"] = (
                (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
            )
    return out


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], groups: list
) -> None:
    """Inverse of `optimizer_tensors` (param groups come from the checkpoint's JSON)."""
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith(OPTIM):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _np_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": name,
        "keys": keys.tolist(),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _set_np_state(s: dict) -> None:
    np.random.set_state(
        (s["name"], np.asarray(s["keys"], dtype=np.uint32), s["pos"], s["has_gauss"], s["cached"])
    )


def _py_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_py_state(s: list) -> None:
    random.setstate((s[0], tuple(s[1]), s[2]))
