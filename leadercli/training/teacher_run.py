"""The teacher recipe's shared record (`TeacherRun`) and the small rules its stages share: fine-tuning epochs
by device, multi-hot labels. The stages are `leadercli.training.teacher` (setup, LoRA fine-tuning),
`teacher_probe` (head initialisation and the linear probe) and `teacher_save` (the run folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leadercli.data.artifact import Artifact
from leadercli.models.teacher_infer import PromptSet
from leadercli.settings import Settings

BEST_DIR = "best"  # the best weights so far, inside the run folder while training
GPU_EPOCHS = 3.0  # default LoRA fine-tuning epochs on a GPU


@dataclass
class TeacherRun:
    """What `setup` builds and the later stages share (a plain record; the stages are functions)."""

    settings: Settings
    accelerator: Any
    artifact: Artifact
    samples: dict[str, list]
    ps: dict[str, PromptSet]
    model: Any  # TeacherModel, wrapped by accelerate after `prepare`
    tokenizer: Any
    info: dict
    max_length: int
    out: Path
    val_idx: np.ndarray  # the bounded validation sample scored during training
    frozen: dict[str, np.ndarray] = field(default_factory=dict)  # split → (N, d) frozen pooled features
    recipe: dict = field(default_factory=dict)  # every choice, for the manifest

    @property
    def cfg(self):
        return self.settings.teacher

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def n_labels(self) -> int:
        return len(self.artifact.labels)


def epochs(cfg, device: torch.device) -> float:
    """teacher.epochs, or its device default: 3 on a GPU; 0 on CPU, where a LoRA step of MiniLM costs seconds
    and the linear probe alone beats popularity by far (benchmarks/README.md, teacher recipe)."""
    if cfg.epochs is not None:
        return cfg.epochs
    return 0.0 if device.type == "cpu" else GPU_EPOCHS


def no_fine_tuning(run: TeacherRun) -> bool:
    """True when no LoRA step will run (the frozen features of the linear probe are then the final ones)."""
    cfg = run.cfg
    return cfg.max_steps == 0 or (cfg.max_steps is None and epochs(cfg, run.accelerator.device) == 0)


def multi_hot(labels: list[list[int]], M: int) -> np.ndarray:
    """Label indices per sample → (N, M) bool."""
    y = np.zeros((len(labels), M), dtype=bool)
    for i, lab in enumerate(labels):
        y[i, lab] = True
    return y
