import pytest
import torch

from conftest import config
from pico.model import build_model, count_params

V = 97


@pytest.mark.parametrize("kind", ["transformer", "lstm", "kgram_mlp"])
def test_forward_shapes_and_causality(kind):
    torch.manual_seed(0)
    cfg = config("model", type=kind, d_model=32, n_layer=2, n_head=2, max_seq_len=32, k=4)
    model = build_model(cfg, V).eval()
    idx = torch.randint(0, V, (3, 20))
    logits = model(idx)
    assert logits.shape == (3, 20, V)
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % V  # the future must not change the past
    assert torch.allclose(model(changed)[:, :10], logits[:, :10], atol=1e-5)


@pytest.mark.parametrize("kind", ["transformer", "lstm", "kgram_mlp"])
def test_incremental_decoding_matches_full_forward(kind):
    torch.manual_seed(0)
    cfg = config("model", type=kind, d_model=32, n_layer=2, n_head=2, max_seq_len=32, k=4)
    model = build_model(cfg, V).eval()
    idx = torch.randint(0, V, (2, 16))
    full = model(idx)
    cache = model.new_cache(2, 32)
    steps = [model(idx[:, :9], cache=cache)]
    for t in range(9, 16):
        steps.append(model(idx[:, t : t + 1], cache=cache))
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_left_padded_batch_matches_each_row_alone():
    torch.manual_seed(0)
    cfg = config("model", d_model=32, n_layer=2, n_head=2, max_seq_len=32)
    model = build_model(cfg, V).eval()
    a, b = torch.randint(0, V, (1, 10)), torch.randint(0, V, (1, 6))
    pad = torch.zeros(1, 4, dtype=torch.long)
    batch = torch.cat([a, torch.cat([pad, b], dim=1)])
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, :4] = False
    cache = model.new_cache(2, 32)
    logits = model(batch, cache=cache, valid=valid)
    assert torch.allclose(logits[0], model(a)[0], atol=1e-5)
    assert torch.allclose(logits[1, 4:], model(b)[0], atol=1e-5)
    nxt = torch.randint(0, V, (2, 1))
    step = model(nxt, cache=cache)
    assert torch.allclose(step[1, 0], model(torch.cat([b, nxt[1:]], dim=1))[0, -1], atol=1e-5)


def test_context_limit_is_enforced():
    model = build_model(config("model", d_model=32, n_layer=1, n_head=2, max_seq_len=16), V)
    with pytest.raises(ValueError, match="exceeds the context"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_weight_tying_and_param_count():
    model = build_model(config("model", d_model=32, n_layer=2, n_head=2, max_seq_len=16, pos_encoding="learned",
                               copy_head=False), V)
    assert model.head.weight is model.wte.weight
    per_block = 4 * 32 * 32 + 2 * 4 * 32 * 32 + 2 * 32  # attn qkv+proj, mlp, two norms
    assert count_params(model) == V * 32 + 16 * 32 + 2 * per_block + 32
    rope_copy = build_model(config("model", d_model=32, n_layer=2, n_head=2, max_seq_len=16, pos_encoding="rope",
                                   copy_head=True, copy_dim=8, copy_value_key=True), V)
    copy_head = 4 * 32 * 8 + 32 + 1  # q, k_hidden, k_embed, k_value; the sentinel's weight and bias
    assert count_params(rope_copy) == V * 32 + 2 * per_block + 32 + copy_head  # no position table
