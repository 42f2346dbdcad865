"""oneDNN linear layers on CPU, for the student's inference and the teacher's frozen weights.

MKL's sgemm (torch's default for `F.linear` on CPU) does not use its fastest paths on AMD CPUs; on the 2-core AMD
EPYC development machine oneDNN (`torch.ops.mkldnn._linear_pointwise`, the kernel torch.compile uses on CPU) runs
the student's linear shapes 2–5× and MiniLM's (1024 rows, 384 → 1536) 1.8–3× faster. Two entry points:

- `eval_linear(x, weight, bias, gelu, onednn)`: `F.linear` (+ tanh-GELU) when no gradient is recorded (student
  eval, `models/student_eval.py`);
- `use_for_frozen(module)`: every `nn.Linear` inside `module` whose weight does not require grad (a teacher's
  backbone under LoRA: the base layers and the untargeted projections) computes its forward and its input
  gradient with oneDNN. The weight gets no gradient, so the input need not be kept for backward (less memory).
  Trainable linears (LoRA A/B, the head) and non-CPU / non-fp32 inputs keep `F.linear`.

Results differ from MKL's by float rounding only (about 1e-6 relative); a fixed input shape, thread count and
build give the same numbers every run. Rows go through in blocks of `ONEDNN_BLOCK` (a shorter tail padded to a
power of two ≥ 64): torch keeps a compiled oneDNN kernel (a few MiB) per input shape, so the shapes are kept to
a handful whatever the batch lengths.
"""

from __future__ import annotations

import types

import torch
import torch.nn as nn
import torch.nn.functional as F

ONEDNN_BLOCK = 2048  # rows per oneDNN call

_FAST: list[bool] = []  # _check(), decided on first use


def available() -> bool:
    """Whether this build has oneDNN's linear and it agrees with `F.linear` (1e-5) on a small case (decided
    once). Whether to use it is the caller's switch (`hardware.onednn`, passed in as an argument)."""
    if not _FAST:
        _FAST.append(_check())
    return _FAST[0]


def _check() -> bool:
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*s, generator=g) for s in ((7, 16), (24, 16), (24,)))
        with torch.no_grad():
            ok = torch.allclose(op(x, w, b, "none", [], ""), F.linear(x, w, b), atol=1e-5)
            y = op(x, w, b, "gelu", [], "tanh")
            ok = ok and torch.allclose(y, F.gelu(F.linear(x, w, b), approximate="tanh"), atol=1e-5)
            z = torch.randn(7, 24, generator=g)
            ok = ok and torch.allclose(op.binary(x, z, w, b, "add"), F.linear(x, w, b) + z, atol=1e-5)
        return bool(ok)
    except (RuntimeError, NotImplementedError):
        return False


def usable(x: torch.Tensor) -> bool:
    """oneDNN can take x: a float32 CPU tensor, and the build has it."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and available()


def linear(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    gelu: bool = False,
    add: torch.Tensor | None = None,
) -> torch.Tensor:
    """x (..., k) → (..., out) with oneDNN, no autograd (callers check `usable`). `add` (..., out): added to
    the result inside the matmul (oneDNN's binary post-op; not with `gelu`)."""
    shape = x.shape
    other = None if add is None else add.reshape(-1, w.shape[0])
    y = _blocks(x.reshape(-1, shape[-1]), w, b, gelu, other)
    return y.reshape(*shape[:-1], w.shape[0])


def _op():
    return torch.ops.mkldnn._linear_pointwise.default  # the overload itself: no per-call overload resolution


def _padded(x: torch.Tensor, start: int, m: int) -> torch.Tensor:
    """Rows start: of x, zero-padded to m rows."""
    pad = x.new_empty(m, x.shape[1])
    rest = x.shape[0] - start
    pad[:rest] = x[start:]
    pad[rest:] = 0.0
    return pad


def _blocks(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, gelu: bool, add: torch.Tensor | None = None
) -> torch.Tensor:
    act, algo = "gelu" if gelu else "none", "tanh" if gelu else ""
    if add is None:
        op, call = _op(), lambda xs, _: op(xs, w, b, act, [], algo)
    else:
        add = add.contiguous()
        binary = torch.ops.mkldnn._linear_pointwise.binary
        call = lambda xs, adds: binary(xs, adds, w, b, "add")  # noqa: E731
    x = x.contiguous()
    n = x.shape[0]
    full = n - n % ONEDNN_BLOCK
    rest = n - full
    tail = None
    if rest:
        m = max(64, 1 << (rest - 1).bit_length())  # m ≥ rest rows: a handful of shapes
        tail = call(_padded(x, full, m), None if add is None else _padded(add, full, m))[:rest]  # (rest, out)
        if not full:
            return tail  # one call: its rows as they are, no copy
    out = x.new_empty(n, w.shape[0])  # (n, out)
    for i in range(0, full, ONEDNN_BLOCK):
        out[i : i + ONEDNN_BLOCK] = call(
            x[i : i + ONEDNN_BLOCK], None if add is None else add[i : i + ONEDNN_BLOCK]
        )
    if tail is not None:
        out[full:] = tail
    return out


def eval_linear_sums(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    run: int,
    gelu: bool = False,
    out: torch.Tensor | None = None,
    onednn: bool = True,
) -> torch.Tensor:
    """`eval_linear(x, w, b, gelu, onednn)` summed over consecutive runs of `run` rows: x (n·run, k) → (n, out),
    without keeping the (n·run, out) result (inference: a feed-forward's hidden layer pooled per set). With
    oneDNN each call takes the next `ONEDNN_BLOCK` rows and keeps the whole runs among them (rows of the next
    run computed twice, at most run − 1 per block), the tail padded as in `linear`. `out`: (n, out) to write
    into. `onednn`: the switch (`hardware.onednn`); off, torch's own kernels."""
    n = x.shape[0] // run
    if out is None:
        out = x.new_empty(n, w.shape[0])  # (n, out)
    if n == 0:
        return out
    if not onednn or torch.is_grad_enabled() or not usable(x) or run > ONEDNN_BLOCK:
        return torch.sum(eval_linear(x, w, b, gelu, onednn).view(n, run, -1), 1, out=out)
    op, act, algo = _op(), "gelu" if gelu else "none", "tanh" if gelu else ""
    x = x.contiguous()
    per = ONEDNN_BLOCK // run  # whole runs per call
    i = 0  # runs done
    while i * run + ONEDNN_BLOCK <= x.shape[0]:
        y = op(x[i * run : i * run + ONEDNN_BLOCK], w, b, act, [], algo)  # (BLOCK, out)
        torch.sum(y[: per * run].view(per, run, -1), 1, out=out[i : i + per])
        i += per
    if i < n:  # fewer than ONEDNN_BLOCK rows left
        torch.sum(_blocks(x[i * run :], w, b, gelu).view(n - i, run, -1), 1, out=out[i:])
    return out


def eval_linear(
    x: torch.Tensor,
    lin_weight: torch.Tensor,
    bias: torch.Tensor | None,
    gelu: bool = False,
    onednn: bool = True,
):
    """`F.linear` (then tanh-GELU when `gelu`) for inference: oneDNN when `onednn` (the switch,
    `hardware.onednn`), it is there and no gradient is recorded, else the aten ops (training never comes here)."""
    if onednn and not torch.is_grad_enabled() and usable(x):
        return linear(x, lin_weight, bias, gelu)
    y = F.linear(x, lin_weight, bias)
    return F.gelu(y, approximate="tanh") if gelu else y


def transposed(m: nn.Linear) -> torch.Tensor:
    """A frozen linear's Wᵀ, contiguous, built once and kept on the module (rebuilt when the weight is
    replaced, moved or changed in place): the input gradient's weight."""
    w = m.weight
    key = (w.data_ptr(), w._version, tuple(w.shape), w.device, w.dtype)
    cached = m.__dict__.get("_leader_wt")
    if cached is None or cached[0] != key:
        cached = (key, w.detach().t().contiguous())
        m.__dict__["_leader_wt"] = cached
    return cached[1]


class _FrozenLinear(torch.autograd.Function):
    """y = x Wᵀ + b with W and b constant: the backward returns the input's gradient only, gy W (itself a
    linear with weight Wᵀ, kept by `transposed`), so x is not saved."""

    @staticmethod
    def forward(ctx, x, w, wt, b):
        ctx.save_for_backward(wt)
        return linear(x, w, b)

    @staticmethod
    def backward(ctx, gy):
        (wt,) = ctx.saved_tensors
        return linear(gy, wt, None), None, None, None


def _frozen_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    w, b = self.weight, self.bias
    if w.requires_grad or (b is not None and b.requires_grad) or not usable(x):
        return F.linear(x, w, b)
    if torch.is_grad_enabled() and x.requires_grad:
        return _FrozenLinear.apply(x, w, transposed(self), b)
    return linear(x, w, b)


def use_for_frozen(module: nn.Module) -> int:
    """Route every plain `nn.Linear` of `module` through `_frozen_forward` (the choice is made per call, so
    modules frozen or unfrozen later, or moved to a GPU, stay correct). Returns how many were routed. The
    caller decides whether to (`hardware.onednn`): not calling it keeps torch's kernels."""
    n = 0
    for m in module.modules():
        if type(m) is nn.Linear and "forward" not in m.__dict__:
            m.forward = types.MethodType(_frozen_forward, m)
            n += 1
    return n
