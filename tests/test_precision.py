"""bf16 autocast on CPU: resolved from the hardware, close to fp32, fp32 where it must be, reproducible."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import pico.device as device_mod
import pico.kernels as kernels
from conftest import config
from pico.data import TokenWindows
from pico.device import resolve_precision
from pico.losses import head_nll, lm_loss
from pico.model import build_model
from pico.train import train

V = 64
CPU = torch.device("cpu")


def test_precision_resolution(monkeypatch):
    assert resolve_precision("fp32", CPU) == torch.float32
    assert resolve_precision("bf16", CPU) == torch.bfloat16
    assert resolve_precision("auto", torch.device("mps")) == torch.float32
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)  # an AVX2-only CPU: bf16 is emulated
    assert resolve_precision("auto", CPU) == torch.float32
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)  # AVX512-BF16 or AMX
    assert resolve_precision("auto", CPU) == torch.bfloat16


def test_native_bf16_detection_reads_the_cpu_flags(monkeypatch, tmp_path):
    monkeypatch.setattr(torch, "cpu", None)  # no capability query: fall back to /proc/cpuinfo
    assert device_mod.cpu_has_native_bf16() == (" avx512_bf16 " in open("/proc/cpuinfo").read().replace("\n", " ")
                                                or " amx_bf16 " in open("/proc/cpuinfo").read().replace("\n", " "))


def tiny(seed=0):
    torch.manual_seed(seed)
    return build_model(config("model", d_model=32, n_layer=2, n_head=2, max_seq_len=32), V)


def windows():
    g = torch.Generator().manual_seed(1)
    stream = torch.where(torch.rand(2000, generator=g) < 0.1, torch.randint(0, V, (2000,), generator=g),
                         torch.arange(2000) % V)
    return TokenWindows(stream.numpy().astype("uint16"), 32, 8, 0)


def test_bf16_loss_is_close_to_fp32_and_gradients_stay_fp32():
    model, batch = tiny(), windows().train_batch(0)
    fp32, _ = lm_loss(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16, _ = lm_loss(model, batch)
    assert bf16.dtype == torch.float32  # loss sums stay fp32
    assert bf16.item() == pytest.approx(fp32.item(), rel=1e-2)
    bf16.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)


def test_bf16_head_nll_matches_fp32_within_bf16_rounding():
    torch.manual_seed(0)
    hidden = torch.randn(2, 100, 32, requires_grad=True)
    weight = (torch.randn(V, 32) * 0.3).requires_grad_(True)
    targets, mask = torch.randint(0, V, (2, 100)), (torch.rand(2, 100) > 0.3).float()
    want, _ = head_nll(hidden, weight, targets, mask)
    got, nll = kernels.head_nll(hidden, weight, targets, mask, chunk_logits=V * 16, compute_dtype=torch.bfloat16)
    assert nll.dtype == torch.float32 and got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-2)
    g_want = torch.autograd.grad(want, (hidden, weight))
    g_got = torch.autograd.grad(got, (hidden, weight))
    for a, b in zip(g_got, g_want):
        assert a.dtype == torch.float32
        assert (a - b).abs().max() < 0.02 * b.abs().max() + 1e-3


def test_bf16_training_keeps_fp32_weights_and_optimizer_state_and_is_reproducible():
    cfg = config("pretrain", device="cpu", precision="bf16", batch_size=8, grad_accum=1, lr=3e-3, warmup_steps=0,
                 eval_every=100, save_every=100, log_every=1, weight_decay=0.0)
    runs = []
    for _ in range(2):
        model = tiny()
        result = train(model, cfg, total_steps=6, get_batch=windows().train_batch, loss_fn=lm_loss)
        assert result.precision == "bf16"
        assert all(p.dtype == torch.float32 for p in model.parameters())
        runs.append((model.state_dict(), [r["loss"] for r in result.train_curve]))
    (a, curve_a), (b, curve_b) = runs
    assert curve_a == curve_b and all(torch.equal(a[k], b[k]) for k in a)  # byte-identical on the same machine
    fp32 = tiny()
    fp32_curve = [r["loss"] for r in train(fp32, config("pretrain", device="cpu", precision="fp32", batch_size=8,
                                                           grad_accum=1, lr=3e-3, warmup_steps=0, eval_every=100,
                                                           save_every=100, log_every=1, weight_decay=0.0),
                                           total_steps=6, get_batch=windows().train_batch, loss_fn=lm_loss).train_curve]
    assert curve_a == pytest.approx(fp32_curve, rel=2e-2)  # the same training, within bf16 rounding


def test_optimizer_state_is_fp32_under_bf16():
    from pico.train import make_optimizer

    model = tiny()
    opt = make_optimizer(model, config("pretrain", lr=1e-3), CPU)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = lm_loss(model, windows().train_batch(0))
    loss.backward()
    opt.step()
    assert all(v.dtype == torch.float32 for s in opt.state.values() for k, v in s.items() if k != "step")


def test_attention_runs_in_fp32_under_cpu_bf16_autocast():
    """CPU's flash-attention backward is slower in bf16 (benchmarks/README.md): attention takes fp32, with and
    without gradients (DPO's reference and policy log-probs must agree)."""
    from pico.model import attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 40, 16) for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        qb, kb, vb = (t.bfloat16().requires_grad_() for t in (q, k, v))
        y = attention(qb, kb, vb, None, 0.0)
        assert y.dtype == torch.float32  # the fp32 kernel, on bf16 inputs
        y.sum().backward()
        assert qb.grad.dtype == torch.bfloat16  # gradients return in the inputs' dtype
        with torch.no_grad():
            assert torch.equal(attention(qb, kb, vb, None, 0.0), y.detach())
    assert (y - want).abs().max() < 0.05  # only the inputs' bf16 rounding


def test_vector_math_warm_up_covers_every_function_torch_sends_to_mkl():
    """torch's own list (ATen/cpu/vml.h, shipped in the wheel): a torch that routes another function through MKL's
    vector math must warm that one up too, or its first two-thread call can race (RESEARCH.md finding 27)."""
    header = Path(torch.__file__).parent / "include" / "ATen" / "cpu" / "vml.h"
    if not header.is_file():
        pytest.skip("this torch ships no ATen headers")
    routed = set(re.findall(r"^IMPLEMENT_VML_MKL\((\w+),", header.read_text(), flags=re.M))
    assert "cos" in routed
    assert routed <= set(device_mod._VML_FUNCTIONS), routed - set(device_mod._VML_FUNCTIONS)


def test_resolve_device_warms_up_vector_math_once_per_process(monkeypatch):
    calls, real_cos = [], torch.cos
    monkeypatch.setattr(device_mod, "_vml_ready", False)
    monkeypatch.setattr(torch, "cos", lambda x: calls.append((x.dtype, x.numel())) or real_cos(x))
    device_mod.resolve_device("cpu")
    device_mod.resolve_device("cpu")
    assert calls == [(torch.float32, 4), (torch.float64, 4)]  # one small, one-thread call per dtype, then never
