"""The field's models by name: their configs from the settings and the encoder (training), and the model
rebuilt from a run's manifest and weights (`load_run`, through `scorer.TENSOR_MODELS`).

A run of a field model stores its config dataclass as the manifest's `model_config`; its graphs (GAMENet's EHR
and DDI graphs, the DDI graph of MICRON and RAREMed) are buffers in `model.safetensors`, so a loaded run needs
neither the artifact nor the training split.
"""

from __future__ import annotations

from dataclasses import fields

import torch

from leadercli import kinds
from leadercli.data.batching import Encoded, Encoder
from leadercli.models.field import FieldModel, ddi_adjacency
from leadercli.models.gamenet import GAMENet, GAMENetConfig, cooccurrence
from leadercli.models.logreg import LogReg, LogRegConfig
from leadercli.models.micron import Micron, MicronConfig
from leadercli.models.raremed import RAREMed, RAREMedConfig
from leadercli.models.retain import Retain, RetainConfig

CONFIGS = {
    "retain": RetainConfig,
    "gamenet": GAMENetConfig,
    "micron": MicronConfig,
    "logreg": LogRegConfig,
    "raremed": RAREMedConfig,
}
FIELD_KINDS = kinds.FIELD_MODELS  # the run kinds' list names them (tests check CONFIGS covers it)


def make_config(kind: str, section, encoder: Encoder, n_train: int):
    """The model config of `kind` from its settings section (fields of the same name; `lr`, `weight_decay` and
    `pretrain_epochs` are the training loop's) and the encoder's sizes."""
    cls = CONFIGS[kind]
    names = {f.name for f in fields(cls)}
    sizes = {
        "vocab_size": encoder.vocab_size,
        "med_offset": encoder.med_offset,
        "n_labels": encoder.n_labels,
        "n_train": n_train,
    }
    values = {k: v for k, v in section.model_dump().items() if k in names}
    return cls(**{k: v for k, v in sizes.items() if k in names}, **values)


def train_drug_sets(encoded: list[Encoded], med_offset: int) -> list[list[int]]:
    """Every visit's drugs (label indices) in the training samples: history visits and targets."""
    out = [e.labels for e in encoded]
    for e in encoded:
        out.extend([i - med_offset for i in visit if i >= med_offset] for visit in e.med)
    return out


def make_model(kind: str, config, ehr_adj: torch.Tensor | None = None, ddi_adj: torch.Tensor | None = None):
    """A fresh model of `kind`; graphs default to zeros (a loaded run's buffers replace them)."""
    M = config.n_labels
    zeros = torch.zeros(M, M)
    ehr = ehr_adj if ehr_adj is not None else zeros
    ddi = ddi_adj if ddi_adj is not None else zeros
    if kind == "retain":
        return Retain(config)
    if kind == "gamenet":
        return GAMENet(config, ehr, ddi)
    if kind == "micron":
        return Micron(config, ddi)
    if kind == "logreg":
        return LogReg(config)
    if kind == "raremed":
        return RAREMed(config, ddi)
    raise ValueError(f"unknown field model {kind!r}")


def build(kind: str, section, encoder: Encoder, train: list[Encoded], ddi_pairs) -> tuple[FieldModel, object]:
    """Training: the model of `kind` and its config, graphs from the training samples and the run's DDI pairs."""
    config = make_config(kind, section, encoder, len(train))
    ehr = (
        cooccurrence(train_drug_sets(train, encoder.med_offset), encoder.n_labels)
        if kind == "gamenet"
        else None
    )
    return make_model(kind, config, ehr, ddi_adjacency(ddi_pairs, encoder.n_labels)), config


def rebuild(state: dict, manifest: dict, encoder: Encoder) -> FieldModel:
    """A run's model before its weights are loaded: its class and config from the manifest."""
    cfg = manifest.get("model_config")
    if not isinstance(cfg, dict):
        raise ValueError("the manifest has no model_config")
    kind = manifest["kind"]
    config = CONFIGS[kind](**cfg)
    if config.n_labels != encoder.n_labels:
        raise ValueError(f"model_config has {config.n_labels} drugs, the run's vocab {encoder.n_labels}")
    return make_model(kind, config)
