"""Sampling: temperature, top-k, top-p, a no-repeat-n-gram guard, stop at EOS, KV-cached batched decoding.

Each prompt has its own random stream (seed, index), so its sample does not depend on which other prompts
share its batch: the same prompts and seed give the same stories in `evaluate`, `pico play` and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from pico.data import stable_seed
from pico.device import autocast_for

# Below this temperature sampling is greedy: logits / temperature would overflow to inf (1e-40 does in fp32)
# and softmax would give NaN; the limit of sampling as the temperature goes to 0 is the argmax anyway.
GREEDY_BELOW = 1e-6


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """How to sample; `evaluate` builds it from its params section, `pico play` from its flags."""

    temperature: float  # 0 (or anything below GREEDY_BELOW) = greedy
    top_k: int  # 0 = off
    top_p: float  # 1.0 = off
    max_new_tokens: int
    no_repeat_ngram: int  # forbid repeating an n-gram of the generated text (NgramGuard); 0 = off
    seed: int

    @classmethod
    def of(cls, cfg) -> "SamplingConfig":
        """The sampling settings of an EvaluateConfig (the same for every checkpoint)."""
        return cls(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                   no_repeat_ngram=cfg.no_repeat_ngram, seed=cfg.seed)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (smallest set with mass >= top_p) to -inf. logits: (B, V)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False  # the most likely token is always kept, even when top_p rounds to 0 in fp32
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def ngrams(seq: list[int], n: int) -> set[tuple[int, ...]]:
    return {tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)} if n > 0 else set()


class NgramGuard:
    """Which next tokens would repeat an n-gram of the text generated so far. A story may say its spec's phrases
    (a name, the object, the taboo rule) as often as it needs, so two kinds of repeat are let through: an n-gram of
    the prompt (`allowed`), and a token that continues a copy of the prompt (`copy_bigrams`: the previous token and
    this one stand side by side in the prompt). Without the second, a name said again after the same words breaks:
    the 4-gram ". S il" + "as" of a second ". Silas" is a repeat the prompt's ": Silas" does not allow, so the
    sampler had to write "Sil saw it" (RESEARCH.md finding 63). Loops are still cut where a copy ends.

    Kept up to date token by token (`add`), so a step costs one lookup, not a scan of the whole text.
    """

    def __init__(self, n: int, allowed: set[tuple[int, ...]] = frozenset(),
                 copy_bigrams: set[tuple[int, ...]] = frozenset()):
        self.n, self.allowed = n, allowed
        self.seq: list[int] = []
        self.followers: dict[tuple[int, ...], set[int]] = {}  # (n-1)-gram -> the tokens that followed it
        self.copy_next: dict[int, set[int]] = {}  # token -> the tokens that follow it in the prompt
        for a, b in copy_bigrams:
            self.copy_next.setdefault(a, set()).add(b)

    @classmethod
    def for_prompt(cls, n: int, prompt: list[int]) -> "NgramGuard":
        """The guard of a story continuing `prompt`: its n-grams may recur, and its copies may go on."""
        return cls(n, ngrams(prompt, n), ngrams(prompt, 2))

    def add(self, token: int) -> None:
        self.seq.append(token)
        if self.n > 0 and len(self.seq) >= self.n:
            gram = tuple(self.seq[-self.n :])
            if gram not in self.allowed:
                self.followers.setdefault(gram[:-1], set()).add(gram[-1])

    def banned(self) -> set[int]:
        if self.n <= 0 or len(self.seq) < self.n:
            return set()
        found = self.followers.get(tuple(self.seq[len(self.seq) - self.n + 1 :]), set())
        return found - self.copy_next.get(self.seq[-1], set()) if found and self.copy_next else found


def banned_by_ngram(seq: list[int], n: int, allowed: set[tuple[int, ...]] = frozenset(),
                    copy_bigrams: set[tuple[int, ...]] = frozenset()) -> set[int]:
    """Tokens that would repeat an n-gram already in `seq`, unless the repeat is let through (see NgramGuard)."""
    guard = NgramGuard(n, allowed, copy_bigrams)
    for token in seq:
        guard.add(token)
    return guard.banned()


NUCLEUS_CANDIDATES = 256  # top-p looks for its nucleus among this many most likely tokens first


def nucleus_candidates(logits: torch.Tensor, top_p: float, k: int = NUCLEUS_CANDIDATES):
    """(ids (B, k), logits (B, k) with -inf outside the nucleus) when every row's nucleus lies within its k most
    likely tokens, else None. The same nucleus as `filter_logits`, without sorting the whole vocabulary."""
    k = min(k, logits.shape[-1])
    top, ids = torch.topk(logits, k, dim=-1)  # sorted, most likely first
    probs = (top - torch.logsumexp(logits, dim=-1, keepdim=True)).exp()
    if not bool((probs.sum(dim=-1) >= top_p).all()):
        return None
    drop = (probs.cumsum(dim=-1) - probs) >= top_p
    drop[..., 0] = False
    return ids, top.masked_fill(drop, float("-inf"))


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row from (B, V) logits; row i draws from generators[i]. Greedy below GREEDY_BELOW."""
    if cfg.temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1)
    scaled = filter_logits(logits.float() / cfg.temperature, cfg.top_k)
    found = nucleus_candidates(scaled, cfg.top_p) if cfg.top_p < 1.0 else None
    if found is None and cfg.top_p < 1.0 and len(generators) > 1:
        # Some row's nucleus is wider than the candidates: decide row by row, so that how a row draws (and so
        # its story) never depends on which other rows share its batch.
        return torch.cat([sample_next(logits[i : i + 1], cfg, [g]) for i, g in enumerate(generators)])
    if found is not None:  # draw among the nucleus only: no sort or draw over the whole vocabulary
        ids, kept = found
        probs = torch.softmax(kept, dim=-1).cpu()
        picks = [ids[i, int(torch.multinomial(probs[i], 1, generator=g))] for i, g in enumerate(generators)]
        return torch.stack(picks).to(logits.device)
    probs = torch.softmax(filter_logits(scaled, 0, cfg.top_p), dim=-1).cpu()
    picks = [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)]
    return torch.cat(picks).to(logits.device)


@torch.no_grad()
def sample(model: nn.Module, prompts: list[list[int]], cfg: SamplingConfig, eos_id: int, *,
           batch_size: int = 16, use_cache: bool = True, device: torch.device | str = "cpu",
           dtype: torch.dtype = torch.float32) -> list[list[int]]:
    """Continue each prompt; return the new ids of each (EOS excluded, generation stops there).

    Transformers decode left-padded batches with a KV cache; the LSTM and k-gram models batch prompts of
    equal length. Generation also stops when the context is full. `dtype` bf16 runs the forward passes under
    bf16 autocast (the sampling itself, softmax and top-p, stays fp32).
    """
    model.eval().to(device)
    context = model.cfg.max_seq_len
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty")
        if len(p) >= context:
            raise ValueError(f"prompt {i} has {len(p)} tokens; the model's context is {context}")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    groups: list[list[int]] = []
    for i in order:  # equal-length groups for models that cannot take padding
        if groups and len(groups[-1]) < batch_size and (
                getattr(model, "supports_left_padding", False) or len(prompts[groups[-1][0]]) == len(prompts[i])):
            groups[-1].append(i)
        else:
            groups.append([i])
    out: list[list[int]] = [[] for _ in prompts]
    for group in groups:
        gens = [torch.Generator().manual_seed(stable_seed(cfg.seed, i)) for i in group]
        with autocast_for(torch.device(device), dtype):
            results = _generate_batch(model, [prompts[i] for i in group], cfg, eos_id, gens, use_cache, device)
        for i, ids in zip(group, results):
            out[i] = ids
    return out


# Decoding drops finished rows from the batch (and its cache) once this share of them or more has finished: each
# drop copies the cache, so it waits until enough rows go at once to pay for the copy.
COMPACT_SHARE = 0.25


def _generate_batch(model, prompts, cfg, eos_id, gens, use_cache, device) -> list[list[int]]:
    B = len(prompts)
    context = model.cfg.max_seq_len
    width = max(len(p) for p in prompts)
    budget = min(cfg.max_new_tokens, context - width)
    idx = torch.zeros(B, width, dtype=torch.long)
    valid = torch.zeros(B, width, dtype=torch.bool)
    for r, p in enumerate(prompts):  # right-align: left padding
        idx[r, width - len(p):] = torch.tensor(p)
        valid[r, width - len(p):] = True
    idx, valid = idx.to(device), valid.to(device)
    seqs = [list(p) for p in prompts]
    new: list[list[int]] = [[] for _ in prompts]
    guards = [NgramGuard.for_prompt(cfg.no_repeat_ngram, p) for p in prompts]
    rows = list(range(B))  # the prompt of each row of the batch now; finished rows leave it (with their cache)
    done = [False] * B
    cache = model.new_cache(B, width + budget) if use_cache else None
    logits = model(idx, cache=cache, valid=valid, last_only=True)[:, -1] if use_cache else None
    for _ in range(budget):
        if not use_cache:  # the reference path: recompute everything from the full sequences
            logits = torch.stack([model(torch.tensor([seqs[r]], device=device))[0, -1] for r in rows])
        if cfg.no_repeat_ngram:
            logits = logits.clone()
            for i, r in enumerate(rows):  # the generated text only, and the prompt's n-grams may recur: no loops
                banned = guards[r].banned()
                if banned:
                    logits[i, list(banned)] = float("-inf")
        nxt = sample_next(logits, cfg, [gens[r] for r in rows])  # each row draws from its own stream
        for i, r in enumerate(rows):
            if done[r]:
                continue
            token = int(nxt[i])
            if token == eos_id:
                done[r] = True
            else:
                new[r].append(token)
                seqs[r].append(token)
                guards[r].add(token)
        live = [i for i, r in enumerate(rows) if not done[r]]
        if not live:
            break
        if len(live) <= (1 - COMPACT_SHARE) * len(rows):
            rows = [rows[i] for i in live]
            if use_cache:
                keep = torch.tensor(live, device=nxt.device)
                cache, nxt = cache.select(keep), nxt[keep]
        if use_cache:
            logits = model(nxt.unsqueeze(1), cache=cache)[:, -1]
    return new
