"""Dropout masks drawn fast on CPU, for training the teacher (`teacher.dropout_masks = "fast"`).

torch's CPU dropout draws its mask with `bernoulli_`, which runs a serial kernel on AMD CPUs (MKL's vectorised
one is taken on Intel only): on the 2-core development machine it was 36 % of a LoRA step of MiniLM (hidden,
attention-probability and LoRA dropout, 55 masks per micro-batch), one core idle meanwhile. Here every mask is
one SFC64 stream (numpy) seeded by a single 63-bit draw from torch's CPU generator, read as 16-bit integers
and compared with round(p · 65536): the drop rate is that over 65536 (within 8e-6 of p) and kept values are
scaled by its complement, so the expectation is unchanged. The masks are not torch's (results differ from
`"torch"` as they would for another seed), but they depend on the seed only: the same seed gives the same
run on any CPU and thread count (torch's own masks differ between AMD and Intel), and a resumed run draws the
same masks, since the seeds come from torch's generator, which checkpoints keep.

`use_fast_dropout(model)` swaps every `nn.Dropout` (backbone, peft's LoRA dropout) for `MaskDropout` and routes
a backbone's SDPA attention with a dropout probability through `attention`, which applies the probability
dropout with these masks (the math path that torch's SDPA takes anyway when dropout is on). On other
devices, in eval mode and at p = 0 both fall back to torch's own ops.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ATTENTION = "leader_sdpa"  # the attention implementation registered with transformers
_BITS = 16


def _threshold(p: float) -> int:
    return min((1 << _BITS) - 1, max(1, round(p * (1 << _BITS))))


def drop_rate(p: float) -> float:
    """The drop probability the masks realise for a nominal p (a multiple of 2⁻¹⁶)."""
    return _threshold(p) / (1 << _BITS)


def keep_scale(shape: torch.Size | tuple[int, ...], p: float) -> torch.Tensor:
    """A float32 multiplier of `shape`: 0 where an element is dropped (probability `drop_rate(p)`), else
    1 / (1 − that rate). The compare and the scaling are one numpy ufunc (torch's int16 and bool kernels are
    not vectorised)."""
    n = math.prod(shape)
    seed = int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64).item())
    words = np.random.Generator(np.random.SFC64(seed)).bit_generator.random_raw(-(-n // 4))
    u = words.view(np.int16)[:n]  # uniform over the 2¹⁶ integers
    keep = np.empty(n, np.float32)
    scale = np.float32(1.0 / (1.0 - drop_rate(p)))
    np.multiply(np.greater_equal(u, _threshold(p) - (1 << (_BITS - 1))), scale, out=keep)
    return torch.from_numpy(keep).view(shape)


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout(x, p, training)` with the masks above on CPU (fp32); torch's own elsewhere."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return F.dropout(x, p, True)
    return x * keep_scale(x.shape, p)  # autograd keeps the multiplier, not x


class MaskDropout(nn.Module):
    """`nn.Dropout` drawing its masks with `fast_dropout` (same `p` attribute, same eval behaviour)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
              **kwargs):  # fmt: skip
    """transformers' SDPA attention, except that a dropout probability on CPU takes this math path with
    `fast_dropout` on the attention probabilities. query (B, H, Q, D), key/value (B, Hkv, K, D); the mask is
    SDPA's (bool, True = attend, or additive float; None = none or causal)."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if dropout == 0.0 or query.device.type != "cpu" or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal,
            **kwargs,
        )  # fmt: skip
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    q_len, k_len = query.shape[2], key.shape[2]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query * scale, key.transpose(-1, -2))  # (B, H, Q, K); scaling q is D/K the work
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is None and causal and q_len > 1:
        attention_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # one additive bias per batch, broadcast over the heads
            bias = torch.zeros(attention_mask.shape, dtype=scores.dtype, device=scores.device)
            attention_mask = bias.masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)
        scores = scores + attention_mask
    probs = fast_dropout(torch.softmax(scores, dim=-1), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None  # (B, Q, H, D)


def _register() -> None:
    # transformers: only when the teacher's attention is registered
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if ATTENTION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(ATTENTION, attention)
        AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def use_fast_dropout(model: nn.Module) -> int:
    """Swap every `nn.Dropout` inside `model` for `MaskDropout` (same p) and send SDPA attention with a
    dropout probability through `attention`. Returns how many dropout modules were swapped."""
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, MaskDropout(child.p))
                n += 1
    for m in model.modules():
        config = getattr(m, "config", None)
        if getattr(config, "_attn_implementation", None) == "sdpa" and _attention_dropout(config) > 0:
            _register()
            config._attn_implementation = ATTENTION
    return n


def _attention_dropout(config) -> float:
    return float(
        getattr(config, "attention_probs_dropout_prob", None)
        or getattr(config, "attention_dropout", None)
        or 0.0
    )
