"""PicoForCausalLM: pico's GPT for `transformers`, shipped by `pico export` beside the weights of a model no
standard architecture represents (rotary positions, the copy head) and loaded with `trust_remote_code=True`.
It imports only torch and transformers, never pico.

`forward(input_ids, attention_mask)` returns what pico's `GPT.forward` returns: logits without the copy head,
the log-probs of the copy mixture with it. Either way their softmax is the next-token distribution, so greedy
and sampling `generate` draw from pico's distribution.

Left padding: a token's position is the number of real tokens before it (the attention mask's cumulative sum,
as pico's `valid`), no query attends to a padded key (a padded query attends to itself only, so nothing is
NaN), and the copy head points at no padded slot and at no slot whose predecessor is padding.

No cache: every call recomputes the whole sequence, and `prepare_inputs_for_generation` hands `generate` the
whole sequence each step. The copy head keeps per-slot state (each slot's key is built from the token before
it) that no transformers Cache class holds; recomputing is exact, at O(T^2) work per new token.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast

from .configuration_pico import PicoConfig

ROPE_BASE = 10000.0  # pico's rotary base


# ----------------------------------------------------------------------------------------------- pure functions
def rope_tables(head_size: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles of positions 0..max_len-1, (max_len, head_size / 2) each, in fp32 on the
    CPU (computed as pico computes them, so the angles are the same floats)."""
    inv_freq = 1.0 / ROPE_BASE ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i + hs/2}) by their position's angle. x (B, nh, T, hs); cos, sin (B, 1, T, hs/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def positions_of(valid: torch.Tensor) -> torch.Tensor:
    """(B, T) bool, False for left padding -> (B, T) position ids: real tokens count 0, 1, ...; padding gets 0."""
    return (valid.long().cumsum(1) - 1).clamp(min=0)


def attention_mask_of(valid: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (B, 1, T, T) bool: causal, no padded key, and every query sees itself (no empty row)."""
    T = valid.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
    itself = torch.eye(T, dtype=torch.bool, device=valid.device)
    return ((causal.unsqueeze(0) & valid.unsqueeze(1)) | itself).unsqueeze(1)


def copy_slot_mask(valid: torch.Tensor | None, T: int, min_gap: int, device) -> torch.Tensor:
    """Which copy slots each query may point at, (B|1, T, T-1): query t (predicting token t + 1) sees slot j = i + 1
    when j <= t + 1 - min_gap, and, with padding, when token j and the token before it are both real."""
    allowed = torch.ones(T, T - 1, dtype=torch.bool, device=device).tril(diagonal=-min_gap).unsqueeze(0)
    if valid is None:
        return allowed
    slot_valid = valid[:, 1:] & valid[:, :-1]  # (B, T-1)
    return allowed & slot_valid.unsqueeze(1)


def id_history(ids: torch.Tensor, n: int, none: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) ids -> (B, T, n): at position p the ids at p, p-1, ..., p-n+1; `none` (negative, never a token) before
    the start and, with `valid`, at padding (so padding never makes a copy match)."""
    if valid is not None:
        ids = ids.masked_fill(~valid, none)
    return torch.stack([F.pad(ids, (m, 0), value=none)[:, : ids.shape[1]] for m in range(n)], dim=-1)


def match_scores(gates: torch.Tensor, read: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """The copy match terms (`copy_match`), (B, Tq, Tk) fp32: sum over orders m of gates[..., m] where the last m + 1
    ids read (read: (B, Tq, n), newest first) equal the m + 1 ids before the slot (before: (B, Tk, n))."""
    out = torch.zeros(*read.shape[:2], before.shape[1], device=gates.device)
    equal = torch.ones_like(out, dtype=torch.bool)
    for m in range(gates.shape[-1]):
        equal = equal & (read[:, :, m].unsqueeze(2) == before[:, :, m].unsqueeze(1))
        out = out + gates[..., m : m + 1].float() * equal
    return out


def copy_mixture(vocab_logits: torch.Tensor, log_weights: torch.Tensor, slot_ids: torch.Tensor) -> torch.Tensor:
    """log p(y) = log(a_0 · softmax(vocab_logits)[y] + sum_{j: slot_ids_j = y} a_j), (B, Tq, V) in fp32.

    vocab_logits (B, Tq, V); log_weights (B, Tq, 1 + Tk): log a, column 0 the vocabulary side; slot_ids (B, Tk)."""
    log_vocab = torch.log_softmax(vocab_logits.float(), dim=-1) + log_weights[..., :1]
    copy_mass = torch.zeros_like(log_vocab).scatter_add_(
        -1, slot_ids.unsqueeze(1).expand(-1, log_vocab.shape[1], -1), log_weights[..., 1:].exp())
    return torch.logaddexp(log_vocab, copy_mass.clamp_min(torch.finfo(copy_mass.dtype).tiny).log())  # no log(0)


# ----------------------------------------------------------------------------------------------- modules
class PicoAttention(nn.Module):
    def __init__(self, config: PicoConfig):
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rope: tuple[torch.Tensor, torch.Tensor] | None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        dropout = self.dropout if self.training else 0.0
        if mask is None:  # no padding: the fused causal kernel, as pico's forward without a cache
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class PicoMLP(nn.Module):
    def __init__(self, config: PicoConfig):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.mlp_ratio * config.d_model, bias=False)
        self.proj = nn.Linear(config.mlp_ratio * config.d_model, config.d_model, bias=False)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class PicoBlock(nn.Module):
    def __init__(self, config: PicoConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model, bias=False)
        self.attn = PicoAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model, bias=False)
        self.mlp = PicoMLP(config)

    def forward(self, x, mask, rope):
        x = x + self.attn(self.ln1(x), mask, rope)
        return x + self.mlp(self.ln2(x))


class PicoCopyHead(nn.Module):
    """Pointer-generator copy head with a sentinel. At query t it scores the sentinel, s_t0 = w · h_t + b, and every
    earlier slot j, s_tj = q(h_t) · k_j / sqrt(dc) with k_j = k_hidden(h_{j-1}) + k_embed(wte(x_{j-1}))
    [+ k_value(wte(x_j))] [+ sum_m g_m(h_t) where x_{t-i} = x_{j-1-i} for every i < m, with copy_match];
    a_t = softmax(s_t) mixes the vocabulary distribution (weight a_t0) with copying x_j
    (weight a_tj). h is the final (ln_f) hidden state. Without `copy_line_breaks` a slot whose token is in
    `blocked` (saved with the weights) copies nothing: its weight goes to the vocabulary side."""

    def __init__(self, config: PicoConfig):
        super().__init__()
        d, dc = config.d_model, config.copy_dim
        self.q = nn.Linear(d, dc, bias=False)
        self.k_hidden = nn.Linear(d, dc, bias=False)
        self.k_embed = nn.Linear(d, dc, bias=False)
        self.k_value = nn.Linear(d, dc, bias=False) if config.copy_value_key else None
        self.sentinel = nn.Linear(d, 1, bias=True)
        self.match_gate = nn.Linear(d, config.copy_match, bias=True) if config.copy_match else None
        # None (not saved) when every token may be copied
        blocked = None if config.copy_line_breaks else torch.zeros(config.vocab_size, dtype=torch.bool)
        self.register_buffer("blocked", blocked)

    def slot_keys(self, hidden: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Keys of slots 1..T-1, (B, T-1, dc), from hidden states and embeddings (B, T, d) of the whole sequence."""
        keys = self.k_hidden(hidden[:, :-1]) + self.k_embed(emb[:, :-1])
        return keys if self.k_value is None else keys + self.k_value(emb[:, 1:])

    def log_weights(self, hidden: torch.Tensor, keys: torch.Tensor, slot_mask: torch.Tensor,
                    handover: torch.Tensor | None = None, history=None) -> torch.Tensor:
        """log a (B, Tq, 1 + Tk) in fp32: column 0 the vocabulary side (the sentinel, plus the slots in `handover`,
        which are then -inf), column 1 + i slot i of `keys`. `history`: (ids read (B, Tq, n), ids before each slot
        (B, Tk, n)) for the match terms."""
        q = self.q(hidden)
        scores = ((q @ keys.transpose(1, 2)) / math.sqrt(q.shape[-1])).float()
        if self.match_gate is not None:
            scores = scores + match_scores(self.match_gate(hidden), *history)
        scores = scores.masked_fill(~slot_mask, float("-inf"))  # the sentinel keeps every row finite
        sentinel = self.sentinel(hidden).float()
        log_a = torch.log_softmax(torch.cat([sentinel, scores], dim=-1), dim=-1)
        if handover is None:
            return log_a
        handover = handover & slot_mask
        handed = log_a[..., 1:].masked_fill(~handover, -1e4).logsumexp(dim=-1, keepdim=True)  # -1e4: finite grads
        return torch.cat([torch.logaddexp(log_a[..., :1], handed), log_a[..., 1:].masked_fill(handover, float("-inf"))],
                         dim=-1)


class PicoPreTrainedModel(PreTrainedModel):
    config_class = PicoConfig
    config: PicoConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["PicoBlock"]
    supports_gradient_checkpointing = False


class PicoModel(PicoPreTrainedModel):
    """Embeddings, blocks and the final LayerNorm: (input_ids, valid) -> final hidden states (B, T, d)."""

    def __init__(self, config: PicoConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.max_seq_len, config.d_model) if config.pos_encoding == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(PicoBlock(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def forward(self, input_ids: torch.Tensor, valid: torch.Tensor | None = None) -> BaseModelOutput:
        """valid (B, T) bool marks real tokens (None: no padding)."""
        T = input_ids.shape[1]
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds the context of {self.config.max_seq_len}")
        if valid is None:
            pos, mask = torch.arange(T, device=input_ids.device).unsqueeze(0), None
        else:
            pos, mask = positions_of(valid), attention_mask_of(valid)
        x = self.wte(input_ids)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(pos)
        else:
            cos, sin = (t.to(input_ids.device) for t in rope_tables(self.config.d_model // self.config.n_head,
                                                                    self.config.max_seq_len))
            rope = (cos[pos].unsqueeze(1), sin[pos].unsqueeze(1))  # (B|1, 1, T, hs/2) each
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, mask, rope)
        return BaseModelOutput(last_hidden_state=self.ln_f(x))


class PicoForCausalLM(PicoPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: PicoConfig):
        super().__init__(config)
        self.transformer = PicoModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.copy = PicoCopyHead(config) if config.copy_head else None
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.wte

    def set_input_embeddings(self, value):
        self.transformer.wte = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # no cache: `generate` must not make one (module docstring)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, inputs_embeds=None, logits_to_keep=None,
                                      **kwargs):
        """The whole sequence every step (no cache), and only the last position's distribution."""
        if inputs_embeds is not None:
            raise ValueError("PicoForCausalLM generates from input_ids, not inputs_embeds")
        return {"input_ids": input_ids, "attention_mask": attention_mask, "logits_to_keep": logits_to_keep or 0}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, logits_to_keep: int = 0, return_dict: bool | None = None,
                **kwargs):
        """input_ids (B, T), attention_mask (B, T) (0 for left padding) -> logits (B, T, V), or of the last
        `logits_to_keep` positions: pico's logits, or with the copy head the mixture's log-probs. `labels` (B, T)
        (-100: ignored) gives the mean next-token NLL as `loss`."""
        for name in ("cache", "past_key_values", "position_ids", "inputs_embeds"):
            if kwargs.get(name) is not None:
                raise ValueError(f"PicoForCausalLM takes no {name}: it recomputes the whole sequence from input_ids, "
                                 f"and positions come from attention_mask")
        valid = None
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            valid = attention_mask.bool()
        hidden = self.transformer(input_ids, valid).last_hidden_state  # (B, T, d)
        keep = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
        logits = self.lm_head(hidden[:, keep])
        if self.copy is not None:
            logits = self._copy_log_probs(input_ids, hidden, valid, logits, keep)
        loss = None
        if labels is not None:
            if logits_to_keep:
                raise ValueError("a loss needs the logits of every position: leave logits_to_keep at 0")
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def _copy_log_probs(self, input_ids, hidden, valid, vocab_logits, keep: slice) -> torch.Tensor:
        """The copy mixture's log-probs at the kept query positions."""
        T = input_ids.shape[1]
        keys = self.copy.slot_keys(hidden, self.transformer.wte(input_ids))  # (B, T-1, dc)
        slot_mask = copy_slot_mask(valid, T, self.config.copy_min_gap, input_ids.device)[:, keep]
        handover = None if self.copy.blocked is None else self.copy.blocked[input_ids[:, 1:]].unsqueeze(1)
        history, n = None, self.config.copy_match
        if n:  # slot j's history is position j - 1's
            history = (id_history(input_ids, n, -1, valid)[:, keep], id_history(input_ids, n, -2, valid)[:, :-1])
        log_weights = self.copy.log_weights(hidden[:, keep], keys, slot_mask, handover, history)
        return copy_mixture(vocab_logits, log_weights, input_ids[:, 1:])
