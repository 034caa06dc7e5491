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


# ----------------------------------------------------------------------------------------------- GPT
@dataclass
class KVCache:
    """Keys/values of every layer for up to `k.shape[3]` positions; rows may be left-padded."""

    k: torch.Tensor  # (L, B, nh, Tmax, hs)
    v: torch.Tensor  # (L, B, nh, Tmax, hs)
    key_valid: torch.Tensor  # (B, Tmax) bool: False for left padding
    next_pos: torch.Tensor  # (B,) position id of the next token of each row
    length: int = 0  # filled slots

    @property
    def capacity(self) -> int:
        return self.k.shape[3]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.n_head, self.layer = cfg.n_head, layer
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if cache is not None:
            start = cache.length
            cache.k[self.layer, :, :, start : start + T] = k
            cache.v[self.layer, :, :, start : start + T] = v
            k = cache.k[self.layer, :, :, : start + T]
            v = cache.v[self.layer, :, :, : start + T]
        dropout = self.dropout if self.training else 0.0
        if mask is None:  # no cache and no padding: the fast fused causal kernel
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


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

    def forward(self, x, cache=None, mask=None):
        x = x + self.attn(self.ln1(x), cache, mask)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    supports_left_padding = True

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.wte = nn.Embedding(vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=False)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.head.weight = self.wte.weight  # weight tying
        self.apply(_init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # GPT-2: scale residual projections by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def new_cache(self, batch_size: int, capacity: int, device=None, dtype=None) -> KVCache:
        p = self.wte.weight
        hs = self.cfg.d_model // self.cfg.n_head
        shape = (self.cfg.n_layer, batch_size, self.cfg.n_head, capacity, hs)
        return KVCache(
            k=torch.zeros(shape, device=device or p.device, dtype=dtype or p.dtype),
            v=torch.zeros(shape, device=device or p.device, dtype=dtype or p.dtype),
            key_valid=torch.zeros(batch_size, capacity, dtype=torch.bool, device=device or p.device),
            next_pos=torch.zeros(batch_size, dtype=torch.long, device=device or p.device),
        )

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, valid: torch.Tensor | None = None,
                last_only: bool = False, return_hidden: bool = False) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, V), or (B, 1, V) with `last_only`.

        `return_hidden` returns the final hidden states (B, T, d) instead of logits, for a loss that applies
        `self.head` itself (`losses.head_nll`, which need never hold all logits at once).

        With a cache, idx holds the next T tokens of every row; `valid` (B, T) marks left padding on the
        first call. Without a cache this is the plain causal forward used in training.
        """
        B, T = idx.shape
        mask = None
        if cache is None:
            if T > self.cfg.max_seq_len:
                raise ValueError(f"sequence of {T} tokens exceeds the context of {self.cfg.max_seq_len}")
            pos = torch.arange(T, device=idx.device).unsqueeze(0)
        else:
            start = cache.length
            if start + T > min(cache.capacity, self.cfg.max_seq_len):
                raise ValueError(f"cache holds {start} tokens, {T} more exceed the context of "
                                 f"{min(cache.capacity, self.cfg.max_seq_len)}")
            valid = torch.ones(B, T, dtype=torch.bool, device=idx.device) if valid is None else valid
            pos = cache.next_pos.unsqueeze(1) + valid.long().cumsum(1) - 1  # pads share the next position
            pos = pos.clamp(min=0)
            cache.next_pos += valid.long().sum(1)
            cache.key_valid[:, start : start + T] = valid
            keys = cache.key_valid[:, : start + T]  # (B, Tk)
            causal = torch.ones(T, start + T, dtype=torch.bool, device=idx.device).tril(diagonal=start)
            mask = causal.unsqueeze(0) & keys.unsqueeze(1)  # (B, T, Tk)
            mask[:, torch.arange(T), start + torch.arange(T)] = True  # a pad query attends to itself: no NaN
            mask = mask.unsqueeze(1)  # (B, 1, T, Tk)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x, cache, mask)
        if cache is not None:
            cache.length += T
        x = self.ln_f(x)
        if last_only:
            x = x[:, -1:, :]
        return x if return_hidden else self.head(x)


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
