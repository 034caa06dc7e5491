"""The one training loop: schedule, accumulation, learning, resume, NaN handling."""

import math

import pytest
import torch

from conftest import config
from pico.data import TokenWindows
from pico.errors import TrainingError
from pico.losses import lm_loss
from pico.model import build_model
from pico.train import lr_at, train

V = 64


def make_cfg(**kw):
    base = dict(seed=0, device="cpu", precision="fp32", batch_size=4, grad_accum=1, lr=3e-3, warmup_steps=2,
                eval_every=5, save_every=3, log_every=1, weight_decay=0.0)  # fp32: the loop's exactness
    base.update(kw)
    return config("pretrain", **base)


def make_model(seed=0, **kw):
    """params.yaml's model (rope + copy head), small; the copy head may point 2 back so it trains on 16 tokens."""
    torch.manual_seed(seed)
    return build_model(config("model", d_model=32, n_layer=2, n_head=2, max_seq_len=16, **{"copy_min_gap": 2, **kw}), V)


def windows(batch_size=4, seed=0):
    g = torch.Generator().manual_seed(123)
    # a learnable stream: a repeating pattern with some noise
    pattern = torch.arange(V).repeat(40)
    noise = torch.randint(0, V, pattern.shape, generator=g)
    stream = torch.where(torch.rand(pattern.shape, generator=g) < 0.1, noise, pattern)
    return TokenWindows(stream.numpy().astype("uint16"), 16, batch_size, seed)


def test_lr_schedule_warmup_then_cosine():
    cfg = make_cfg(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    assert [lr_at(s, cfg, 104) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, cfg, 104) == pytest.approx(1.0)
    assert lr_at(54, cfg, 104) == pytest.approx(0.55)
    assert lr_at(104, cfg, 104) == pytest.approx(0.1)
    assert lr_at(500, cfg, 104) == pytest.approx(0.1)


def test_initial_loss_on_a_fixed_batch_is_pinned():
    model = make_model(pos_encoding="learned", copy_head=False).eval()  # the plain GPT, as pinned before the copy head
    batch = windows().train_batch(0)
    loss_sum, _ = lm_loss(model, batch)
    loss = loss_sum.item() / batch["n_items"]
    assert abs(loss - math.log(V)) < 0.05  # small init: close to uniform
    assert loss == pytest.approx(4.16935, abs=1e-4)  # pinned with torch 2.13.0 CPU


def test_training_changes_every_parameter_and_lowers_loss():
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    w = windows()
    val = w.eval_batches(2)
    from pico.train import evaluate_loss

    start = evaluate_loss(model, val, lm_loss, torch.device("cpu"))["val_loss"]
    result = train(model, make_cfg(), total_steps=30, get_batch=w.train_batch, loss_fn=lm_loss)
    for name, p in model.state_dict().items():
        assert not torch.equal(p, before[name]), f"{name} did not change"
    end = evaluate_loss(model, val, lm_loss, torch.device("cpu"))["val_loss"]
    assert end < start - 0.5
    assert result.tokens_seen == 30 * 4 * 16
    assert len(result.train_curve) == 30


def test_gradient_accumulation_matches_one_big_batch():
    w_big = windows(batch_size=4)

    def two_halves(k):  # the same 4 sequences, handed out 2 at a time (micro-batch k of step k // 2)
        step, micro = divmod(k, 2)
        full = w_big.train_batch(step)
        sl = slice(2 * micro, 2 * micro + 2)
        return {**{k: v[sl] for k, v in full.items() if torch.is_tensor(v)}, "n_items": 32, "tokens": 32}

    a, b = make_model(), make_model()
    train(a, make_cfg(batch_size=4), total_steps=5, get_batch=w_big.train_batch, loss_fn=lm_loss)
    train(b, make_cfg(batch_size=2, grad_accum=2), total_steps=5, get_batch=two_halves, loss_fn=lm_loss)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(pa, pb, atol=1e-5), name


def test_masked_loss_accumulation_weights_by_tokens_not_micro_batches():
    """Micro-batches with different numbers of loss tokens still give the big-batch gradient."""
    w = windows(batch_size=4)

    def masked(step, rows):
        full = w.train_batch(step)
        mask = torch.zeros(4, 16)
        mask[0, :3] = 1
        mask[1:, :] = 1  # row 0 has 3 loss tokens, the others 16
        out = {"input_ids": full["input_ids"][rows], "targets": full["targets"][rows], "loss_mask": mask[rows]}
        return {**out, "n_items": int(mask[rows].sum()), "tokens": int(full["input_ids"][rows].numel())}

    a, b = make_model(), make_model()
    train(a, make_cfg(batch_size=4), total_steps=3, get_batch=lambda k: masked(k, slice(0, 4)), loss_fn=lm_loss)
    train(b, make_cfg(batch_size=2, grad_accum=2), total_steps=3,
          get_batch=lambda k: masked(k // 2, slice(2 * (k % 2), 2 * (k % 2) + 2)), loss_fn=lm_loss)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(pa, pb, atol=1e-5), name


class Killed(Exception):
    pass


def test_resume_continues_exactly(tmp_path):
    w = windows()
    cfg = make_cfg(save_every=4)
    full_model = make_model()
    full = train(full_model, cfg, total_steps=12, get_batch=w.train_batch, loss_fn=lm_loss)

    calls = {"n": 0}

    def dying_batch(k):
        calls["n"] += 1
        if k == 10:
            raise Killed()  # simulate a kill after the save at step 8
        return w.train_batch(k)

    resume = tmp_path / "resume.pt"
    with pytest.raises(Killed):
        train(make_model(), cfg, total_steps=12, get_batch=dying_batch, loss_fn=lm_loss, resume_path=resume,
              fingerprint="run-a")
    assert resume.exists()
    resumed_model = make_model(seed=99)  # different init: everything must come from the resume state
    resumed = train(resumed_model, cfg, total_steps=12, get_batch=w.train_batch, loss_fn=lm_loss,
                    resume_path=resume, fingerprint="run-a")
    assert resumed.resumed_from == 8
    for (name, pa), pb in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert [r["loss"] for r in resumed.train_curve] == [r["loss"] for r in full.train_curve]


def test_resume_state_of_other_params_is_ignored(tmp_path):
    w = windows()
    resume = tmp_path / "resume.pt"
    train(make_model(), make_cfg(save_every=2), total_steps=4, get_batch=w.train_batch, loss_fn=lm_loss,
          resume_path=resume, fingerprint="old")
    result = train(make_model(), make_cfg(save_every=2), total_steps=4, get_batch=w.train_batch, loss_fn=lm_loss,
                   resume_path=resume, fingerprint="new")
    assert result.resumed_from == 0


def test_nan_loss_stops_with_a_clear_error_and_keeps_last_good_state(tmp_path):
    w = windows()
    resume = tmp_path / "resume.pt"
    cfg = make_cfg(lr=1e12, warmup_steps=0, grad_clip=0.0, save_every=1)
    with pytest.raises(TrainingError, match="lower the learning rate"):
        train(make_model(), cfg, total_steps=50, get_batch=w.train_batch, loss_fn=lm_loss, resume_path=resume,
              fingerprint="x")
    state = torch.load(resume, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_keep_best_and_early_stopping():
    w = windows()
    scores = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])
    seen = []  # the weights at every evaluation

    def fake_eval(model):  # a validation curve that bottoms out at the second eval
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"val_loss": next(scores)}

    model = make_model()
    result = train(model, make_cfg(eval_every=2, patience=2), total_steps=20, get_batch=w.train_batch,
                   loss_fn=lm_loss, evaluate=fake_eval, keep_best=True)
    assert result.stopped_early and result.steps_done == 8
    assert result.best_step == 4 and result.best_val == 2.0
    assert [r["step"] for r in result.val_curve] == [2, 4, 6, 8]
    final = model.state_dict()
    assert all(torch.equal(final[k], seen[1][k]) for k in final)  # the weights of the best evaluation (step 4)
    assert not all(torch.equal(final[k], seen[-1][k]) for k in final)  # not the last ones
