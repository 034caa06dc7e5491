"""The copy head (pointer-generator mixture) and rotary positions: one mixture everywhere.

Training loss (`lm_loss`, fused chunked path), DPO/eval log-probs (`model_token_logps`), full-forward
log-probs and KV-cached decoding must all describe the same distribution.
"""

import math

import pytest
import torch

from conftest import config
from pico.losses import head_nll, lm_loss, masked_nll, model_token_logps, token_logps
from pico.model import build_model
from pico.sampling import SamplingConfig, sample

V = 53


def _cfg(**kw):
    base = dict(type="transformer", d_model=32, n_layer=2, n_head=2, max_seq_len=64, pos_encoding="rope",
                copy_head=True, copy_dim=16, copy_value_key=False, copy_min_gap=1, dropout=0.0)
    return config("model", **{**base, **kw})


BLOCKED = [3, 7, 11]  # stand-ins for the line-break tokens of `model.copy_line_breaks: false`


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    model = build_model(_cfg(**kw), V).eval()
    with torch.no_grad():  # random, not near-uniform, copy attention and gate
        for p in (model.copy.parameters() if model.copy is not None else []):
            p.normal_(0.0, 0.5)
    if kw.get("copy_line_breaks") is False:
        model.block_copies(BLOCKED)
    return model


def dense_mixture_logps(model, idx, gap=1):
    """Reference: every piece written out densely. (B, T) -> (B, T, V) log p of the mixture; a blocked token's
    slot copies nothing, its weight going to the vocabulary side."""
    hidden = model(idx, return_hidden=True)  # (B, T, d)
    emb = model.wte(idx)
    B, T, _ = hidden.shape
    out = torch.empty(B, T, V)
    for b in range(B):
        for t in range(T):
            h = hidden[b, t]
            scores = [model.copy.sentinel(h).squeeze()]
            slots = list(range(1, t + 2 - gap))
            gates = model.copy.match_gate(h) if model.copy.match_gate is not None else []
            for j in slots:
                k = model.copy.keys(hidden[b, j - 1 : j], emb[b, j - 1 : j])[0]
                if model.copy.k_value is not None:
                    k = k + model.copy.k_value(emb[b, j])
                score = model.copy.q(h) @ k / math.sqrt(k.shape[-1])
                for m, gate in enumerate(gates, start=1):  # the last m tokens equal the m before slot j
                    if all(t - i >= 0 and j - 1 - i >= 0 and idx[b, t - i] == idx[b, j - 1 - i] for i in range(m)):
                        score = score + gate
                scores.append(score)
            a = torch.softmax(torch.stack(scores), 0)
            handed = [i for i, j in enumerate(slots, start=1)
                      if model.copy.blocked is not None and idx[b, j].item() in BLOCKED]
            p = (a[0] + sum(a[i] for i in handed)) * torch.softmax(model.head(h), -1)
            for i, j in enumerate(slots, start=1):
                if i not in handed:
                    p[idx[b, j]] += a[i]
            out[b, t] = p.log()
    return out


@pytest.mark.parametrize("gap,value,breaks,match", [(1, False, True, 0), (4, False, True, 0), (4, True, True, 0),
                                                    (2, True, False, 0), (1, True, True, 2), (2, True, False, 3)])
def test_forward_is_the_dense_mixture(gap, value, breaks, match):
    model = _model(copy_min_gap=gap, copy_value_key=value, copy_line_breaks=breaks, copy_match=match)
    idx = torch.randint(0, V, (2, 12))
    idx[:, 2::3] = torch.tensor(BLOCKED)[torch.arange(idx[:, 2::3].numel()) % 3].view(2, -1)  # blocked tokens in it
    idx[:, 6:9] = idx[:, 0:3]  # a repeat: matches of every order
    got = model(idx)
    assert torch.allclose(got.exp().sum(-1), torch.ones(2, 12), atol=1e-5)  # a distribution
    assert torch.allclose(got, dense_mixture_logps(model, idx, gap), atol=1e-4)


@pytest.mark.parametrize("gap,value,breaks,match", [(1, False, True, 0), (5, True, True, 0), (2, True, False, 0),
                                                    (1, True, False, 2)])
def test_loss_from_the_mixture_equals_dense_reference_with_gradients(gap, value, breaks, match):
    model = _model(copy_min_gap=gap, copy_value_key=value, copy_line_breaks=breaks, copy_match=match)
    model.train()
    idx, targets = torch.randint(0, V, (2, 12)), torch.randint(0, V, (2, 12))
    idx[:, 4] = BLOCKED[0]
    targets[:, 6:] = idx[:, 3:9]  # make some targets copyable (one of them a blocked token)
    idx[:, 7:10] = idx[:, 1:4]  # and some histories repeated
    mask = (torch.rand(2, 12) > 0.3).float()
    batch = {"input_ids": idx, "targets": targets, "loss_mask": mask}

    loss, _ = lm_loss(model, batch)  # fused chunked path (CPU fp32)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    ref = masked_nll(model(idx), targets, mask)  # log_softmax of mixture log-probs is the identity
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for g, r in zip(grads, ref_grads):
        assert (g - r).abs().max() <= 1e-5 * r.abs().max() + 1e-6  # float rounding of large gradients
    dense = -(dense_mixture_logps(model, idx, gap).gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask).sum()
    assert loss.item() == pytest.approx(dense.item(), rel=1e-4)


@pytest.mark.parametrize("match", [0, 2])
def test_token_logps_paths_agree(match):
    model = _model(copy_match=match)
    idx, targets = torch.randint(0, V, (3, 10)), torch.randint(0, V, (3, 10))
    gathered = model_token_logps(model, idx, targets)  # the DPO / eval path
    full = token_logps(model(idx), targets)
    assert torch.allclose(gathered, full, atol=1e-5)
    hidden = model(idx, return_hidden=True)
    _, nll = head_nll(hidden, model.head.weight, targets, copy_terms=model.copy_terms(idx, hidden, targets))
    assert torch.allclose(-nll, full, atol=1e-5)


def test_gate_fixed_to_vocabulary_equals_plain_model():
    model = _model()
    plain = build_model(_cfg(copy_head=False), V).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("copy.")})
    with torch.no_grad():
        model.copy.sentinel.weight.zero_()
        model.copy.sentinel.bias.fill_(1e4)  # a_0 = 1: all mass on the vocabulary side
    idx, targets = torch.randint(0, V, (2, 16)), torch.randint(0, V, (2, 16))
    assert torch.allclose(model(idx), torch.log_softmax(plain(idx), -1), atol=1e-5)
    batch = {"input_ids": idx, "targets": targets}
    assert lm_loss(model, batch)[0].item() == pytest.approx(lm_loss(plain, batch)[0].item(), rel=1e-6)


def _copying_model(**kw):
    """A model whose head copies exactly: position t points at the slot after the earlier occurrence of x_t."""
    d = 32
    model = _model(copy_dim=d, **kw)
    with torch.no_grad():
        model.copy.k_hidden.weight.zero_()  # keys from the previous token's embedding only
        for blk in model.blocks:  # blocks add nothing: the final hidden state is ln_f(embedding of x_t)
            blk.attn.proj.weight.zero_()
            blk.mlp.proj.weight.zero_()
        model.wte.weight.normal_(0.0, 1.0)  # random directions in 32 dims: x_t . x_t >> x_t . x_j
        model.ln_f.weight.fill_(1.0)
        model.copy.q.weight.copy_(torch.eye(d) * 30)
        model.copy.k_embed.weight.copy_(torch.eye(d))
        model.copy.sentinel.weight.zero_()
        model.copy.sentinel.bias.fill_(-30.0)  # no vocabulary side
    return model


def test_head_forced_to_copy_reproduces_the_context():
    """Keys from the previous token's embedding, query = current token's: position t points at the slot after the
    earlier occurrence of x_t, so the second half of a repeated random sequence is predicted exactly."""
    model = _copying_model()
    seq = torch.randperm(V)[:20]
    idx = torch.cat([seq, seq]).unsqueeze(0)  # (1, 40), no token repeats within a copy
    logp = model(idx)[0]  # (40, V)
    pred = logp[20:39].argmax(-1)
    assert torch.equal(pred, idx[0, 21:40])
    nll = -logp[20:39].gather(-1, idx[0, 21:40].unsqueeze(-1)).mean()
    assert nll.item() < 0.05


def test_a_copy_head_without_line_breaks_hands_them_to_the_vocabulary_side():
    """`copy_line_breaks: false`: the same exact copier copies a repeated sequence, except where the copy reaches a
    blocked token (a line break): there its weight goes to the vocabulary side, which alone predicts what follows."""
    seq = torch.tensor([t for t in torch.randperm(V).tolist() if t not in BLOCKED][:19])
    seq = torch.cat([seq[:9], torch.tensor([BLOCKED[0]]), seq[9:]])  # a line break in the middle: position 9
    idx = torch.cat([seq, seq]).unsqueeze(0)  # (1, 40)
    free, blocked = _copying_model(), _copying_model(copy_line_breaks=False)
    with torch.no_grad():
        blocked.load_state_dict(free.state_dict(), strict=False)  # the same weights, the buffer kept
        logp_free, logp_blocked = free(idx)[0], blocked(idx)[0]
    after = [t for t in range(20, 39) if t != 28]  # query 28 predicts token 29, the second copy's line break
    target = idx[0, 1:]
    assert (logp_blocked[after].argmax(-1) == target[after]).all()  # everything else is still copied exactly
    assert logp_free[28, BLOCKED[0]].item() > -0.05  # the free head copies the line break ...
    with torch.no_grad():
        vocab_side = torch.log_softmax(blocked.head(blocked(idx, return_hidden=True)[0, 28]).float(), -1)
    assert vocab_side[BLOCKED[0]].item() < -1.0
    assert torch.allclose(logp_blocked[28], vocab_side, atol=1e-3)  # ... this one hands over to the vocabulary


def test_match_features_continue_the_copy_the_last_tokens_pick():
    """With the learned scores silenced, the match terms alone copy: order 1 cannot tell which of two earlier
    "a"s to continue from, order 2 can (it sees the token before "a" too)."""
    a, b, c, d, e, f = 10, 20, 21, 22, 23, 24
    seq = torch.tensor([a, b, c, d, a, e, f, b, 30, 31, 32, 33, 34])  # "a" followed by b, then by e
    idx = torch.cat([seq, seq]).unsqueeze(0)
    targets = idx[0, 1:]
    preds = {}
    for order in (1, 2):
        model = _model(copy_match=order)
        with torch.no_grad():
            for lin in (model.copy.q, model.copy.k_hidden, model.copy.k_embed):
                lin.weight.zero_()
            model.copy.sentinel.weight.zero_()
            model.copy.sentinel.bias.fill_(-30.0)  # no vocabulary side
            model.copy.match_gate.weight.zero_()
            model.copy.match_gate.bias.copy_(torch.tensor([5.0, 20.0][:order]))
            preds[order] = model(idx)[0].argmax(-1)
    second = range(13, 25)  # queries of the second copy (query 12 predicts its first token)
    assert all(preds[2][t] == targets[t] for t in second)
    assert any(preds[1][t] != targets[t] for t in second)  # after the second "a": b or e, a coin toss for order 1


def test_block_copies_needs_the_knob_and_a_token():
    with pytest.raises(ValueError, match="copy_line_breaks: true"):
        _model().block_copies([1])
    with pytest.raises(ValueError, match="no token"):
        _model(copy_line_breaks=False).block_copies([])
    model = _model(copy_line_breaks=False)
    assert model.state_dict()["copy.blocked"].nonzero().flatten().tolist() == BLOCKED  # saved with the weights


@pytest.mark.parametrize("gap,value,breaks,match", [(1, False, True, 0), (3, True, True, 0), (1, True, False, 0),
                                                    (1, True, True, 2), (2, True, False, 3)])
def test_kv_cached_decoding_equals_full_forward_with_left_padding(gap, value, breaks, match):
    model = _model(copy_min_gap=gap, copy_value_key=value, copy_line_breaks=breaks, copy_match=match)
    a, b = torch.randint(0, V, (1, 10)), torch.randint(0, V, (1, 6))
    a[0, 2], b[0, 1] = BLOCKED[0], BLOCKED[1]
    b[0, 3:] = b[0, :3]
    b[0, 0] = 0  # the padding's id: padding must never count as a match
    pad = torch.zeros(1, 4, dtype=torch.long)
    batch = torch.cat([a, torch.cat([pad, b], dim=1)])
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, :4] = False
    cache = model.new_cache(2, 32)
    out = model(batch, cache=cache, valid=valid)
    assert torch.allclose(out[0], model(a)[0], atol=1e-5)
    assert torch.allclose(out[1, 4:], model(b)[0], atol=1e-5)
    seq_a, seq_b = a, b
    for i in range(5):
        nxt = torch.randint(0, V, (2, 1))
        nxt[i % 2, 0] = BLOCKED[i % 3]
        nxt[1 - i % 2, 0] = (seq_a if i % 2 else seq_b)[0, i]  # repeats: matches of every order
        step = model(nxt, cache=cache)
        seq_a, seq_b = torch.cat([seq_a, nxt[:1]], 1), torch.cat([seq_b, nxt[1:]], 1)
        assert torch.allclose(step[0, 0], model(seq_a)[0, -1], atol=1e-5)
        assert torch.allclose(step[1, 0], model(seq_b)[0, -1], atol=1e-5)


@pytest.mark.parametrize("temperature,gap,value,breaks,match", [(0.0, 1, False, True, 0), (0.8, 1, False, True, 0),
                                                                (0.8, 4, True, True, 0), (0.8, 1, True, False, 0),
                                                                (0.8, 1, True, False, 2)])
def test_cached_sampling_equals_uncached(temperature, gap, value, breaks, match):
    model = _model(copy_min_gap=gap, copy_value_key=value, copy_line_breaks=breaks, copy_match=match)
    prompts = [torch.randint(0, V, (n,)).tolist() for n in (5, 9, 7)]
    cfg = SamplingConfig(temperature=temperature, top_k=0, top_p=0.95, max_new_tokens=12, no_repeat_ngram=0, seed=3)
    cached = sample(model, prompts, cfg, eos_id=V - 1, use_cache=True)
    uncached = sample(model, prompts, cfg, eos_id=V - 1, use_cache=False)
    assert cached == uncached


def test_bf16_loss_of_the_mixture_matches_fp32():
    model = _model(copy_min_gap=2, copy_value_key=True)
    idx, targets = torch.randint(0, V, (2, 12)), torch.randint(0, V, (2, 12))
    targets[:, 6:] = idx[:, 3:9]
    batch = {"input_ids": idx, "targets": targets}
    fp32 = lm_loss(model, batch)[0].item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = lm_loss(model, batch)[0].item()
    assert bf16 == pytest.approx(fp32, rel=0.03)


def test_rope_model_is_causal_and_cache_consistent():
    model = _model(copy_head=False)
    idx = torch.randint(0, V, (2, 16))
    full = model(idx)
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % V
    assert torch.allclose(model(changed)[:, :10], full[:, :10], atol=1e-5)
    cache = model.new_cache(2, 32)
    steps = [model(idx[:, :9], cache=cache)] + [model(idx[:, t : t + 1], cache=cache) for t in range(9, 16)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    assert not any(k.startswith("wpe") for k in model.state_dict())  # no learned positions, no saved tables


@pytest.mark.parametrize("copy_head", [True, False])
def test_masked_token_logps_kernel_matches_dense_path_with_gradients(copy_head):
    """The DPO path (`model_token_logps` with a mask: chunked, no logits kept, recomputed in backward) gives
    the dense path's log-probs and, for a loss that weights rows non-linearly, the same gradients."""
    idx, targets = torch.randint(0, V, (4, 11)), torch.randint(0, V, (4, 11))
    mask = torch.zeros(4, 11)
    mask[:, 4:] = 1.0
    mask[3, 8:] = 0.0  # padding
    grads, values = [], []
    for use_mask in (True, False):
        model = _model(seed=1, copy_head=copy_head, copy_min_gap=2, copy_value_key=True)
        logp = model_token_logps(model, idx, targets, mask if use_mask else None) * mask
        sums = logp.sum(dim=1)
        torch.nn.functional.logsigmoid(0.3 * (sums[:2] - sums[2:])).sum().backward()  # DPO-shaped
        values.append(logp.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert torch.allclose(values[0], values[1], atol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[1]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5), name


def test_masked_token_logps_kernel_in_bf16_is_close_to_fp32():
    model = _model(seed=2, copy_min_gap=2, copy_value_key=True)
    idx, targets = torch.randint(0, V, (2, 12)), torch.randint(0, V, (2, 12))
    mask = torch.ones(2, 12)
    fp32 = model_token_logps(model, idx, targets, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model_token_logps(model, idx, targets, mask)
    assert bf16.dtype == torch.float32
    assert torch.allclose(bf16, fp32, atol=0.05, rtol=0.03)


def test_pretraining_blocks_the_tokenizers_line_breaks_and_checkpoints_keep_them(tok, sample_stories, tmp_path):
    from pico.checkpoint import load_checkpoint, read_payload, save_checkpoint, to_bytes
    from pico.data import pack_tokens
    from pico.io import write_bytes
    from pico.recipes.pretrain import pretrain

    assert tok.line_break_ids() == [i for i in range(tok.vocab_size - 1) if set(tok.decode([i])) & {"\n", "\r"}]
    model_cfg = config("model", d_model=32, n_layer=1, n_head=2, max_seq_len=64, copy_line_breaks=False)
    tokens = pack_tokens(tok, sample_stories[:200], progress=False)
    base = pretrain(config("pretrain", device="cpu", batch_size=2, grad_accum=1, warmup_steps=1, eval_every=2,
                           save_every=2, log_every=1, max_steps=2, seq_len=32, eval_batches=1), model_cfg, tok,
                    tokens[:4000], tokens[4000:6000])
    assert base.model.copy.blocked.nonzero().flatten().tolist() == tok.line_break_ids()
    path = tmp_path / "base.pt"
    save_checkpoint(path, base.model, model_cfg=model_cfg, tokenizer_hash=tok.hash, stage="pretrain", step=2)
    loaded = load_checkpoint(path, tokenizer_hash=tok.hash)
    assert not loaded.model_cfg.copy_line_breaks
    assert torch.equal(loaded.model.copy.blocked, base.model.copy.blocked)

    # a checkpoint from before the knob (no copy_line_breaks in its config) loads as the head that copied them
    old_cfg = config("model", d_model=32, n_layer=1, n_head=2, max_seq_len=64)
    save_checkpoint(path, build_model(old_cfg, tok.vocab_size), model_cfg=old_cfg, tokenizer_hash=tok.hash,
                    stage="pretrain", step=0)
    payload = read_payload(path)
    del payload["model"]["copy_line_breaks"], payload["model"]["copy_match"]  # nor copy_match
    write_bytes(path, to_bytes(payload))
    old = load_checkpoint(path, tokenizer_hash=tok.hash)
    assert old.model_cfg.copy_line_breaks and old.model.copy.blocked is None
    assert old.model_cfg.copy_match == 0 and old.model.copy.match_gate is None


def test_sft_without_line_break_copies_keeps_the_weights_and_blocks_them(tok):
    from pico.checkpoint import Checkpoint
    from pico.recipes.finetune import without_line_break_copies

    cfg = config("model", d_model=32, n_layer=1, n_head=2, max_seq_len=64)
    torch.manual_seed(0)
    parent = Checkpoint(build_model(cfg, tok.vocab_size).eval(), cfg, {"stage": "pretrain"}, "abc")
    child = without_line_break_copies(parent, tok)
    assert parent.model_cfg.copy_line_breaks and not child.model_cfg.copy_line_breaks
    assert child.model.copy.blocked.nonzero().flatten().tolist() == tok.line_break_ids()
    same = {k: v for k, v in child.model.state_dict().items() if k != "copy.blocked"}
    assert all(torch.equal(v, parent.model.state_dict()[k]) for k, v in same.items())
    ids = torch.tensor([tok.encode("It was late.\nThe door opened.\n" * 3)])
    text_only = torch.tensor([tok.encode("It was late. The door opened. " * 3)])
    assert ids.shape[1] > 20 and text_only.shape[1] > 20  # past copy_min_gap: the head has slots to point at
    with torch.no_grad():
        assert torch.allclose(child.model(ids), parent.model(ids), atol=1e-3) is False  # the line breaks matter
        assert torch.allclose(child.model(text_only), parent.model(text_only), atol=1e-5)  # nothing else does
    assert without_line_break_copies(child, tok) is child  # already blocking: as it is


def test_sft_with_copy_match_starts_as_the_parent_then_learns_the_gates(tok):
    """`sft.copy_match`: the child's match gates start at zero (the parent's distribution, exactly) and are
    trainable; everything else is the parent's. Old checkpoints (no `copy_match` saved) load without match terms."""
    from pico.checkpoint import Checkpoint
    from pico.recipes.finetune import with_copy_match

    cfg = config("model", d_model=32, n_layer=1, n_head=2, max_seq_len=64, copy_min_gap=2)
    torch.manual_seed(0)
    parent = Checkpoint(build_model(cfg, tok.vocab_size).eval(), cfg, {"stage": "pretrain"}, "abc")
    child = with_copy_match(parent, 2)
    assert parent.model_cfg.copy_match == 0 and child.model_cfg.copy_match == 2
    assert all(torch.equal(v, child.model.state_dict()[k]) for k, v in parent.model.state_dict().items())
    ids = torch.tensor([tok.encode("It was late. The door opened. " * 4)])
    with torch.no_grad():
        assert torch.equal(child.model(ids), parent.model(ids))
    loss = -child.model(ids)[0, :-1].gather(-1, ids[0, 1:].unsqueeze(-1)).mean()
    loss.backward()
    assert child.model.copy.match_gate.weight.grad.abs().sum() > 0  # repeats: the gates get a gradient
    assert with_copy_match(child, 3) is child  # match terms already: as it is


@pytest.mark.parametrize("kind", ["lstm", "kgram_mlp"])
def test_models_without_a_copy_head_go_through_sft_without_line_break_copies_unchanged(tok, kind):
    from pico.checkpoint import Checkpoint
    from pico.recipes.finetune import without_line_break_copies

    cfg = config("model", type=kind, d_model=32, n_layer=1, n_head=2, max_seq_len=64)
    parent = Checkpoint(build_model(cfg, tok.vocab_size), cfg, {}, "abc")
    assert without_line_break_copies(parent, tok) is parent
    from pico.recipes.finetune import with_copy_match
    assert with_copy_match(parent, 2) is parent
