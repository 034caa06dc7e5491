import dataclasses

import pytest
import torch

from conftest import config
from pico.model import build_model
from pico.sampling import SamplingConfig, banned_by_ngram, filter_logits, sample

V = 50


def sampling(**kw) -> SamplingConfig:
    """The evaluation's sampling settings from params.yaml, some replaced."""
    return dataclasses.replace(SamplingConfig.of(config("evaluate")), **kw)


def test_top_p_keeps_the_smallest_set_with_enough_mass():
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]]))
    kept = lambda p: torch.isfinite(filter_logits(logits, top_p=p))[0].tolist()  # noqa: E731
    assert kept(0.5) == [False, True, False, False]
    assert kept(0.8) == [False, True, False, True]
    assert kept(0.81) == [False, True, True, True]
    assert kept(1.0) == [True, True, True, True]
    probs = torch.softmax(filter_logits(logits, top_p=0.8), -1)[0]
    assert probs[1].item() == pytest.approx(0.5 / 0.8) and probs[3].item() == pytest.approx(0.3 / 0.8)


def test_top_k():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    assert torch.isfinite(filter_logits(logits, top_k=2))[0].tolist() == [False, True, True, False]


def test_ngram_guard():
    assert banned_by_ngram([1, 2, 3, 1, 2], 3) == {3}
    assert banned_by_ngram([1, 2, 3], 3) == set()
    assert banned_by_ngram([5, 5, 5], 2) == {5}


class Scripted(torch.nn.Module):
    """A 'model' whose next-token logits depend only on the position: position t prefers script[t]."""

    supports_left_padding = True

    def __init__(self, script):
        super().__init__()
        self.script = script
        self.cfg = config("model", max_seq_len=64)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def new_cache(self, batch_size, capacity, device=None, dtype=None):
        from pico.model import LSTMCache

        return LSTMCache()

    def forward(self, idx, cache=None, valid=None, last_only=False):
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if cache is not None:
            cache.length += T
        logits = torch.full((B, T, V), -10.0)
        for t in range(T):
            pos = start + t - 3  # prompts are 3 tokens long in these tests
            logits[:, t, self.script[min(max(pos + 1, 0), len(self.script) - 1)]] = 10.0
        return logits[:, -1:] if last_only else logits


def test_generation_stops_at_eos_and_never_returns_it():
    model = Scripted([7, 8, 9, 0, 5, 5])  # 0 is EOS here
    out = sample(model, [[1, 2, 3]], sampling(temperature=0), eos_id=0)
    assert out == [[7, 8, 9]]


def test_max_new_tokens_and_context_limit():
    model = Scripted([7] * 100)
    greedy = {"temperature": 0, "no_repeat_ngram": 0}  # the scripted model repeats itself
    assert len(sample(model, [[1, 2, 3]], sampling(**greedy, max_new_tokens=5), eos_id=0)[0]) == 5
    assert len(sample(model, [[1, 2, 3]], sampling(**greedy, max_new_tokens=500), eos_id=0)[0]) == 61
    with pytest.raises(ValueError, match="context is 64"):
        sample(model, [[1] * 64], sampling(), eos_id=0)


def tiny(kind="transformer", seed=0):
    torch.manual_seed(seed)
    return build_model(config("model", type=kind, d_model=32, n_layer=2, n_head=2, max_seq_len=64, k=4), V)


@pytest.mark.parametrize("kind", ["transformer", "lstm", "kgram_mlp"])
def test_kv_cache_output_equals_no_cache_output(kind):
    model = tiny(kind)
    prompts = [[1, 2, 3, 4, 5], [9, 8, 7], [4, 4, 4, 4, 4, 4, 4, 4], [3, 1, 4]]
    for cfg in [sampling(temperature=0, max_new_tokens=20), sampling(temperature=1.0, top_p=0.9, max_new_tokens=20)]:
        cached = sample(model, prompts, cfg, eos_id=V - 1, use_cache=True)
        plain = sample(model, prompts, cfg, eos_id=V - 1, use_cache=False)
        assert cached == plain


def test_seeded_sampling_is_reproducible_and_independent_of_batching():
    model = tiny()
    prompts = [[1, 2, 3], [5, 6, 7, 8], [9, 10]]
    cfg = sampling(temperature=1.0, top_p=0.95, max_new_tokens=15, seed=3)
    together = sample(model, prompts, cfg, eos_id=V - 1, batch_size=8)
    assert together == sample(model, prompts, cfg, eos_id=V - 1, batch_size=8)
    one_by_one = sample(model, prompts, cfg, eos_id=V - 1, batch_size=1)
    assert together == one_by_one
    other_seed = sample(model, prompts, sampling(temperature=1.0, top_p=0.95, max_new_tokens=15, seed=4),
                          eos_id=V - 1)
    assert other_seed != together


def test_sampling_follows_the_distribution():
    counts = torch.zeros(3)
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    from pico.sampling import sample_next

    g = torch.Generator().manual_seed(0)
    for _ in range(3000):
        counts[sample_next(logits, sampling(temperature=1.0, top_p=1.0), [g])] += 1
    assert torch.allclose(counts / 3000, torch.tensor([0.6, 0.3, 0.1]), atol=0.03)


def test_no_repeat_ngram_guard_in_generation():
    model = tiny()
    cfg = sampling(temperature=0, max_new_tokens=40, no_repeat_ngram=2)
    out = sample(model, [[1, 2, 3]], cfg, eos_id=V - 1)[0]
    bigrams = [b for b in zip(out, out[1:]) if b not in {(1, 2), (2, 3)}]  # the prompt's may recur
    assert len(bigrams) == len(set(bigrams))  # the generated text never repeats itself otherwise


def test_no_repeat_ngram_lets_the_generation_copy_its_prompt():
    from pico.sampling import banned_by_ngram

    assert banned_by_ngram([5, 6], 2) == set()  # the guard sees the generated ids only, never the prompt
    assert banned_by_ngram([5, 6, 7, 5], 2) == {6}
    # an n-gram of the prompt (a name, the object, the taboo rule) may recur as often as the story needs it
    assert banned_by_ngram([5, 6, 7, 5], 2, allowed={(5, 6)}) == set()
    assert banned_by_ngram([5, 6, 7, 5, 8, 7, 5], 2, allowed={(5, 6)}) == {8}


def test_no_repeat_ngram_lets_a_copy_of_the_prompt_go_on():
    """A name said again after the same words: ". Silas" twice, the prompt having ": Silas" (" S", "il", "as")."""
    from pico.sampling import NgramGuard, ngrams

    prompt = [9, 1, 2, 3, 4]  # ":", " S", "il", "as", "\n"
    story = [7, 1, 2, 3, 5, 7, 1, 2]  # ". Silas saw. S il" + ?
    assert banned_by_ngram(story, 4, ngrams(prompt, 4)) == {3}  # the prompt's 4-grams alone: the name must break
    assert banned_by_ngram(story, 4, ngrams(prompt, 4), ngrams(prompt, 2)) == set()  # "il" -> "as" is a copy
    guard = NgramGuard.for_prompt(4, prompt)
    for token in story + [3]:
        guard.add(token)
    assert guard.banned() == {5}  # the copy has ended: ". Silas saw" again is a repeat, as before
    more = [8, 7, 1, 2, 3, 6, 8, 7, 1]  # "met. Silas ran ... met. S" + ?: the 4-gram "met. S il" repeats
    for token in more:
        guard.add(token)
    assert banned_by_ngram(story + [3] + more, 4, ngrams(prompt, 4)) == {2} and guard.banned() == set()


@pytest.mark.parametrize("settings", [dict(temperature=1e-40), dict(temperature=5e-324), dict(temperature=1e-7),
                                      dict(temperature=1.0, top_p=1e-300), dict(temperature=1e-40, top_p=1e-300)])
def test_settings_that_would_underflow_sample_greedily(settings):
    """logits / 1e-40 overflows to inf in fp32 and top_p 1e-300 rounds to 0: both are the greedy limit, not NaN."""
    model = tiny()
    prompts = [[1, 2, 3], [5, 6, 7, 8]]
    greedy = sample(model, prompts, sampling(temperature=0, max_new_tokens=12), eos_id=V - 1)
    assert sample(model, prompts, sampling(max_new_tokens=12, **settings), eos_id=V - 1) == greedy


def test_top_p_always_keeps_the_most_likely_token():
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    assert torch.isfinite(filter_logits(logits, top_p=1e-300))[0].tolist() == [False, True, False]


def test_nucleus_candidates_keep_the_same_tokens_as_the_full_sort():
    from pico.sampling import nucleus_candidates

    g = torch.Generator().manual_seed(0)
    for scale in (0.5, 2.0, 6.0):  # flat to peaked distributions
        logits = torch.randn(8, 4096, generator=g) * scale
        logits[0, :100] = float("-inf")  # banned tokens (the n-gram guard) take part as -inf
        for top_p in (0.5, 0.9, 0.95):
            found = nucleus_candidates(logits, top_p)
            full = torch.isfinite(filter_logits(logits, top_p=top_p))
            if found is None:  # a nucleus wider than the candidates: the caller sorts everything
                assert (full.sum(-1) > 256).any()
                continue
            ids, kept = found
            mine = torch.zeros_like(full).scatter(-1, ids, torch.isfinite(kept))
            assert torch.equal(mine, full)
    flat = torch.zeros(1, 4096)
    assert nucleus_candidates(flat, 0.95) is None


def test_a_rows_draw_does_not_depend_on_its_batchmates():
    from pico.sampling import sample_next

    g = torch.Generator().manual_seed(1)
    peaked = torch.randn(1, 4096, generator=g) * 8.0  # its nucleus lies within the top candidates
    flat = torch.zeros(1, 4096)  # its nucleus does not: it needs the full sort
    cfg = sampling(temperature=1.0, top_p=0.95)
    for _ in range(20):
        seed = int(torch.randint(0, 10_000, (1,), generator=g))
        alone = sample_next(peaked, cfg, [torch.Generator().manual_seed(seed)])
        beside_flat = sample_next(torch.cat([peaked, flat]), cfg,
                                  [torch.Generator().manual_seed(seed), torch.Generator().manual_seed(0)])
        assert int(beside_flat[0]) == int(alone[0])


def test_ngram_guard_agrees_with_a_scan_of_the_whole_text():
    from pico.sampling import NgramGuard

    def scan(seq, n, allowed, copy_bigrams):  # the definition: every n-gram of seq whose first n-1 tokens end
        if len(seq) < n:                      # seq, unless allowed or its last token continues a copy
            return set()
        prefix = tuple(seq[len(seq) - n + 1:])
        return {seq[i + n - 1] for i in range(len(seq) - n + 1)
                if tuple(seq[i:i + n - 1]) == prefix and tuple(seq[i:i + n]) not in allowed
                and (seq[-1], seq[i + n - 1]) not in copy_bigrams}

    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 4):
        for _ in range(30):
            seq = torch.randint(0, 4, (40,), generator=g).tolist()
            allowed = {tuple(seq[i:i + n]) for i in range(0, 10)}
            copy_bigrams = {tuple(torch.randint(0, 4, (2,), generator=g).tolist()) for _ in range(3)}
            for bigrams in (set(), copy_bigrams):
                guard = NgramGuard(n, allowed, bigrams)
                for t, token in enumerate(seq):
                    assert guard.banned() == scan(seq[:t], n, allowed, bigrams), (n, t)
                    guard.add(token)


@pytest.mark.parametrize("kind", ["transformer", "lstm", "kgram_mlp"])
@pytest.mark.parametrize("share", [0.25, 1e-9])  # the default; and a drop at every finished row
def test_rows_that_finish_early_leave_the_batch_without_changing_any_story(kind, share, monkeypatch):
    import pico.sampling

    monkeypatch.setattr(pico.sampling, "COMPACT_SHARE", share)
    model = tiny(kind, seed=1)
    prompts = [[1 + i % 5, 2, 3 + i % 3] for i in range(12)]  # equal lengths: the LSTM and k-gram batch them too
    cfg = sampling(temperature=1.5, top_p=1.0, max_new_tokens=30, seed=5)
    eos = 7  # a common token at this temperature: rows stop at many different steps
    together = sample(model, prompts, cfg, eos_id=eos, batch_size=12)
    assert sum(len(ids) < 30 for ids in together) >= 3, together  # a quarter ends early: the batch shrinks
    assert together == sample(model, prompts, cfg, eos_id=eos, batch_size=1)
    assert together == sample(model, prompts, cfg, eos_id=eos, batch_size=12, use_cache=False)
