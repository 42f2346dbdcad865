"""Components the recipes share: seeding, device choice, safetensors training checkpoints (model, optimizer,
RNG states — never pickle), batched scoring and threshold choice."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from leadercli.errors import ArtifactError, SettingsError


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(hardware) -> torch.device:
    if hardware.threads:
        torch.set_num_threads(hardware.threads)
    want = hardware.device
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cuda" and not torch.cuda.is_available():
        raise SettingsError(
            "hardware.device = cuda but no CUDA device is available", "Set hardware.device = cpu or auto"
        )
    if want == "mps" and not torch.backends.mps.is_available():
        raise SettingsError(
            "hardware.device = mps but MPS is not available", "Set hardware.device = cpu or auto"
        )
    return torch.device(want)


# -- training checkpoints ------------------------------------------------------------------------------


def save_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Model + optimizer + RNG state as safetensors, plain state as JSON; written to a temp folder, then renamed."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update(optimizer_tensors(optimizer))
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "state.safetensors"))
    meta = {"state": state, "optim_groups": optimizer.state_dict()["param_groups"], "numpy_rng": _np_state()}
    (tmp / "state.json").write_text(json.dumps(meta))
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.rename(path)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    try:
        tensors = load_file(str(path / "state.safetensors"))
        meta = json.loads((path / "state.json").read_text())
    except Exception as exc:  # noqa: BLE001 - OSError, JSON or safetensors' own error type
        raise ArtifactError(
            f"checkpoint {path} is unreadable ({type(exc).__name__})", "Start again without --resume"
        ) from None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    restore_optimizer(optimizer, tensors, meta["optim_groups"])
    torch.set_rng_state(tensors["rng.torch"])
    _set_np_state(meta["numpy_rng"])
    return meta["state"]


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Optimizer state as flat tensors `optim.<param id>.<name>` (safetensors has no nested objects)."""
    out = {}
    for pid, st in optimizer.state_dict()["state"].items():
        for k, v in st.items():
            out[f"optim.{pid}.{k}"] = (
                (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
            )
    return out


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list
) -> None:
    """Inverse of `optimizer_tensors` (param groups come from the checkpoint's JSON)."""
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
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


# -- scoring -------------------------------------------------------------------------------------------


def choose_threshold(fixed: float | None, y_true: np.ndarray, y_prob: np.ndarray) -> dict:
    """The decision threshold and how it was chosen (every report states it)."""
    from leadercli import metrics

    if fixed is not None:
        return {"value": float(fixed), "how": "fixed in settings"}
    if len(y_true) == 0:
        return {"value": 0.5, "how": "default (empty validation split)"}
    return {
        "value": float(metrics.tune_threshold(y_true, y_prob)),
        "how": "tuned on validation (max Jaccard)",
    }
