"""Copying metrics: can a model reproduce spans of its context? Cheap, dense, teacher-forced.

- Induction test: fixed, seeded windows of validation tokens, each shuffled (nothing left to predict from
  language) and repeated once. A model that copies drops to ~0 NLL on the second copy; one that cannot stays
  at its first-copy NLL (~ln V for a fresh model).
- Field copying: on SFT reference stories, whose spec fields appear verbatim in the prompt, the NLL per token
  of each field's span after its first token (`field_copy_nll`), and how often the argmax predicts the span's
  first token (`field_first_acc`), and the NLL of the story's token right after the span (`field_end_nll`):
  whether the model copies a field, knows when to start, and knows when to stop (a pointer that keeps copying
  the prompt past the value's end writes the prompt's newline into the story).
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn as nn

from pico.checks import object_core
from pico.device import autocast_for
from pico.losses import model_token_logps
from pico.prompt import encode_sft
from pico.spec import Spec
from pico.tokenizer import Tokenizer

COPY_FIELDS = ("protagonist", "object", "taboo", "twist")


# ----------------------------------------------------------------------------------------------- induction
def induction_batch(tokens: np.ndarray, n_windows: int = 16, length: int = 60, seed: int = 1337) -> torch.Tensor:
    """(n_windows, 2 * length) ids: evenly spaced windows of `tokens`, each shuffled with a seeded RNG, then
    repeated once."""
    rng = np.random.default_rng(seed)
    starts = np.linspace(0, len(tokens) - length - 1, n_windows).astype(np.int64)
    rows = []
    for s in starts:
        window = np.asarray(tokens[s : s + length], dtype=np.int64)
        window = window[rng.permutation(length)]
        rows.append(np.concatenate([window, window]))
    return torch.from_numpy(np.stack(rows))


@torch.no_grad()
def induction_nll(model: nn.Module, batch: torch.Tensor, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Mean NLL of the first copy's tokens 1..L-1 and of the second copy's tokens L..2L-1. batch (n, 2L)."""
    model.eval()
    L = batch.shape[1] // 2
    device = next(model.parameters()).device
    batch = batch.to(device)
    with autocast_for(device, dtype):
        logp = model_token_logps(model, batch[:, :-1], batch[:, 1:]).float()  # (n, 2L-1): column k predicts k + 1
    return {"induction_nll_first": float(-logp[:, : L - 1].mean()),
            "induction_nll_second": float(-logp[:, L - 1 :].mean())}


# ----------------------------------------------------------------------------------------------- fields
_CONSTANT_LEAD = re.compile(r"^(never|the|a|an)\s+", re.IGNORECASE)


def field_text(spec: Spec, field: str) -> str:
    """The part of a field a story must copy, from its first *distinctive* word: the name, the object's core
    words ('cracked hand mirror'), the taboo without its leading 'never', the twist without a leading 'the'.
    (Every taboo starts with 'never' and most twists with 'the': predicting those says nothing about copying.)
    """
    text = object_core(spec.object) if field == "object" else getattr(spec, field)
    return _CONSTANT_LEAD.sub("", text) if field in ("taboo", "twist") else text


def field_token_span(tok: Tokenizer, response_ids: list[int], response: str, text: str) -> tuple[int, int] | None:
    """Token indices [first, last] of `response_ids` covering the first (case-insensitive) occurrence of `text`
    in `response`; None when it does not occur."""
    at = response.lower().find(text.lower())
    if at < 0:
        return None
    start = len(response[:at].encode("utf-8"))
    end = start + len(text.encode("utf-8"))
    first = last = None
    offset = 0
    for i, t in enumerate(response_ids):
        n = len(tok.ranks[t]) if t < len(tok.ranks) else 0
        if offset < end and offset + n > start:  # token overlaps the span
            first = i if first is None else first
            last = i
        offset += n
    return (first, last) if first is not None else None


@torch.no_grad()
def field_copy_metrics(model: nn.Module, tok: Tokenizer, rows: list[dict], max_len: int,
                       fields: tuple[str, ...] = COPY_FIELDS, batch_size: int = 8,
                       dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """`field_copy_nll_<field>` (mean NLL per span token after the first, pooled over rows),
    `field_first_acc_<field>` (argmax accuracy on the span's first token) and `field_end_nll_<field>` (mean NLL
    of the token after the span) over SFT rows (prompt, response, spec)."""
    model.eval()
    device = next(model.parameters()).device
    items = []  # (ids, [(field, first_pos, last_pos)]) with positions in ids
    for row in rows:
        enc = encode_sft(tok, row["prompt"], row["response"], max_len, "left")
        if enc is None:
            continue
        spec = Spec.from_dict(row["spec"])
        response_ids = enc.ids[enc.loss_start : -1]
        spans = []
        for f in fields:
            span = field_token_span(tok, response_ids, row["response"], field_text(spec, f))
            if span is not None:
                spans.append((f, enc.loss_start + span[0], enc.loss_start + span[1]))
        items.append((enc.ids, spans))
    nll_sum = {f: 0.0 for f in fields}
    nll_n = {f: 0 for f in fields}
    hits = {f: 0 for f in fields}
    firsts = {f: 0 for f in fields}
    end_sum = {f: 0.0 for f in fields}
    end_n = {f: 0 for f in fields}
    for s in range(0, len(items), batch_size):
        chunk = items[s : s + batch_size]
        T = max(len(ids) for ids, _ in chunk) - 1
        idx = torch.zeros(len(chunk), T, dtype=torch.long)
        tgt = torch.zeros(len(chunk), T, dtype=torch.long)
        for r, (ids, _) in enumerate(chunk):
            idx[r, : len(ids) - 1] = torch.tensor(ids[:-1])
            tgt[r, : len(ids) - 1] = torch.tensor(ids[1:])
        idx, tgt = idx.to(device), tgt.to(device)
        with autocast_for(device, dtype):
            scores = model(idx).float()  # (B, T, V): logits, or the copy mixture's log-probs
        logp = torch.log_softmax(scores, dim=-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)  # (B, T)
        argmax = scores.argmax(dim=-1)
        for r, (ids, spans) in enumerate(chunk):
            for f, first, last in spans:  # token at position p of ids is predicted at column p - 1
                firsts[f] += 1
                hits[f] += int(argmax[r, first - 1] == tgt[r, first - 1])
                if last > first:
                    nll_sum[f] += float(-logp[r, first : last].sum())
                    nll_n[f] += last - first
                if last < len(ids) - 1:  # the story goes on after the span (column `last` predicts it)
                    end_sum[f] += float(-logp[r, last])
                    end_n[f] += 1
    out: dict[str, float] = {}  # a field no reference story contains has no score (not a NaN in the metrics)
    for f in fields:
        if nll_n[f]:
            out[f"field_copy_nll_{f}"] = nll_sum[f] / nll_n[f]
        if firsts[f]:
            out[f"field_first_acc_{f}"] = hits[f] / firsts[f]
        if end_n[f]:
            out[f"field_end_nll_{f}"] = end_sum[f] / end_n[f]
    return out
