"""torch's own CPU dropout masks, drawn ahead of time and off the main thread (the student's training on CPU).

`F.dropout` on CPU draws its mask with `bernoulli_`, a serial kernel on AMD CPUs (MKL's vectorised one is
taken on Intel only) that consumes two 32-bit words of torch's MT19937 generator per element: the element is
kept when `((w0 & (2²¹ − 1)) << 32 | w1) · 2⁻⁵³ < 1 − p`, and the kept value is `1 / (1 − p)` (torch's
`_dropout`: `noise.bernoulli_(1 − p).div_(1 − p)`, then `x * noise`). The student draws about 370k mask
elements per step of 16 patients, 20 % of its step on the development machine. `TorchStream` runs the same
generator in numpy (`np.random.MT19937`, the same algorithm, started from torch's state) and turns its words
into the same masks, bit for bit; since the shapes of a step's masks are known from its batch
(`models/student_masks.py`), a background thread draws them while the previous step computes
(`training/batches.py`). `MaskTape.install(model)` makes every `nn.Dropout` of a model take its next mask from
the tape (checking the shape) when one is loaded, and behave as usual otherwise. At the end the generator's
state goes back to torch (`TorchStream.torch_state`), so checkpoints and everything after see the state torch
would have had.

`available()` checks once, on a small case, that the emulation equals torch's own dropout on this build and
CPU (on Intel, where torch takes MKL's masks, it does not, and the caller keeps torch's kernel). Deleting this
module means deleting its call sites in `training/batches.py`; the numbers do not change.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# torch's CPU generator state (5056 bytes): int32 `left`, uint64 `next`, the 624 words as uint64
_LEFT = slice(8, 12)
_NEXT = slice(16, 24)
_KEY = slice(24, 24 + 8 * 624)
_LOW21 = np.uint64((1 << 21) - 1)
_OK: list[bool] = []


class TorchStream:
    """torch's CPU generator, continued in numpy: the dropout masks torch would draw next."""

    def __init__(self, state: torch.Tensor) -> None:
        b = state.numpy()
        self._template = b.copy()
        left = int(np.frombuffer(b[_LEFT].tobytes(), np.int32)[0])
        key = np.frombuffer(b[_KEY].tobytes(), np.uint64).astype(np.uint32)
        self._bits = np.random.MT19937(0)
        # torch reads word `next` after decrementing `left` (and regenerates at 0): left + next = 625, and a
        # freshly seeded state (left 1, next 0) regenerates first, as numpy does at pos 624
        self._bits.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": 625 - left}}
        self._scale: dict[float, np.float32] = {}

    def noise(self, shape: tuple[int, ...], p: float) -> torch.Tensor:
        """The float32 multiplier `F.dropout(x, p)` would apply to an x of `shape` next: 0 or 1 / (1 − p)."""
        n = math.prod(shape)
        q = 1.0 - p
        words = self._bits.random_raw(2 * n).reshape(n, 2)  # (n, 2) uint64 holding 32-bit words
        x = (words[:, 0] & _LOW21) << np.uint64(32)
        x |= words[:, 1]  # the 53-bit integer of torch's uniform double, u = x · 2⁻⁵³
        keep = x < np.uint64(math.ceil(q * 2.0**53))  # u < q, exactly
        if q not in self._scale:
            self._scale[q] = np.float32(torch.ones(1).div_(q).item())  # torch's own 1 / (1 − p) in float32
        return torch.from_numpy(keep.astype(np.float32) * self._scale[q]).view(shape)

    def torch_state(self) -> torch.Tensor:
        """torch's generator state after the masks drawn so far (for `torch.set_rng_state`)."""
        st = self._bits.state["state"]
        b = self._template.copy()
        b[_LEFT] = np.frombuffer(np.int32(625 - st["pos"]).tobytes(), np.uint8)
        b[_NEXT] = np.frombuffer(np.uint64(st["pos"]).tobytes(), np.uint8)
        b[_KEY] = np.frombuffer(st["key"].astype(np.uint64).tobytes(), np.uint8)
        return torch.from_numpy(b)


def available() -> bool:
    """Whether `TorchStream` reproduces torch's CPU dropout on this build and CPU (decided once)."""
    if not _OK:
        _OK.append(_check())
    return _OK[0]


def _check() -> bool:
    saved = torch.get_rng_state()
    try:
        torch.manual_seed(12345)
        torch.rand(3)  # a state in the middle of a block
        start = torch.get_rng_state()
        x = torch.ones(3, 700)
        want = [F.dropout(x[0], 0.1, True), F.dropout(x[1:], 0.4, True)]
        after = torch.get_rng_state()
        stream = TorchStream(start)
        got = [x[0] * stream.noise((700,), 0.1), x[1:] * stream.noise((2, 700), 0.4)]
        return all(torch.equal(a, b) for a, b in zip(want, got, strict=True)) and torch.equal(
            stream.torch_state(), after
        )
    except (RuntimeError, ValueError, KeyError, TypeError):
        return False
    finally:
        torch.set_rng_state(saved)


class MaskTape:
    """Masks for the dropout modules of one model, in the order its forward draws them."""

    def __init__(self) -> None:
        self.masks: deque[torch.Tensor] = deque()

    def load(self, masks: list[torch.Tensor]) -> None:
        if self.masks:
            raise RuntimeError(f"{len(self.masks)} dropout masks of the previous step were not used")
        self.masks.extend(masks)

    def take(self, shape: torch.Size) -> torch.Tensor:
        mask = self.masks.popleft()
        if mask.shape != shape:
            raise RuntimeError(f"dropout mask of shape {tuple(mask.shape)} planned, {tuple(shape)} drawn")
        return mask

    def install(self, model: nn.Module) -> int:
        """Every `nn.Dropout` of `model` takes its mask from this tape while the tape holds masks (training
        mode, p > 0, a non-empty input: torch draws nothing otherwise), and is torch's own otherwise. Returns how many modules were routed."""
        n = 0
        for m in model.modules():
            if type(m) is nn.Dropout and "forward" not in m.__dict__:
                m.forward = _taped(m, self)
                n += 1
        return n


def _taped(module: nn.Dropout, tape: MaskTape):
    plain = module.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if tape.masks and module.training and module.p > 0 and x.numel():
            return x * tape.take(x.shape)
        return plain(x)

    return forward
