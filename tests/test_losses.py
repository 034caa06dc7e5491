import math

import pytest
import torch

from pico.losses import dpo_loss, masked_nll, sequence_logps, token_logps


def test_masked_nll_by_hand():
    # two positions, vocab 2; logits chosen so that p(target) is easy to write down
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # p = [.5,.5], [.75,.25]
    targets = torch.tensor([[1, 0]])
    assert masked_nll(logits, targets).item() == pytest.approx(-math.log(0.5) - math.log(0.75))
    mask = torch.tensor([[0.0, 1.0]])
    assert masked_nll(logits, targets, mask).item() == pytest.approx(-math.log(0.75))
    assert sequence_logps(logits, targets, mask).item() == pytest.approx(math.log(0.75))


def test_token_logps_equals_log_softmax_gather():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    want = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logps(logits, targets), want, atol=1e-6)


def test_dpo_loss_by_hand():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-10.0, -12.0, -11.0, -11.5))
    beta = 0.5
    h = (-10.0 + 11.0) - (-12.0 + 11.5)  # 1.5
    losses, r_c, r_r = dpo_loss(pc, pr, rc, rr, beta)
    assert losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-beta * h))))
    assert r_c.item() == pytest.approx(0.5) and r_r.item() == pytest.approx(-0.25)
    eps = 0.2
    smoothed, _, _ = dpo_loss(pc, pr, rc, rr, beta, label_smoothing=eps)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert smoothed.item() == pytest.approx(-(1 - eps) * math.log(sig(beta * h)) - eps * math.log(sig(-beta * h)))
    ipo, _, _ = dpo_loss(pc, pr, rc, rr, beta, loss_type="ipo")
    assert ipo.item() == pytest.approx((h - 1 / (2 * beta)) ** 2)


def test_dpo_loss_is_log2_when_policy_equals_reference():
    logps = torch.randn(4) * 20
    other = torch.randn(4) * 20
    losses, r_c, r_r = dpo_loss(logps, other, logps, other, beta=0.1)
    assert torch.allclose(losses, torch.full((4,), math.log(2.0)))
    assert torch.all(r_c == 0) and torch.all(r_r == 0)


def test_dpo_gradient_pushes_chosen_up_and_rejected_down():
    pc, pr = torch.tensor([-5.0], requires_grad=True), torch.tensor([-5.0], requires_grad=True)
    losses, _, _ = dpo_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.1)
    losses.sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item()


def test_unknown_loss_type():
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), 0.1, loss_type="hinge2")


def test_fused_token_nll_matches_cross_entropy_values_and_gradients():
    torch.manual_seed(0)
    logits = (torch.randn(3, 300, 97) * 4).requires_grad_(True)  # more rows than one chunk
    targets = torch.randint(0, 97, (3, 300))
    weights = torch.rand(3, 300)
    ours = token_logps(logits, targets)
    want = -torch.nn.functional.cross_entropy(logits.view(-1, 97), targets.view(-1), reduction="none").view(3, 300)
    assert torch.allclose(ours, want, atol=1e-5)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), logits)
    (g_want,) = torch.autograd.grad((want * weights).sum(), logits)
    assert torch.allclose(g_ours, g_want, atol=1e-6)
    from pico.losses import _TokenNLL

    small_targets = torch.randint(0, 7, (15,))
    assert torch.autograd.gradcheck(lambda x: _TokenNLL.apply(x, small_targets),
                                    (torch.randn(15, 7, dtype=torch.float64, requires_grad=True),))


@pytest.mark.parametrize("mask_kind", ["none", "binary", "fractional", "all_zero"])
def test_linear_masked_nll_matches_logits_then_masked_nll(monkeypatch, mask_kind):
    import pico.losses as losses

    monkeypatch.setattr(losses, "_CHUNK_LOGITS", 97 * 64)  # 64-row chunks: many chunks and a ragged last one
    torch.manual_seed(0)
    hidden = torch.randn(3, 150, 16, requires_grad=True)
    weight = (torch.randn(97, 16) * 0.7).requires_grad_(True)
    targets = torch.randint(0, 97, (3, 150))
    mask = {"none": None, "binary": (torch.rand(3, 150) > 0.4).float(),
            "fractional": torch.rand(3, 150) * (torch.rand(3, 150) > 0.4), "all_zero": torch.zeros(3, 150)}[mask_kind]
    ours = losses.linear_masked_nll(hidden, weight, targets, mask)
    want = masked_nll(hidden @ weight.t(), targets, mask)
    assert ours.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-5)
    g_ours = torch.autograd.grad(ours * 0.3, (hidden, weight))
    g_want = torch.autograd.grad(want * 0.3, (hidden, weight))
    for a, b in zip(g_ours, g_want):
        assert torch.allclose(a, b, atol=1e-6)
    if mask is not None:  # rows the mask leaves out get no gradient at all
        assert (g_ours[0][mask == 0] == 0).all()
    with torch.no_grad():
        assert losses.linear_masked_nll(hidden, weight, targets, mask).item() == pytest.approx(want.item(), rel=1e-5,
                                                                                              abs=1e-5)


def test_lm_loss_from_hidden_states_equals_loss_on_logits():
    from pico.config import ModelConfig
    from pico.losses import lm_loss
    from pico.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(d_model=32, n_layer=2, n_head=2, max_seq_len=64), 300)
    ids = torch.randint(0, 300, (4, 64))
    batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": (torch.rand(4, 63) > 0.3).float()}
    loss, _ = lm_loss(model, batch)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    want = masked_nll(model(batch["input_ids"]), batch["targets"], batch["loss_mask"])
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    for a, b in zip(grads, want_grads):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("on_fast_path", [True, False])
def test_linear_masked_nll_token_nll_comes_from_the_same_pass(on_fast_path):
    from pico.losses import linear_masked_nll

    torch.manual_seed(0)
    dtype = torch.float32 if on_fast_path else torch.float64  # float64 takes the plain logits path
    hidden = torch.randn(2, 40, 8, dtype=dtype, requires_grad=True)
    weight = torch.randn(30, 8, dtype=dtype, requires_grad=True)
    targets, mask = torch.randint(0, 30, (2, 40)), (torch.rand(2, 40) > 0.5).to(dtype)
    loss, nll = linear_masked_nll(hidden, weight, targets, mask, token_nll=True)
    want = -torch.log_softmax(hidden @ weight.t(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask
    assert nll.shape == targets.shape and not nll.requires_grad
    assert torch.allclose(nll.to(dtype), want, atol=1e-5)
    assert loss.item() == pytest.approx(want.sum().item(), rel=1e-5)
    loss.backward()  # the loss still carries its gradient
    assert hidden.grad is not None and weight.grad is not None
