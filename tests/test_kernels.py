"""The fast CPU path computes what the plain PyTorch path computes: values and gradients."""

import pytest
import torch
import torch.nn.functional as F

import pico.kernels as kernels
from pico.losses import head_nll, masked_nll


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(3, 200, 48), (700, 48), (5, 48)])  # above and below MIN_ROWS
def test_fast_linear_matches_nn_linear_values_and_gradients(bias, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    want_layer = torch.nn.Linear(48, 80, bias=bias)
    layer = torch.nn.Linear(48, 80, bias=bias)
    layer.load_state_dict(want_layer.state_dict())
    kernels.use_fast_cpu_kernels(layer)
    assert isinstance(layer, kernels.FastLinear)
    assert layer.state_dict().keys() == want_layer.state_dict().keys()  # checkpoints are unchanged
    y, want = layer(x), want_layer(x)
    assert torch.allclose(y, want, atol=1e-5)
    upstream = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *layer.parameters()], upstream)
    exp = torch.autograd.grad(want, [x, *want_layer.parameters()], upstream)
    for a, b in zip(got, exp):
        assert torch.allclose(a, b, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(layer(x), want, atol=1e-5)


def test_use_fast_cpu_kernels_switches_every_linear_of_a_model_and_nothing_else():
    from pico.model import build_model
    from conftest import config

    model = build_model(config("model", d_model=32, n_layer=2, n_head=2, max_seq_len=16), 50)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kernels.use_fast_cpu_kernels(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is kernels.FastLinear for m in linears)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_only_recorded_training_products_go_to_onednn(monkeypatch):
    calls = []
    real = kernels._onednn_mm_t
    monkeypatch.setattr(kernels, "_onednn_mm_t", lambda *a: calls.append(a[0].shape) or real(*a))
    layer = kernels.use_fast_cpu_kernels(torch.nn.Linear(32, 16, bias=False))
    x = torch.randn(kernels.MIN_ROWS, 32)
    with torch.no_grad():  # generation and evaluation: MKL, whose memory stays flat over many shapes
        layer(x)
    assert calls == []
    layer(x).sum().backward()  # training: the forward (and the input gradient, when x needs one) on oneDNN
    assert len(calls) == (1 if kernels._HAVE_ONEDNN else 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # not an fp32 product: the plain path
        layer(x).float().sum().backward()
    assert len(calls) == (1 if kernels._HAVE_ONEDNN else 0)


def test_token_nll_matches_cross_entropy_values_and_gradients():
    torch.manual_seed(0)
    logits = (torch.randn(900, 97) * 4).requires_grad_(True)  # more rows than one chunk
    targets, weights = torch.randint(0, 97, (900,)), torch.rand(900)
    ours = kernels.token_nll(logits, targets)
    want = F.cross_entropy(logits, targets, reduction="none")
    assert torch.allclose(ours, want, atol=1e-5)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), logits)
    (g_want,) = torch.autograd.grad((want * weights).sum(), logits)
    assert torch.allclose(g_ours, g_want, atol=1e-5)  # log-sum-exp of logits ~20: one ulp is 2e-6
    small_targets = torch.randint(0, 7, (15,))
    assert torch.autograd.gradcheck(lambda x: kernels.token_nll(x, small_targets),
                                    (torch.randn(15, 7, dtype=torch.float64, requires_grad=True),))


@pytest.mark.parametrize("mask_kind", ["none", "binary", "fractional", "all_zero"])
def test_head_nll_matches_logits_then_masked_nll(mask_kind):
    torch.manual_seed(0)
    hidden = torch.randn(3, 150, 16, requires_grad=True)
    weight = (torch.randn(97, 16) * 0.7).requires_grad_(True)
    targets = torch.randint(0, 97, (3, 150))
    mask = {"none": None, "binary": (torch.rand(3, 150) > 0.4).float(),
            "fractional": torch.rand(3, 150) * (torch.rand(3, 150) > 0.4), "all_zero": torch.zeros(3, 150)}[mask_kind]
    # 64-row chunks: many chunks and a ragged last one
    ours, nll = kernels.head_nll(hidden, weight, targets, mask, chunk_logits=97 * 64)
    want = masked_nll(hidden @ weight.t(), targets, mask)
    assert ours.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-5)
    assert nll.shape == targets.shape and not nll.requires_grad
    assert nll.sum().item() == pytest.approx(ours.item() if mask_kind in ("none", "binary", "all_zero") else
                                             nll.sum().item())
    g_ours = torch.autograd.grad(ours * 0.3, (hidden, weight))
    g_want = torch.autograd.grad(want * 0.3, (hidden, weight))
    for a, b in zip(g_ours, g_want):
        assert torch.allclose(a, b, atol=1e-6)
    if mask is not None:  # rows the mask leaves out get no gradient at all
        assert (g_ours[0][mask == 0] == 0).all()
    with torch.no_grad():
        assert kernels.head_nll(hidden, weight, targets, mask)[0].item() == pytest.approx(want.item(), rel=1e-5,
                                                                                          abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # fp32 takes the kernel, fp64 the plain path
def test_losses_head_nll_is_the_same_on_both_paths(dtype):
    torch.manual_seed(0)
    hidden = torch.randn(2, 40, 8, dtype=dtype, requires_grad=True)
    weight = torch.randn(30, 8, dtype=dtype, requires_grad=True)
    targets, mask = torch.randint(0, 30, (2, 40)), (torch.rand(2, 40) > 0.5).to(dtype)
    loss, nll = head_nll(hidden, weight, targets, mask)
    want = -torch.log_softmax(hidden @ weight.t(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask
    assert nll.shape == targets.shape and not nll.requires_grad
    assert torch.allclose(nll.to(dtype), want, atol=1e-5)
    assert loss.item() == pytest.approx(want.sum().item(), rel=1e-5)
    loss.backward()
    assert hidden.grad is not None and weight.grad is not None


@pytest.mark.parametrize("kind", ["causal", "sparse", "broadcast"])
def test_masked_logsumexp_is_bit_identical_to_masked_fill_then_logsumexp(kind):
    """Values and gradients equal (not close) to the plain expression the copy head used before, including rows
    with nothing unmasked (the fill's own logsumexp), a row whose maximum sits near the fill, and masked entries
    far below it (where MKL's exp is slow; RESEARCH.md finding 30)."""
    torch.manual_seed(3)
    B, T, fill = 3, 40, -1e4
    x = torch.randn(B, T, T - 1) * 4
    x[1, 5] = fill + 30 + torch.randn(T - 1)  # a row whose maximum is near the fill: exp(fill - m) is not 0
    if kind == "causal":
        mask = torch.ones(T, T - 1, dtype=torch.bool).tril(-1).expand(B, T, T - 1)  # row 0: nothing unmasked
    elif kind == "sparse":
        mask = torch.rand(B, T, T - 1) < 0.05
        mask[0, :4] = False
    else:
        mask = (torch.rand(1, T, T - 1) < 0.5)  # broadcast over the batch, as a shared mask would be
    weights = torch.randn(B, T)
    results, grads = [], []
    for fast in (True, False):
        leaf = x.clone().requires_grad_(True)
        out = (kernels.masked_logsumexp(leaf, mask, fill) if fast
               else leaf.masked_fill(~mask, fill).logsumexp(dim=-1))
        (out * weights).sum().backward()
        results.append(out.detach())
        grads.append(leaf.grad)
    assert torch.equal(results[0], results[1])
    assert torch.equal(grads[0], grads[1])
    assert kind == "broadcast" or (results[0] < fill + 10).any()  # rows with nothing unmasked were covered
