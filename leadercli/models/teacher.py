"""The LEADER teacher, LEADER(T) (arXiv 2402.02803 §3.2; leader-reference.md §3; DESIGN §4): a Hugging Face
backbone read as a feature extractor, LoRA adapters through `peft`, and a Linear drug head trained with BCE
on the multi-hot ATC-3 label (bias-free as in the reference, or with a bias started at the label log-odds).

Owns: pooling, LoRA targets, the model (`TeacherModel`), building a trainable teacher and saving / loading a
trained one (PEFT adapter folder + `head.safetensors`). Finding, loading and tokenising for the backbone live
in `leadercli.models.backbone`; the training loop in `leadercli.training.teacher`; the feature cache in
`leadercli.models.features`.

Difference from the reference, on purpose (§7 item 10): pooling reads the attention mask (last position whose
mask is 1), so it works with right or left padding and with pad == eos; the reference counted
`input_ids != pad_token_id` and relied on pad id 0.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D
from transformers.utils import ModelOutput

from leadercli.errors import ArtifactError, ModelError
from leadercli.models import dropout, lora_fused
from leadercli.models import onednn as onednn_linear
from leadercli.models.backbone import (
    backbone_id,
    enable_checkpointing,
    load_backbone,
    max_positions,
    quiet_transformers,
    resolve_backbone,
)

ADAPTER_DIR = "adapter"
HEAD_FILE = "head.safetensors"
HEAD_KEY = "head.weight"
HEAD_BIAS_KEY = "head.bias"
HEAD_NORM_KEYS = ("feat_mean", "feat_scale")
FEATURE_NORMS = ("none", "center", "standardize")
POOLING_MODES = ("auto", "last", "first", "mean")
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BERT_TARGETS = (
    "query",
    "key",
    "value",
    "intermediate.dense",
    "output.dense",
)  # output.dense ⊃ attention.output
_NOT_TARGETS = ("pooler", "lm_head", "score", "classifier")


# ---------------------------------------------------------------------------------------------- pooling


def resolve_pooling(mode: str, kind: str) -> str:
    """ "auto" → "last" for decoders (the EOS state, as LEADER(T)), "mean" for encoders."""
    if mode not in POOLING_MODES:
        raise ModelError(f"pooling {mode!r} is unknown", f"Use one of {', '.join(POOLING_MODES)}")
    if mode == "auto":
        return "last" if kind == "decoder" else "mean"
    return mode


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, T, d) hidden states → (B, d) by the attention mask (1 = real token), any padding side."""
    mask = attention_mask.to(hidden.device).long()  # (B, T)
    rows = torch.arange(hidden.shape[0], device=hidden.device)  # (B,)
    if mode == "last":
        positions = torch.arange(hidden.shape[1], device=hidden.device)  # (T,)
        idx = (mask * positions).argmax(dim=1)  # (B,) last position whose mask is 1
        return hidden[rows, idx]  # (B, d)
    if mode == "first":
        idx = mask.argmax(dim=1)  # (B,) first position whose mask is 1 (argmax returns the first maximum)
        return hidden[rows, idx]  # (B, d)
    if mode == "mean":
        m = mask.unsqueeze(-1).to(torch.float32)  # (B, T, 1)
        total = (hidden.to(torch.float32) * m).sum(dim=1)  # (B, d)
        return (total / m.sum(dim=1).clamp(min=1.0)).to(hidden.dtype)  # (B, d)
    raise ModelError(f"pooling {mode!r} is unknown", "Use one of last, first, mean (or auto)")


# ---------------------------------------------------------------------------------------------- LoRA


def default_lora_targets(model: nn.Module) -> list[str]:
    """LoRA target module names: all attention and MLP projections of the architecture.

    LLaMA-style (LLaMA, Mistral, Qwen…): those of q/k/v/o/gate/up/down_proj present; BERT-style: query, key,
    value and the attention-output / intermediate / output dense layers (not the pooler); otherwise the full
    names of every Linear (or GPT-2 Conv1D) layer outside pooler/lm_head/classifier."""
    names = [n for n, _ in model.named_modules() if n]
    leaves = {n.rsplit(".", 1)[-1] for n in names}
    llama = [t for t in LLAMA_TARGETS if t in leaves]
    if llama:
        return llama
    if {"query", "key", "value"} <= leaves:
        return [t for t in BERT_TARGETS if any(n == t or n.endswith("." + t) for n in names)]
    linear_types: tuple[type, ...] = (nn.Linear,)
    with contextlib.suppress(ImportError):
        linear_types = (nn.Linear, Conv1D)
    found = [
        n
        for n, m in model.named_modules()
        if isinstance(m, linear_types) and not any(p in n.split(".") for p in _NOT_TARGETS)
    ]
    if not found:
        raise ModelError(
            f"backbone {model.__class__.__name__} has no Linear layers to put LoRA adapters on",
            "Set teacher.lora_targets to module names of the backbone",
        )
    return found


# ---------------------------------------------------------------------------------------------- model


@dataclass
class TeacherOutput(ModelOutput):
    """`logits` (B, M) fp32, `pooled` (B, d) fp32 (the distillation feature), `loss` (BCE mean) or None."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    pooled: torch.Tensor | None = None


class TeacherModel(nn.Module):
    """backbone (with LoRA) → pooled state → (pooled − feat_mean) · feat_scale → Linear(d → M).

    The head always runs in fp32. `feat_mean` / `feat_scale` (buffers, (d,)) are identity unless the recipe
    fills them with training-split statistics (centring / standardising, `teacher.feature_norm`); `pooled`,
    the distillation feature, is the raw pooled state either way. `head_bias=False` is the reference's
    bias-free head (N(0, 0.02) weights, every drug starts at p = 0.5)."""

    def __init__(
        self, backbone: nn.Module, hidden_size: int, n_labels: int, pooling: str, head_bias: bool = False
    ) -> None:
        super().__init__()
        if pooling not in ("last", "first", "mean"):
            raise ModelError(f"pooling {pooling!r} is not resolved", "Pass last, first or mean")
        self.backbone = backbone
        self.hidden_size = int(hidden_size)
        self.n_labels = int(n_labels)
        self.pooling = pooling
        self.head = nn.Linear(self.hidden_size, self.n_labels, bias=head_bias, dtype=torch.float32)
        nn.init.normal_(self.head.weight, mean=0.0, std=0.02)  # as LlamaPreTrainedModel.post_init (§3)
        if head_bias:
            nn.init.zeros_(self.head.bias)
        self.register_buffer("feat_mean", torch.zeros(self.hidden_size))  # (d,)
        self.register_buffer("feat_scale", torch.ones(self.hidden_size))  # (d,)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, d) fp32 pooled states → (B, M) fp32 logits (also used on cached features by the LP stage)."""
        with torch.autocast(device_type=pooled.device.type, enabled=False):
            return self.head((pooled - self.feat_mean) * self.feat_scale)  # (B, M)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> TeacherOutput:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, T, d)
        pooled = pool(hidden, attention_mask, self.pooling).to(torch.float32)  # (B, d)
        logits = self.classify(pooled)  # (B, M) fp32
        loss = None
        if labels is not None:
            with torch.autocast(device_type=pooled.device.type, enabled=False):
                loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(torch.float32))
        return TeacherOutput(loss=loss, logits=logits, pooled=pooled)


def label_log_odds(labels: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """(N, M) multi-hot → (M,) log(p / (1 − p)) of each drug's frequency p, clipped to [eps, 1 − eps]:
    the bias with which an untrained head predicts the training frequencies (the popularity baseline)."""
    p = labels.to(torch.float64).mean(dim=0).clamp(eps, 1 - eps)  # (M,)
    return torch.log(p / (1 - p)).to(torch.float32)


def set_feature_norm(model: nn.Module, feats: torch.Tensor, mode: str) -> None:
    """Fill `feat_mean` / `feat_scale` from (N, d) training features: "none" (identity), "center" (subtract
    the mean: removes the direction shared by every patient), "standardize" (also divide by the std)."""
    teacher = unwrap(model)
    if mode not in FEATURE_NORMS:
        raise ModelError(f"feature_norm {mode!r} is unknown", f"Use one of {', '.join(FEATURE_NORMS)}")
    x = feats.to(torch.float32)  # (N, d)
    mean = x.mean(dim=0) if mode != "none" else torch.zeros(x.shape[1])  # (d,)
    scale = 1.0 / x.std(dim=0).clamp(min=1e-6) if mode == "standardize" else torch.ones(x.shape[1])  # (d,)
    with torch.no_grad():
        teacher.feat_mean.copy_(mean.to(teacher.feat_mean.device))
        teacher.feat_scale.copy_(scale.to(teacher.feat_scale.device))


def build_teacher(
    backbone_path: str | os.PathLike | None,
    n_labels: int,
    *,
    lora_r: int = 8,
    lora_alpha: float = 32,
    lora_dropout: float = 0.1,
    lora_targets: Sequence[str] | None = None,
    pooling: str = "auto",
    dtype: torch.dtype = torch.float32,
    gradient_checkpointing: bool = False,
    head_bias: bool = False,
    fast_dropout: bool = False,
    onednn: bool = True,
) -> tuple[TeacherModel, Any, dict[str, Any]]:
    """A trainable teacher: frozen backbone + LoRA (peft) + a fresh fp32 head.

    Returns (model, tokenizer, info) where info = {backbone (backbone_id), kind, pooling,
    lora {r, alpha, dropout, targets}, max_positions, trainable_params, total_params}. Base weights are frozen
    by peft; LoRA A/B and the head train. Gradient checkpointing (non-reentrant) also makes the input
    embeddings require grad, as the reference did. `fast_dropout`: masks from `models.dropout` on CPU;
    `onednn` (`hardware.onednn`): frozen linears and LoRA layers through oneDNN on CPU."""
    # peft: only when a LoRA teacher is built
    from peft import LoraConfig, TaskType, get_peft_model

    path = resolve_backbone(backbone_path)
    ident = backbone_id(path)
    backbone, tokenizer, kind = load_backbone(path, dtype)
    pooling = resolve_pooling(pooling, kind)
    targets = list(lora_targets) if lora_targets else default_lora_targets(backbone)
    if gradient_checkpointing:
        enable_checkpointing(backbone)
    config = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=targets,
        bias="none",
        task_type=TaskType.FEATURE_EXTRACTION,
    )
    try:
        with quiet_transformers():
            peft_model = get_peft_model(backbone, config)
    except ValueError as exc:
        raise ModelError(
            f"LoRA targets {', '.join(targets)} do not fit backbone {ident['name']} "
            f"({str(exc).splitlines()[0][:200]})",
            "Set teacher.lora_targets to module names of the backbone, or leave it unset",
        ) from None
    model = TeacherModel(peft_model, ident["hidden_size"], n_labels, pooling, head_bias=head_bias)
    if onednn:
        onednn_linear.use_for_frozen(model)  # frozen base weights: oneDNN forward and input gradient on CPU
        lora_fused.use_for_lora(model)  # LoRA layers: one autograd function, oneDNN matmuls, on CPU
    if fast_dropout:
        dropout.use_fast_dropout(model)
    info = {
        "backbone": ident,
        "kind": kind,
        "pooling": pooling,
        "lora": {"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout, "targets": targets},
        "max_positions": max_positions(backbone, tokenizer),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
    }
    return model, tokenizer, info


def unwrap(model: nn.Module) -> TeacherModel:
    while not isinstance(model, TeacherModel) and hasattr(model, "module"):
        model = model.module  # DDP / accelerate wrappers
    if not isinstance(model, TeacherModel):
        raise TypeError(f"expected a TeacherModel, got {model.__class__.__name__}")
    return model


def save_teacher(model: nn.Module, out_dir: str | os.PathLike) -> None:
    """`out_dir/adapter/` (PEFT adapter: adapter_config.json + adapter_model.safetensors) and
    `out_dir/head.safetensors` (fp32: "head.weight" (M, d), "head.bias" (M,) when the head has one,
    "feat_mean" / "feat_scale" (d,)); the head file is written atomically."""
    teacher = unwrap(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher.backbone.save_pretrained(str(out / ADAPTER_DIR))
    tensors = head_tensors(teacher)
    weight = tensors[HEAD_KEY]  # (M, d)
    tmp = out / f".{HEAD_FILE}.tmp-{os.getpid()}"
    save_file(tensors, str(tmp), metadata={"n_labels": str(weight.shape[0]), "hidden": str(weight.shape[1])})
    os.replace(tmp, out / HEAD_FILE)


def head_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The head and its feature normalisation as named fp32 CPU tensors (what head.safetensors holds)."""
    teacher = unwrap(model)
    tensors = {HEAD_KEY: teacher.head.weight}
    if teacher.head.bias is not None:
        tensors[HEAD_BIAS_KEY] = teacher.head.bias
    tensors.update({k: getattr(teacher, k) for k in HEAD_NORM_KEYS})
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}


def load_head(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy head.safetensors' tensors into a teacher (files without bias / normalisation load as identity)."""
    teacher = unwrap(model)
    with torch.no_grad():
        teacher.head.weight.copy_(tensors[HEAD_KEY].to(teacher.head.weight.device, torch.float32))
        if teacher.head.bias is not None:
            teacher.head.bias.copy_(tensors[HEAD_BIAS_KEY].to(teacher.head.bias.device, torch.float32))
        for k in HEAD_NORM_KEYS:
            if k in tensors:
                getattr(teacher, k).copy_(tensors[k].to(torch.float32))


def load_teacher(
    run_dir: str | os.PathLike,
    backbone_path: str | os.PathLike | None,
    n_labels: int,
    pooling: str = "auto",
    dtype: torch.dtype = torch.float32,
    onednn: bool = True,
) -> tuple[TeacherModel, Any]:
    """A saved teacher in eval mode, every parameter frozen (for prediction and feature extraction);
    `onednn` (`hardware.onednn`): its linears through oneDNN on CPU.

    Raises ArtifactError when files are missing and
    ModelError when the head does not fit (n_labels, hidden size of the backbone)."""
    # peft: only when a LoRA teacher is loaded
    from peft import PeftModel

    run = Path(run_dir)
    adapter, head_file = run / ADAPTER_DIR, run / HEAD_FILE
    missing = [p.name for p in (adapter / "adapter_config.json", head_file) if not p.is_file()]
    if missing:
        raise ArtifactError(
            f"teacher run folder {run} is incomplete (missing {', '.join(missing)})",
            "Train it with `leader train teacher` or pass the right folder",
        )
    path = resolve_backbone(backbone_path)
    ident = backbone_id(path)
    try:
        head = load_file(str(head_file))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{head_file} is unreadable ({exc})", "Re-train or re-save the teacher") from None
    if HEAD_KEY not in head:
        raise ModelError(f"{head_file} has no tensor {HEAD_KEY!r}", "Re-train or re-save the teacher")
    weight = head[HEAD_KEY]
    expected = (int(n_labels), int(ident["hidden_size"]))
    if tuple(weight.shape) != expected:
        raise ModelError(
            f"{head_file} has shape {tuple(weight.shape)} but labels × backbone hidden size is {expected}",
            "The checkpoint was trained with another label list or backbone; use those or re-train",
        )
    backbone, tokenizer, kind = load_backbone(path, dtype)
    with quiet_transformers():
        try:
            peft_model = PeftModel.from_pretrained(backbone, str(adapter), is_trainable=False)
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise ModelError(
                f"adapter {adapter} does not fit backbone {ident['name']} ({str(exc).splitlines()[0][:200]})",
                "Pass the backbone the teacher was trained on (see its manifest.json)",
            ) from None
    pooling = resolve_pooling(pooling, kind)
    model = TeacherModel(peft_model, ident["hidden_size"], n_labels, pooling, head_bias=HEAD_BIAS_KEY in head)
    load_head(model, head)
    model.requires_grad_(False)
    if onednn:
        onednn_linear.use_for_frozen(model)
    model.eval()
    return model, tokenizer
