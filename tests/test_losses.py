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


def test_lm_loss_from_hidden_states_equals_loss_on_logits():
    from conftest import config
    from pico.losses import lm_loss
    from pico.model import build_model

    torch.manual_seed(0)
    model = build_model(config("model", d_model=32, n_layer=2, n_head=2, max_seq_len=64), 300)
    ids = torch.randint(0, 300, (4, 64))
    batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": (torch.rand(4, 63) > 0.3).float()}
    loss, _ = lm_loss(model, batch)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    want = masked_nll(model(batch["input_ids"]), batch["targets"], batch["loss_mask"])
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    for a, b in zip(grads, want_grads):
        assert torch.allclose(a, b, atol=1e-5)
