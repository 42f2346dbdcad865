"""Test helper (not shipped in the wheel): tiny LLaMA-style models built offline for the decoder path.

`make_tiny_llama(path)` writes a tiny, randomly initialised LLaMA-style causal LM (2 layers, width 32) and a
word-level tokenizer built offline into one folder, in the format a real backbone folder has
(config.json, model.safetensors, tokenizer.json, tokenizer_config.json). Like LLaMA's tokenizer it adds BOS,
does not add EOS, and has no pad token. Same seed → same weights.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 as in LLaMA
TINY_WORDS = (
    "the patient has times icu visits . in visit , had diagnosis : ; procedures was prescribed drugs this "
    "then should be he she 's insurance type is language marital status age group gender dx px one two three "
    "four five six drug class procedure diseases disorder essential hypertension acute kidney failure heart "
    "chronic other unspecified analgesics agents acid antithrombotic"
).split()


def tiny_vocab() -> dict[str, int]:
    words = list(SPECIAL_TOKENS) + list(dict.fromkeys(TINY_WORDS)) + [str(d) for d in range(10)]
    return {w: i for i, w in enumerate(words)}


def make_tiny_tokenizer():
    """A PreTrainedTokenizerFast (lower-casing, whitespace/punctuation split, word level, BOS prepended)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = tiny_vocab()
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def make_tiny_llama(
    path: str | Path,
    *,
    seed: int = 0,
    vocab_size: int = 300,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 64,
    max_positions: int = 512,
) -> Path:
    """Write a tiny random LlamaForCausalLM + tokenizer to `path` (created) and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer()
    if len(tokenizer) > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} < tokenizer size {len(tokenizer)}")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_positions,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(path))  # safetensors (the only format transformers 5 writes)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(str(path))
    return path
