"""oneDNN linears (`leadercli.models.onednn`): the same numbers as `F.linear`, forward and input gradient, and
trainable layers left to autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from leadercli.models import onednn

pytestmark = pytest.mark.skipif(not onednn.available(), reason="oneDNN linear not available in this build")


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(12, 30), nn.GELU(), nn.Linear(30, 7))
    net[0].requires_grad_(False)  # frozen, like a backbone under LoRA
    return net


def test_frozen_linears_match_aten_forward_and_input_gradient():
    ref, fast = _net(), _net()
    assert onednn.use_for_frozen(fast) == 2
    x1 = torch.randn(100, 12, requires_grad=True)  # 100 rows: a padded tail block
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = ref(x1), fast(x2)
    torch.testing.assert_close(y2, y1, rtol=0, atol=1e-5)
    y1.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=0, atol=1e-5)
    # the trainable layer still gets its gradient, the frozen one none
    torch.testing.assert_close(fast[2].weight.grad, ref[2].weight.grad, rtol=0, atol=1e-4)
    assert fast[0].weight.grad is None


def test_routed_layer_follows_requires_grad_at_call_time():
    net = _net()
    onednn.use_for_frozen(net)
    net[0].requires_grad_(True)  # unfrozen after routing: autograd must see its weight again
    net(torch.randn(5, 12)).sum().backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0


def test_frozen_path_is_deterministic_and_shape_stable():
    net = _net()
    onednn.use_for_frozen(net)
    x = torch.randn(3000, 12)  # one full 2,048-row block and a tail
    with torch.no_grad():
        a, b = net(x), net(x)
        part = net(x[:2048])
    assert torch.equal(a, b)
    torch.testing.assert_close(a[:2048], part, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n,run", [(1, 1), (37, 3), (2048, 1), (700, 7), (5000, 12)])
def test_eval_linear_sums_equals_linear_then_sums(n, run):
    torch.manual_seed(0)
    x, w, b = torch.randn(n * run, 16), torch.randn(40, 16), torch.randn(40)
    with torch.no_grad():
        want = torch.nn.functional.gelu(torch.nn.functional.linear(x, w, b), approximate="tanh")
        got = onednn.eval_linear_sums(x, w, b, run, gelu=True)
    torch.testing.assert_close(got, want.view(n, run, 40).sum(1), rtol=0, atol=1e-4)
