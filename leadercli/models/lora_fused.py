"""peft's LoRA linear layers as one autograd function on CPU: y = x Wᵀ + b + s · B(A(drop(x))).

peft runs a LoRA layer as five autograd nodes (base linear, dropout, A, B, scale-and-add) whose matmuls go
through MKL's sgemm; on AMD CPUs MKL runs the rank-8 shapes at 5–25 GFLOP/s and keeps a transposed copy of
every operand it cannot read in place. Here the forward and the backward are written out once: the frozen base
weight and the small A/B matmuls go through oneDNN (`models/onednn.py`; the adapter's output is added inside
the B matmul), the weight gradients are taken in the layout MKL reads fastest (Aᵀ/Bᵀ products of the narrow
side), and the base weight's transpose is built once per weight, not once per backward. The input of A is
saved (as peft's graph keeps it); the base weight gets no gradient. Results equal peft's to float rounding
(1e-6 relative); the dropout mask is drawn exactly as the module would (`MaskDropout`'s, or torch's on the same
shape), so the random stream is unchanged.

`use_for_lora(model)` routes every eligible peft `lora.Linear` (one active vanilla adapter, unmerged, frozen
`nn.Linear` base) through this when a gradient is recorded on CPU in fp32 and the build has oneDNN; whether to
call it at all is the caller's switch (`hardware.onednn`); anything else
(GPUs, DoRA, several adapters) takes peft's own forward. Inference on CPU takes oneDNN too (validation,
features), and with B = 0 (a fresh adapter: the frozen pass before LoRA, a probe-only teacher's features)
skips the adapter, whose term is then exactly zero.
"""

from __future__ import annotations

import types

import torch
import torch.nn as nn
import torch.nn.functional as F

from leadercli.models import onednn
from leadercli.models.dropout import MaskDropout, keep_scale


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, keep, w, wt, b, a, bm, scale):  # x (N, k); keep (N, k) or None; a (r, k); bm (out, r)
        xd = x * keep if keep is not None else x
        h = onednn.linear(xd, a, None)  # (N, r)
        y = onednn.linear(h * scale, bm, None, add=onednn.linear(x, w, b))  # x Wᵀ + b + s·h Bᵀ
        ctx.save_for_backward(xd, keep, wt, a, bm, h)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, gy):
        xd, keep, wt, a, bm, h = ctx.saved_tensors
        s = ctx.scale
        gy = gy.contiguous()
        gh = onednn.linear(gy, bm.t().contiguous(), None).mul_(s)  # (N, r) = s · gy B
        g_b = torch.mm(h.t(), gy).t().mul_(s)  # (out, r): hᵀ gy is MKL's fast layout
        g_a = torch.mm(gh.t(), xd)  # (r, k)
        g_x = onednn.linear(gy, wt, None)  # (N, k) = gy W
        if keep is None:
            g_x = onednn.linear(gh, a.t().contiguous(), None, add=g_x)
        else:
            g_x.addcmul_(onednn.linear(gh, a.t().contiguous(), None), keep)
        return g_x, None, None, None, None, g_a, g_b, None


def _adapter(m) -> str | None:
    """The one active vanilla adapter of an unmerged peft LoRA layer, else None."""
    if getattr(m, "disable_adapters", True) or getattr(m, "merged", True):
        return None
    active = [a for a in m.active_adapters if a in m.lora_A]
    if len(active) != 1 or active[0] in getattr(m, "lora_variant", {}):
        return None
    name = active[0]
    base = m.base_layer
    if type(base) is not nn.Linear or base.weight.requires_grad or getattr(m, "fan_in_fan_out", False):
        return None
    if m.lora_A[name].bias is not None or m.lora_B[name].bias is not None:
        return None
    return name


def _forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = _adapter(self) if not args and not kwargs else None
    if name is None or not onednn.usable(x) or self.lora_A[name].weight.dtype != torch.float32:
        return self._peft_forward(x, *args, **kwargs)
    base, a, bm = self.base_layer, self.lora_A[name].weight, self.lora_B[name].weight
    scale = float(self.scaling[name])
    x2 = x.reshape(-1, x.shape[-1])
    if torch.is_grad_enabled():
        if base.bias is not None and base.bias.requires_grad:
            return self._peft_forward(x)
        drop, keep = self.lora_dropout[name], None
        if self.training and isinstance(drop, (nn.Dropout, MaskDropout)) and drop.p > 0:
            if isinstance(drop, MaskDropout):
                keep = keep_scale(x2.shape, drop.p)
            else:  # torch's mask, drawn on the same shape as `drop(x)` would: the same random stream
                keep = F.dropout(torch.ones_like(x2), drop.p, True)
        y = _LoraLinear.apply(x2, keep, base.weight, onednn.transposed(base), base.bias, a, bm, scale)
    elif self.training:  # no gradient but dropout on: peft's own (its masks)
        return self._peft_forward(x)
    elif not bm.any():
        return base(x)  # B = 0 (a fresh adapter: the frozen pass, a probe-only teacher): exact
    else:  # inference: base + s·B(A x), all through oneDNN
        h = onednn.linear(x2, a, None).mul_(scale)
        y = onednn.linear(h, bm, None, add=onednn.linear(x2, base.weight, base.bias))
    return y.view(*x.shape[:-1], bm.shape[0])


def use_for_lora(model: nn.Module) -> int:
    """Route every peft LoRA `Linear` of `model` through `_forward` (eligibility is checked per call).
    Returns how many layers were routed."""
    try:
        # peft: only when a teacher's LoRA layers are swapped
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return 0
    n = 0
    for m in model.modules():
        if isinstance(m, LoraLinear) and "_peft_forward" not in m.__dict__:
            m._peft_forward = m.forward
            m.forward = types.MethodType(_forward, m)
            n += 1
    return n
