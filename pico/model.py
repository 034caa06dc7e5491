"""Next-token models: a GPT (the default), an LSTM and the course's k-gram MLP baseline.

All three map ids (B, T) to logits (B, T, V) (or, with `return_hidden`, to the hidden states their `head`
maps to logits) and take an optional cache for incremental decoding, so the training loop, the losses and
the sampler never ask which one they have.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from pico.config import ModelConfig
from pico.kernels import masked_logsumexp


# ----------------------------------------------------------------------------------------------- GPT
@dataclass
class KVCache:
    """Keys/values of every layer for up to `k.shape[3]` positions; rows may be left-padded."""

    k: torch.Tensor  # (L, B, nh, Tmax, hs)
    v: torch.Tensor  # (L, B, nh, Tmax, hs)
    key_valid: torch.Tensor  # (B, Tmax) bool: False for left padding
    next_pos: torch.Tensor  # (B,) position id of the next token of each row
    length: int = 0  # filled slots
    copy: CopyCache | None = None  # the copy head's slots, when the model has one

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def select(self, rows: torch.Tensor) -> "KVCache":
        """The cache of `rows` only (a 1-D index of batch rows): decoding drops the rows that have finished."""
        return KVCache(k=self.k[:, rows], v=self.v[:, rows], key_valid=self.key_valid[rows],
                       next_pos=self.next_pos[rows], length=self.length,
                       copy=self.copy.select(rows) if self.copy is not None else None)


@dataclass
class CopyCache:
    """What the copy head keeps between decoding calls, one slot per position like the KV cache."""

    k: torch.Tensor  # (B, Tmax, dc) key of every slot, built from what preceded the slot's token
    ids: torch.Tensor  # (B, Tmax) the token of every slot: what pointing at the slot copies
    key_valid: torch.Tensor  # (B, Tmax) bool: the slot and the one before it are real tokens (not padding)
    next_k: torch.Tensor  # (B, dc) the part of the next slot's key built from the last token seen
    next_valid: torch.Tensor  # (B,) bool: the last token seen was real

    def select(self, rows: torch.Tensor) -> "CopyCache":
        return CopyCache(k=self.k[rows], ids=self.ids[rows], key_valid=self.key_valid[rows],
                         next_k=self.next_k[rows], next_valid=self.next_valid[rows])


def rope_tables(head_size: int, max_len: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, (max_len, head_size / 2) each (Su et al., 2021)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i + hs/2}) by their position's angle. x (B, nh, T, hs); cos, sin (B|1, 1, T, hs/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.n_head, self.layer = cfg.n_head, layer
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            start = cache.length
            cache.k[self.layer, :, :, start : start + T] = k
            cache.v[self.layer, :, :, start : start + T] = v
            k = cache.k[self.layer, :, :, : start + T]
            v = cache.v[self.layer, :, :, : start + T]
        y = attention(q, k, v, mask, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              dropout: float) -> torch.Tensor:
    """Scaled dot-product attention, causal where there is no `mask` (the fast fused kernel).

    On CPU under bf16 autocast, in fp32: torch's CPU flash-attention backward is slower in bf16 than in fp32 at
    pico's head sizes (benchmarks/README.md, issue 18), and bf16 attention held back what pretraining learns
    (RESEARCH.md, finding 22). Forward passes without gradients take it too, so DPO's reference log-probs and
    its policy's agree exactly at step 0.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):
            return attention(q.float(), k.float(), v.float(), mask, dropout)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, bias=False)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln2 = nn.LayerNorm(cfg.d_model, bias=False)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None, mask=None, rope=None):
        x = x + self.attn(self.ln1(x), cache, mask, rope)
        return x + self.mlp(self.ln2(x))


NO_COPY = -1e4  # log-mass of the copy side where no earlier token equals the target (finite: no NaN gradients)


class CopyHead(nn.Module):
    """Pointer-generator copy head (See et al., 2017) with a sentinel in place of a separate gate (Merity et al.,
    2016). At position t one small attention scores the sentinel and every earlier slot j:

        s_t0 = w · h_t + b                                              the vocabulary side
        s_tj = q(h_t) · k_j / sqrt(dc),  k_j = k_h(h_{j-1}) + k_e(wte(x_{j-1}))   "x_j followed what I see now"
                                         [+ k_v(wte(x_j)) with copy_value_key]  "and x_j is worth copying"
               [+ sum_{m=1..n} g_m(h_t) · [x_{t-i} = x_{j-1-i} for i < m]  with copy_match = n]
               for j <= t + 1 - copy_min_gap
        a_t  = softmax(s_t)
        p(y | x_<=t) = a_t0 · softmax(head(h_t))[y] + sum_{j: x_j = y} a_tj

    h is the final (ln_f) hidden state. Slot 0 has nothing before it and is never pointed at. The match terms
    (`copy_match`) are exact: slot j gains g_m(h_t) where the m tokens before it equal the last m tokens read,
    so a copy under way continues from the slot that follows what it has copied so far, whatever the key's
    learned part confuses it with (g_m, learned, lets the state decide how much an exact match counts). Without
    `copy_line_breaks`, a slot whose token is in `blocked` (the tokens holding a line break, set from the tokenizer
    by `GPT.block_copies` and saved with the weights) copies nothing: its weight goes to the vocabulary side,

        p(y | x_<=t) = (a_t0 + sum_{j: x_j blocked} a_tj) · softmax(head(h_t))[y] + sum_{j: x_j = y, not blocked} a_tj

    so a copy that reaches the end of a prompt's line hands over to the language model, which writes what follows
    (a full stop, "and ...") instead of the prompt's line break; every line break is the vocabulary side's.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        d, dc = cfg.d_model, cfg.copy_dim
        self.q = nn.Linear(d, dc, bias=False)
        self.k_hidden = nn.Linear(d, dc, bias=False)
        self.k_embed = nn.Linear(d, dc, bias=False)
        self.k_value = nn.Linear(d, dc, bias=False) if cfg.copy_value_key else None
        self.sentinel = nn.Linear(d, 1, bias=True)
        self.match_gate = nn.Linear(d, cfg.copy_match, bias=True) if cfg.copy_match else None
        # None (not saved) when every token may be copied
        self.register_buffer("blocked", None if cfg.copy_line_breaks else torch.zeros(vocab_size, dtype=torch.bool))

    def handover(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Which slots, by the token they hold (any shape), hand their weight to the vocabulary side (bool, same
        shape); None when the head copies every token."""
        return None if self.blocked is None else self.blocked[ids]

    def keys(self, hidden: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """States at positions j-1, (B, T, d) each -> keys of slots j, (B, T, dc), before `value_keys`."""
        return self.k_hidden(hidden) + self.k_embed(emb)

    def value_keys(self, keys: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Add what slot j would copy, x_j's embedding (B, T, d), to its keys (B, T, dc) (`copy_value_key`)."""
        return keys if self.k_value is None else keys + self.k_value(emb)

    def scores(self, hidden: torch.Tensor, keys: torch.Tensor,
               history: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sentinel (B, Tq), slot scores (B, Tq, Tk)) in fp32. `history` (`copy_match`): the ids read last
        (B, Tq, n), x_t first, and the ids before each slot (B, Tk, n), x_{j-1} first (see `id_history`)."""
        q = self.q(hidden)
        slots = ((q @ keys.transpose(1, 2)) / math.sqrt(q.shape[-1])).float()
        if self.match_gate is not None:
            gates = self.match_gate(hidden).float()  # (B, Tq, n)
            read, before = history
            equal = torch.ones_like(slots, dtype=torch.bool)
            for m in range(gates.shape[-1]):  # order m + 1: the last m + 1 tokens all match
                equal = equal & (read[:, :, m].unsqueeze(2) == before[:, :, m].unsqueeze(1))
                slots = slots + gates[..., m : m + 1] * equal
        return self.sentinel(hidden).squeeze(-1).float(), slots

    def log_terms(self, hidden: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor, match: torch.Tensor,
                  handover: torch.Tensor | None = None, history=None):
        """log of the vocabulary side's weight (a_t0, plus the slots in `handover`) and log sum_{j: match} a_tj,
        (B, Tq) each, by masked logsumexps (no (B, Tq, Tk) log-softmax). `match` holds no handover slot."""
        sentinel, scores = self.scores(hidden, keys, history)
        lse = torch.logaddexp(sentinel, masked_logsumexp(scores, key_mask, NO_COPY))
        gate = sentinel if handover is None else torch.logaddexp(sentinel, masked_logsumexp(scores, handover, NO_COPY))
        return gate - lse, masked_logsumexp(scores, match, NO_COPY) - lse

    def log_weights(self, hidden: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor,
                    handover: torch.Tensor | None = None, history=None) -> torch.Tensor:
        """log a (B, Tq, 1 + Tk): column 0 the vocabulary side (the sentinel, plus the slots in `handover`, which
        are then -inf), column 1 + i slot i of `keys`."""
        sentinel, scores = self.scores(hidden, keys, history)
        scores = scores.masked_fill(~key_mask, float("-inf"))  # the sentinel keeps every row finite
        log_a = torch.log_softmax(torch.cat([sentinel.unsqueeze(-1), scores], dim=-1), dim=-1)
        if handover is None:
            return log_a
        handover = handover & key_mask
        vocab = torch.logaddexp(log_a[..., 0], masked_logsumexp(log_a[..., 1:], handover, NO_COPY))  # finite grads
        return torch.cat([vocab.unsqueeze(-1), log_a[..., 1:].masked_fill(handover, float("-inf"))], dim=-1)


def id_history(ids: torch.Tensor, n: int, none: int, real: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) ids -> (B, T, n): at position p, the ids at p, p-1, ..., p-n+1; `none` (a negative id, so never
    equal to a token) where that is before the start or, with `real` (B, T) bool, a padding position."""
    if real is not None:
        ids = ids.masked_fill(~real, none)
    return torch.stack([F.pad(ids, (m, 0), value=none)[:, : ids.shape[1]] for m in range(n)], dim=-1)


class GPT(nn.Module):
    """Decoder-only transformer (GPT-2 shape, pre-LN, tied embeddings). Options: rotary positions in place of
    learned ones (`pos_encoding: rope`), and a copy head (`copy_head`) that lets it point at context tokens.

    `forward` returns logits, or with the copy head the log-probs of the mixture: either way their softmax is
    the next-token distribution, so sampling and log-prob code need not ask which it has.
    """

    supports_left_padding = True

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.wte = nn.Embedding(vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.pos_encoding == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=False)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.head.weight = self.wte.weight  # weight tying
        self.copy = CopyHead(cfg, vocab_size) if cfg.copy_head else None
        if cfg.pos_encoding == "rope":
            cos, sin = rope_tables(cfg.d_model // cfg.n_head, cfg.max_seq_len)
            self.register_buffer("rope_cos", cos, persistent=False)  # (Tmax, hs/2); rebuilt, not saved
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(_init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # GPT-2: scale residual projections by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def block_copies(self, ids: list[int]) -> None:
        """Set the tokens the copy head does not copy, their slots' weight going to the vocabulary side
        (`copy_line_breaks: false`; set once from the tokenizer, and checkpoints carry them)."""
        if self.copy is None or self.copy.blocked is None:
            raise ValueError("block_copies: this model's copy head copies every token (model.copy_line_breaks: true)")
        if not ids:
            raise ValueError("block_copies: no token to block; the tokenizer has no line-break token")
        self.copy.blocked.zero_()
        self.copy.blocked[torch.tensor(ids, dtype=torch.long)] = True

    def new_cache(self, batch_size: int, capacity: int, device=None, dtype=None) -> KVCache:
        p = self.wte.weight
        device, dtype = device or p.device, dtype or p.dtype
        hs = self.cfg.d_model // self.cfg.n_head
        shape = (self.cfg.n_layer, batch_size, self.cfg.n_head, capacity, hs)
        copy = None
        if self.copy is not None:
            dc = self.cfg.copy_dim
            copy = CopyCache(k=torch.zeros(batch_size, capacity, dc, device=device, dtype=dtype),
                             ids=torch.zeros(batch_size, capacity, dtype=torch.long, device=device),
                             key_valid=torch.zeros(batch_size, capacity, dtype=torch.bool, device=device),
                             next_k=torch.zeros(batch_size, dc, device=device, dtype=dtype),
                             next_valid=torch.zeros(batch_size, dtype=torch.bool, device=device))
        return KVCache(k=torch.zeros(shape, device=device, dtype=dtype), v=torch.zeros(shape, device=device, dtype=dtype),
                       key_valid=torch.zeros(batch_size, capacity, dtype=torch.bool, device=device),
                       next_pos=torch.zeros(batch_size, dtype=torch.long, device=device), copy=copy)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, valid: torch.Tensor | None = None,
                last_only: bool = False, return_hidden: bool = False) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, V) (mixture log-probs with the copy head), or (B, 1, V) with `last_only`.

        `return_hidden` returns the final hidden states (B, T, d) instead, for a loss that applies `self.head`
        itself (`losses.head_nll`, which need never hold all logits at once) and `copy_terms`.

        With a cache, idx holds the next T tokens of every row; `valid` (B, T) marks left padding on the
        first call. Without a cache this is the plain causal forward used in training.
        """
        B, T = idx.shape
        mask = None
        start = cache.length if cache is not None else 0
        if cache is None:
            if T > self.cfg.max_seq_len:
                raise ValueError(f"sequence of {T} tokens exceeds the context of {self.cfg.max_seq_len}")
            pos = torch.arange(T, device=idx.device).unsqueeze(0)  # (1, T)
        else:
            if start + T > min(cache.capacity, self.cfg.max_seq_len):
                raise ValueError(f"cache holds {start} tokens, {T} more exceed the context of "
                                 f"{min(cache.capacity, self.cfg.max_seq_len)}")
            valid = torch.ones(B, T, dtype=torch.bool, device=idx.device) if valid is None else valid
            pos = cache.next_pos.unsqueeze(1) + valid.long().cumsum(1) - 1  # (B, T); pads share the next position
            pos = pos.clamp(min=0)
            cache.next_pos += valid.long().sum(1)
            cache.key_valid[:, start : start + T] = valid
            keys = cache.key_valid[:, : start + T]  # (B, Tk)
            causal = torch.ones(T, start + T, dtype=torch.bool, device=idx.device).tril(diagonal=start)
            mask = causal.unsqueeze(0) & keys.unsqueeze(1)  # (B, T, Tk)
            mask[:, torch.arange(T), start + torch.arange(T)] = True  # a pad query attends to itself: no NaN
            mask = mask.unsqueeze(1)  # (B, 1, T, Tk)
        emb = self.wte(idx)  # (B, T, d)
        rope = None
        if self.wpe is not None:
            x = self.drop(emb + self.wpe(pos))
        else:
            x = self.drop(emb)
            rope = (self.rope_cos[pos].unsqueeze(1), self.rope_sin[pos].unsqueeze(1))  # (B|1, 1, T, hs/2) each
        for block in self.blocks:
            x = block(x, cache, mask, rope)
        x = self.ln_f(x)
        if self.copy is not None and cache is not None:
            copy_slots = self._cached_copy_slots(idx, x, emb, valid, cache)  # before cache.length moves on
        if cache is not None:
            cache.length += T
        if return_hidden:
            return x[:, -1:, :] if last_only else x
        if self.copy is None:
            return self.head(x[:, -1:, :] if last_only else x)
        keys, ids, key_mask, history = copy_slots if cache is not None else self._copy_slots(idx, x, emb)
        if last_only:
            x, key_mask = x[:, -1:, :], key_mask[:, -1:, :]
            history = None if history is None else (history[0][:, -1:], history[1])
        handover = self.copy.handover(ids)  # (B, Tk) or None
        log_a = self.copy.log_weights(x, keys, key_mask, None if handover is None else handover.unsqueeze(1),
                                      history)
        log_vocab = torch.log_softmax(self.head(x).float(), dim=-1) + log_a[..., :1]  # (B, Tq, V)
        p_copy = torch.zeros_like(log_vocab).scatter_add_(  # copy mass gathered per vocabulary id
            -1, ids.unsqueeze(1).expand(-1, x.shape[1], -1), log_a[..., 1:].exp())
        return torch.logaddexp(log_vocab, p_copy.clamp_min(torch.finfo(p_copy.dtype).tiny).log())  # no log(0)

    def _copy_slots(self, idx: torch.Tensor, hidden: torch.Tensor, emb: torch.Tensor):
        """Copy keys, ids and mask for the plain causal forward: slots 1..T-1 (slot 0 has no predecessor).

        -> keys (B, T-1, dc), ids (B, T-1), key_mask (1, T, T-1): query t (predicting token t + 1) sees slot
        j = i + 1 when j <= t + 1 - copy_min_gap; and with `copy_match` the id histories of the queries (B, T, n)
        and of the slots (B, T-1, n) (else None).
        """
        T = idx.shape[1]
        keys = self.copy.value_keys(self.copy.keys(hidden[:, :-1], emb[:, :-1]), emb[:, 1:])
        key_mask = torch.ones(T, T - 1, dtype=torch.bool, device=idx.device).tril(diagonal=-self.cfg.copy_min_gap)
        n = self.cfg.copy_match
        history = (id_history(idx, n, -1), id_history(idx, n, -2)[:, :-1]) if n else None
        return keys, idx[:, 1:], key_mask.unsqueeze(0), history

    def _cached_copy_slots(self, idx, hidden, emb, valid, cache: KVCache):
        """Write the new slots' copy keys into the cache; -> keys (B, Tk, dc), ids (B, Tk), key_mask (B, T, Tk),
        and with `copy_match` the id histories (B, T, n) and (B, Tk, n) as in `_copy_slots` (padding never matches).
        Call before `cache.length` moves on, after `cache.key_valid` holds the new tokens'."""
        c, start, T = cache.copy, cache.length, idx.shape[1]
        new_k = torch.cat([c.next_k.unsqueeze(1), self.copy.keys(hidden[:, :-1], emb[:, :-1])], dim=1)  # (B, T, dc)
        prev_valid = torch.cat([c.next_valid.unsqueeze(1), valid[:, :-1]], dim=1)  # (B, T)
        c.k[:, start : start + T] = self.copy.value_keys(new_k, emb)
        c.ids[:, start : start + T] = idx
        c.key_valid[:, start : start + T] = valid & prev_valid
        c.next_k = self.copy.keys(hidden[:, -1:], emb[:, -1:]).squeeze(1)
        c.next_valid = valid[:, -1].clone()
        causal = torch.ones(T, start + T, dtype=torch.bool, device=idx.device).tril(diagonal=start + 1 - self.cfg.copy_min_gap)
        key_mask = causal.unsqueeze(0) & c.key_valid[:, None, : start + T]  # (B, T, Tk)
        history, n = None, self.cfg.copy_match
        if n:
            ids, real = c.ids[:, : start + T], cache.key_valid[:, : start + T]
            before = id_history(ids, n, -2, real)  # slot j's history is position j - 1's
            before = torch.cat([before.new_full((ids.shape[0], 1, n), -2), before[:, :-1]], dim=1)
            history = (id_history(ids, n, -1, real)[:, start:], before)
        return c.k[:, : start + T], c.ids[:, : start + T], key_mask, history

    def copy_terms(self, idx: torch.Tensor, hidden: torch.Tensor, targets: torch.Tensor):
        """The two halves of the copy mixture at every position, without any (B, T, V) tensor:
        log a_t0 (the vocabulary side's weight) and log sum_{j <= t, x_j = y_t} a_tj (NO_COPY where no earlier
        token equals the target). idx, targets (B, T); hidden (B, T, d) from `forward(idx, return_hidden=True)`.
        """
        if idx.shape[1] == 1:  # nothing before the only token: all mass on the vocabulary side
            zeros = hidden.new_zeros(idx.shape, dtype=torch.float32)
            return zeros, zeros + NO_COPY
        keys, ids, key_mask, history = self._copy_slots(idx, hidden, self.wte(idx))
        match = (ids.unsqueeze(1) == targets.unsqueeze(2)) & key_mask  # (B, T, T-1)
        handover = self.copy.handover(ids)
        if handover is None:
            return self.copy.log_terms(hidden, keys, key_mask, match, history=history)
        handover = key_mask & handover.unsqueeze(1)
        return self.copy.log_terms(hidden, keys, key_mask, match & ~handover, handover, history)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


# ----------------------------------------------------------------------------------------------- LSTM
@dataclass
class LSTMCache:
    state: tuple[torch.Tensor, torch.Tensor] | None = None
    length: int = 0

    def select(self, rows: torch.Tensor) -> "LSTMCache":
        state = None if self.state is None else tuple(s[:, rows] for s in self.state)  # (layers, B, d) each
        return LSTMCache(state=state, length=self.length)


class LSTMLM(nn.Module):
    supports_left_padding = False

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.wte = nn.Embedding(vocab_size, cfg.d_model)
        self.lstm = nn.LSTM(cfg.d_model, cfg.d_model, num_layers=cfg.n_layer, batch_first=True,
                            dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=False)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.head.weight = self.wte.weight
        nn.init.normal_(self.wte.weight, mean=0.0, std=0.02)

    def new_cache(self, batch_size: int, capacity: int, device=None, dtype=None) -> LSTMCache:
        return LSTMCache()

    def forward(self, idx, cache: LSTMCache | None = None, valid=None, last_only: bool = False,
                return_hidden: bool = False):
        if valid is not None and not bool(valid.all()):
            raise ValueError("the LSTM does not take left-padded batches; decode rows of equal length together")
        x, state = self.lstm(self.wte(idx), cache.state if cache is not None else None)
        if cache is not None:
            cache.state, cache.length = state, cache.length + idx.shape[1]
        x = self.ln_f(x)
        if last_only:
            x = x[:, -1:, :]
        return x if return_hidden else self.head(x)


# ----------------------------------------------------------------------------------------------- k-gram MLP
@dataclass
class KGramCache:
    history: torch.Tensor | None = None  # (B, k-1) the last k-1 ids, padded with the start id
    length: int = 0

    def select(self, rows: torch.Tensor) -> "KGramCache":
        return KGramCache(history=None if self.history is None else self.history[rows], length=self.length)


class KGramMLP(nn.Module):
    """Embeds the last k tokens (a start id fills in before the text begins) and maps them to next-token logits."""

    supports_left_padding = False

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size, self.k = cfg, vocab_size, cfg.k
        self.start_id = vocab_size  # one extra embedding row stands for "before the text"
        self.wte = nn.Embedding(vocab_size + 1, cfg.d_model)
        layers: list[nn.Module] = []
        width = cfg.k * cfg.d_model
        for _ in range(cfg.n_layer):
            layers += [nn.Linear(width, cfg.mlp_ratio * cfg.d_model), nn.GELU(approximate="tanh"),
                       nn.Dropout(cfg.dropout)]
            width = cfg.mlp_ratio * cfg.d_model
        layers.append(nn.Linear(width, cfg.d_model))
        self.mlp = nn.Sequential(*layers)
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=False)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.apply(_init_weights)

    def new_cache(self, batch_size: int, capacity: int, device=None, dtype=None) -> KGramCache:
        return KGramCache()

    def forward(self, idx, cache: KGramCache | None = None, valid=None, last_only: bool = False,
                return_hidden: bool = False):
        if valid is not None and not bool(valid.all()):
            raise ValueError("the k-gram MLP does not take left-padded batches; decode rows of equal length together")
        B, T = idx.shape
        if cache is not None and cache.history is not None:
            history = cache.history
        else:
            history = torch.full((B, self.k - 1), self.start_id, dtype=idx.dtype, device=idx.device)
        padded = torch.cat([history, idx], dim=1)  # (B, k-1+T)
        if cache is not None:
            cache.history, cache.length = padded[:, padded.shape[1] - (self.k - 1):], cache.length + T
        if last_only:
            padded = padded[:, -self.k:]
        windows = padded.unfold(1, self.k, 1)  # (B, T, k)
        x = self.wte(windows).flatten(2)  # (B, T, k*d)
        x = self.ln_f(self.mlp(x))
        return x if return_hidden else self.head(x)


# ----------------------------------------------------------------------------------------------- factory
MODEL_TYPES = {"transformer": GPT, "lstm": LSTMLM, "kgram_mlp": KGramMLP}


def build_model(cfg: ModelConfig, vocab_size: int) -> nn.Module:
    return MODEL_TYPES[cfg.type](cfg, vocab_size)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile and DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def disable_dropout(model: nn.Module) -> nn.Module:
    """Turn every dropout of `model` off (DPO: a policy whose log-probs are noisy would drift from the reference
    for no reason; at step 0 the loss is then exactly ln 2, as TRL's `disable_dropout` ensures)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        elif isinstance(module, (CausalSelfAttention, nn.LSTM)):
            module.dropout = 0.0
    return model


def count_params(model: nn.Module) -> int:
    """Parameters, tied weights counted once."""
    return sum(p.numel() for p in model.parameters())


def model_meta(cfg: ModelConfig, vocab_size: int) -> dict:
    """What a checkpoint records so a later stage can rebuild the model without params.yaml."""
    return {**asdict(cfg), "vocab_size": vocab_size}
