"""Copying metrics (pico/copying.py): a perfect copier scores ~0 on the second copy, a fresh model ~ln V;
field spans line up with the tokens a model is scored on."""

import math

import numpy as np
import torch
import torch.nn as nn

from conftest import config
from pico.copying import field_copy_metrics, field_text, field_token_span, induction_batch, induction_nll
from pico.model import build_model
from pico.prompt import build_prompt
from pico.spec import Spec
from pico.stories import horror_story

V = 128


def _distinct_stream(n=4000, seed=0):
    """A token stream in which any V consecutive ids are distinct (so each copy is unambiguous)."""
    return np.tile(np.random.default_rng(seed).permutation(V), n // V + 1)


def perfect_copier():
    """Copy head with embedding keys, blocks switched off: position t points at the slot after the earlier
    occurrence of x_t; with no earlier occurrence, the sentinel wins and the (near-uniform) vocabulary side
    predicts. ln_f scales hidden states down so that the tied output layer does not favour repeating x_t."""
    d = 64
    torch.manual_seed(0)
    model = build_model(config("model", type="transformer", d_model=d, n_layer=1, n_head=2, max_seq_len=128,
                               pos_encoding="rope", copy_head=True, copy_dim=d, copy_value_key=False,
                               copy_min_gap=1), V).eval()
    with torch.no_grad():
        model.copy.k_hidden.weight.zero_()  # keys from the previous token's embedding only
        for blk in model.blocks:
            blk.attn.proj.weight.zero_()
            blk.mlp.proj.weight.zero_()
        model.wte.weight.normal_(0.0, 1.0)
        model.ln_f.weight.fill_(0.01)  # vocabulary logits within +-1: near uniform
        model.copy.q.weight.copy_(torch.eye(d) * 800)
        model.copy.k_embed.weight.copy_(torch.eye(d))
        model.copy.sentinel.weight.zero_()
        model.copy.sentinel.bias.fill_(20.0)  # below a match's score (~64), far above a non-match's (~0 +- 8)
    return model


def test_induction_batch_is_seeded_and_repeated():
    tokens = np.arange(10_000) % 1000
    a, b = induction_batch(tokens, n_windows=4, length=10), induction_batch(tokens, n_windows=4, length=10)
    assert a.shape == (4, 20) and torch.equal(a, b)
    assert torch.equal(a[:, :10], a[:, 10:])


def test_perfect_copier_scores_near_zero_on_the_second_copy():
    batch = induction_batch(_distinct_stream(), n_windows=8, length=40)
    m = induction_nll(perfect_copier(), batch)
    assert m["induction_nll_second"] < 0.2  # only the copy's first token is unpredictable: ~ln V / 40
    assert m["induction_nll_first"] > 3.0


def test_fresh_model_scores_ln_v_on_both_copies():
    torch.manual_seed(0)
    model = build_model(config("model", type="transformer", d_model=32, n_layer=2, n_head=2, max_seq_len=128,
                               pos_encoding="learned", copy_head=False), V)
    m = induction_nll(model, induction_batch(_distinct_stream(), n_windows=8, length=40))
    assert abs(m["induction_nll_first"] - math.log(V)) < 0.3
    assert abs(m["induction_nll_second"] - math.log(V)) < 0.3


def _spec():
    return Spec(title="The Quiet Floor", setting="a museum after closing time", protagonist="Mina",
                supporting="Agnes", object="a cracked hand mirror", taboo="never whistle after sunset",
                twist="the snow is falling upward")


def test_field_spans_cover_the_field_text(tok):
    import random

    spec = _spec()
    story = horror_story(spec, random.Random(0))
    ids = tok.encode(story)
    for field in ("protagonist", "object", "taboo", "twist"):
        text = field_text(spec, field)
        first, last = field_token_span(tok, ids, story, text)
        covered = tok.decode(ids[first : last + 1])
        assert text.lower() in covered.lower(), (field, covered)
        assert len(tok.decode(ids[first + 1 : last + 1])) < len(text)  # the first token is part of the field
    assert field_text(spec, "taboo") == "whistle after sunset" and field_text(spec, "twist") == "snow is falling upward"


class _Oracle(nn.Module):
    """Knows the rows: puts all mass on each row's true next token (checks the metric's plumbing)."""

    def __init__(self, sequences):
        super().__init__()
        self.sequences = sequences
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        out = torch.full((*idx.shape, V * 4), -30.0)
        for b in range(idx.shape[0]):
            seq = next(s for s in self.sequences if s[: idx.shape[1]] == idx[b, : len(s) - 1].tolist()[: idx.shape[1]])
            for t in range(min(idx.shape[1], len(seq) - 1)):
                out[b, t, seq[t + 1]] = 30.0
        return out


def test_field_metrics_of_an_oracle_and_of_a_fresh_model(tok):
    import random

    from pico.prompt import encode_sft

    rows = []
    for i in range(3):
        spec = _spec()
        rows.append({"prompt": build_prompt(spec), "response": horror_story(spec, random.Random(i)),
                     "spec": spec.to_dict()})
    seqs = [encode_sft(tok, r["prompt"], r["response"], 512).ids for r in rows]
    m = field_copy_metrics(_Oracle(seqs), tok, rows, 512)
    for f in ("protagonist", "object", "taboo", "twist"):
        assert m[f"field_first_acc_{f}"] == 1.0
        if not math.isnan(m[f"field_copy_nll_{f}"]):
            assert m[f"field_copy_nll_{f}"] < 1e-3
        assert m[f"field_end_nll_{f}"] < 1e-3
    torch.manual_seed(0)
    fresh = build_model(config("model", type="transformer", d_model=32, n_layer=2, n_head=2, max_seq_len=512,
                               pos_encoding="learned", copy_head=False), tok.vocab_size)
    m = field_copy_metrics(fresh, tok, rows, 512)
    assert abs(m["field_copy_nll_taboo"] - math.log(tok.vocab_size)) < 0.5
    assert abs(m["field_end_nll_taboo"] - math.log(tok.vocab_size)) < 0.5


class _PromptContinuer(nn.Module):
    """A pure pointer: predicts whatever followed the earlier occurrence of the current token that shares the
    longest history with it (an induction head with no gate). It copies every field perfectly and never knows
    where one ends."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        out = torch.full((*idx.shape, V * 4), -30.0)
        for b in range(idx.shape[0]):
            row = idx[b].tolist()
            for t in range(len(row)):
                def shared(j):
                    n = 0
                    while n <= j and row[j - n] == row[t - n]:
                        n += 1
                    return n
                earlier = [j for j in range(t) if row[j] == row[t]]
                if earlier:
                    out[b, t, row[max(earlier, key=shared) + 1]] = 30.0
        return out


def test_field_end_nll_catches_a_pointer_that_keeps_copying_the_prompt(tok):
    import random

    spec = _spec()
    rows = [{"prompt": build_prompt(spec), "response": horror_story(spec, random.Random(0)), "spec": spec.to_dict()}]
    m = field_copy_metrics(_PromptContinuer(), tok, rows, 512)
    assert m["field_copy_nll_taboo"] < 1e-3  # the taboo is copied token for token...
    assert m["field_end_nll_taboo"] > 10  # ...and then the prompt's newline is predicted, not the story's text
