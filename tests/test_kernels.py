import pytest
import torch
import torch.nn.functional as F

import pico.kernels as kernels
from pico.kernels import Linear, linear, mm, mm_t


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(3, 200, 48), (700, 48), (5, 48)])  # above and below MIN_ROWS
def test_linear_matches_torch_values_and_gradients(bias, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    layer = Linear(48, 80, bias=bias)
    want_layer = torch.nn.Linear(48, 80, bias=bias)
    want_layer.load_state_dict(layer.state_dict())  # same parameters, same state_dict keys
    y, want = layer(x), want_layer(x)
    assert y.shape == want.shape
    assert torch.allclose(y, want, atol=1e-5)
    upstream = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *layer.parameters()], upstream)
    exp = torch.autograd.grad(want, [x, *want_layer.parameters()], upstream)
    for a, b in zip(got, exp):
        assert torch.allclose(a, b, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(layer(x), want, atol=1e-5)


def test_onednn_is_used_only_where_it_applies():
    big, small = torch.randn(kernels.MIN_ROWS, 16), torch.randn(kernels.MIN_ROWS - 1, 16)
    w = torch.randn(8, 16)
    assert kernels.onednn_applies(big, w) == kernels._HAVE_ONEDNN
    assert not kernels.onednn_applies(small, w)
    assert not kernels.onednn_applies(big.double(), w.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not kernels.onednn_applies(big, w)


def test_mm_helpers_equal_plain_products():
    torch.manual_seed(0)
    a, w = torch.randn(600, 32), torch.randn(40, 32)
    assert torch.allclose(mm_t(a, w), a @ w.t(), atol=1e-5)
    g = torch.randn(600, 40)
    assert torch.allclose(mm(g, w), g @ w, atol=1e-5)
    assert torch.allclose(linear(a, w), F.linear(a, w), atol=1e-5)


def test_only_recorded_training_products_go_to_onednn(monkeypatch):
    calls = []
    real = kernels._onednn_mm_t
    monkeypatch.setattr(kernels, "_onednn_mm_t", lambda *a: calls.append(a[0].shape) or real(*a))
    layer = Linear(32, 16, bias=False)
    x = torch.randn(kernels.MIN_ROWS, 32)
    with torch.no_grad():  # generation and evaluation: MKL, whose memory stays flat over many shapes
        layer(x)
    assert calls == []
    layer(x).sum().backward()  # training: forward and input gradient (when x needs one) on oneDNN
    assert len(calls) == (1 if kernels._HAVE_ONEDNN else 0)
