"""Batches for SFT and DPO, built from `encode_sft` rows; DPO pairs carry their reference log-probs.

Batches are length-bucketed (rows of similar length share a batch, so little compute goes to padding)
and are a pure function of (seed, epoch, index), like pretraining windows: resume and DDP need no state.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
import torch.nn as nn

from pico.device import autocast_for, dist_info
from pico.losses import model_token_logps
from pico.prompt import Encoded, encode_responses, encode_sft, parse_prompt, with_copies_skipped, with_copy_positions
from pico.tokenizer import Tokenizer

log = logging.getLogger(__name__)
PAD_ID = 0  # any id works: padded positions are masked out of the loss and come after the real tokens


@dataclass
class EncodeReport:
    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: int = 0  # could not fit max_len
    identical: int = 0  # DPO pairs whose chosen and rejected are the same text

    def as_dict(self) -> dict[str, int]:
        return {"rows": self.rows, "kept": self.kept, "truncated": self.truncated, "dropped": self.dropped,
                "identical": self.identical}


def encode_rows(rows: list[dict], encode_row: Callable[[dict], Any]) -> tuple[list, EncodeReport]:
    """Encode every row; rows that cannot fit (`encode_row` returns None) are dropped and counted."""
    report = EncodeReport(rows=len(rows))
    out = []
    for row in rows:
        item = encode_row(row)
        if item is None:
            report.dropped += 1
            continue
        report.truncated += item.truncated
        out.append(item)
    report.kept = len(out)
    return out, report


def encode_sft_rows(tok: Tokenizer, rows: list[dict], max_len: int, truncation: str,
                    mark_copies: bool = False) -> tuple[list[Encoded], EncodeReport]:
    """`mark_copies`: each row's `starts` and `continues` mark where its story copies a spec value
    (`with_copy_positions`)."""
    def encode(row: dict) -> Encoded | None:
        encoded = encode_sft(tok, row["prompt"], row["response"], max_len, truncation)
        if encoded is None or not mark_copies:
            return encoded
        return with_copy_positions(tok, encoded, row["response"], parse_prompt(row["prompt"]))
    return encode_rows(rows, encode)


@dataclass(frozen=True)
class Pair:
    """A DPO pair encoded against one prompt, and the frozen reference's summed log-probs of each side."""

    chosen: Encoded
    rejected: Encoded
    ref_chosen: float = float("nan")  # filled in once, before training (`with_reference`)
    ref_rejected: float = float("nan")

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated

    @property
    def length(self) -> int:
        return max(len(self.chosen.ids), len(self.rejected.ids))

    @property
    def n_tokens(self) -> tuple[int, int]:
        """Response tokens (+ EOS) of chosen and rejected: what per-token averages divide by."""
        return self.chosen.n_loss_tokens, self.rejected.n_loss_tokens


def encode_pair(tok: Tokenizer, row: dict, max_len: int, truncation: str, skip_copies: bool = False,
                skip_rejected_end: bool = False, skip_rejected_copies: bool = False) -> Pair | None:
    """Chosen and rejected after the same (possibly left-cut) prompt; None when the longer one cannot fit.

    `skip_copies`: the tokens of each story that copy a spec value are marked to be left out of DPO's
    log-ratios (`with_copies_skipped`), so the preference moves how a story is told, not where a copy stops.
    `skip_rejected_copies`: the rejected story's whole copies of a value only: a story rejected for its form still
    states the spec's values as the chosen one does, and pushing it down would push those copies down with it (a
    copy cut short, the fault of a `value_cut` pair, stays in).
    `skip_rejected_end`: the rejected story's end token is left out of them too: a story is rarely rejected for
    where it stops, and pushing its end down after a story already too long teaches stories that run on.
    """
    stories = [row["chosen"], row["rejected"]]
    encoded = encode_responses(tok, row["prompt"], stories, max_len, truncation)
    if not encoded:
        return None
    if skip_copies or skip_rejected_copies:
        spec = parse_prompt(row["prompt"])
        encoded = [with_copies_skipped(tok, encoded[0], stories[0], spec) if skip_copies else encoded[0],
                   with_copies_skipped(tok, encoded[1], stories[1], spec, whole_only=not skip_copies)]
    chosen, rejected = encoded
    if skip_rejected_end:
        end = len(rejected.ids) - 1 - rejected.loss_start  # the end token's response position
        rejected = replace(rejected, skip=tuple(sorted({*rejected.skip, end})))
    return Pair(chosen, rejected)


def encode_dpo_rows(tok: Tokenizer, rows: list[dict], max_len: int, truncation: str, skip_copies: bool = False,
                    skip_rejected_end: bool = False, skip_rejected_copies: bool = False
                    ) -> tuple[list[Pair], EncodeReport]:
    """Encoded pairs; a pair whose chosen and rejected are the same text teaches nothing: dropped, counted."""
    distinct = [row for row in rows if row["chosen"] != row["rejected"]]
    pairs, report = encode_rows(distinct, lambda row: encode_pair(tok, row, max_len, truncation, skip_copies,
                                                                  skip_rejected_end, skip_rejected_copies))
    report.rows, report.identical = len(rows), len(rows) - len(distinct)
    if report.identical:
        log.warning("dropped %d pair(s) whose chosen and rejected stories are identical", report.identical)
    return pairs, report


def with_reference(pairs: list[Pair], logps: torch.Tensor) -> list[Pair]:
    """The pairs with the reference's (N, 2) [chosen, rejected] log-probs attached."""
    return [replace(p, ref_chosen=float(c), ref_rejected=float(r)) for p, (c, r) in zip(pairs, logps.tolist())]


def collate(encoded: list[Encoded]) -> dict:
    """Right-padded (B, T) inputs and targets; loss_mask is 1 exactly where the target is a response id or EOS.

    When a row marks response positions to `skip`, `pref_mask` is loss_mask without them (what DPO sums).
    """
    T = max(len(e.ids) for e in encoded) - 1
    B = len(encoded)
    input_ids = torch.full((B, T), PAD_ID, dtype=torch.long)
    targets = torch.full((B, T), PAD_ID, dtype=torch.long)
    loss_mask = torch.zeros((B, T), dtype=torch.float32)
    for i, e in enumerate(encoded):
        ids = torch.tensor(e.ids, dtype=torch.long)
        n = len(e.ids) - 1
        input_ids[i, :n] = ids[:-1]
        targets[i, :n] = ids[1:]
        loss_mask[i, e.loss_start - 1 : n] = 1.0  # target t is ids[t+1]: the response starts at t = loss_start-1
    batch = {"input_ids": input_ids, "targets": targets, "loss_mask": loss_mask,
             "tokens": sum(len(e.ids) - 1 for e in encoded)}
    if any(e.skip for e in encoded):
        pref_mask = loss_mask.clone()
        for i, e in enumerate(encoded):
            pref_mask[i, [e.loss_start - 1 + j for j in e.skip]] = 0.0
        batch["pref_mask"] = pref_mask
    return batch


def sft_batch(encoded: list[Encoded], start_weight: float = 1.0, continue_weight: float = 1.0) -> dict:
    """A weight != 1: the loss at each row's copy starts (`Encoded.starts`), or at its copies' later tokens
    (`Encoded.continues`), counts that many times, and the mean divides by the weights' sum."""
    batch = collate(encoded)
    for weight, positions in ((start_weight, "starts"), (continue_weight, "continues")):
        if weight != 1.0:
            for i, e in enumerate(encoded):
                batch["loss_mask"][i, [e.loss_start - 1 + j for j in getattr(e, positions)]] = weight
    batch["n_items"] = float(batch["loss_mask"].sum().item())  # the loss sums over response tokens
    return batch


def dpo_batch(pairs: list[Pair]) -> dict:
    """B pairs -> one (2B, T) batch: chosen rows, then rejected rows, with their reference log-probs (B,)."""
    batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs])
    batch["ref_chosen"] = torch.tensor([p.ref_chosen for p in pairs], dtype=torch.float32)
    batch["ref_rejected"] = torch.tensor([p.ref_rejected for p in pairs], dtype=torch.float32)
    batch["n_tokens"] = torch.tensor([p.n_tokens for p in pairs], dtype=torch.float32)  # (B, 2), for IPO
    batch["n_items"] = len(pairs)  # the loss sums over pairs
    return batch


@dataclass
class BucketedBatches:
    """Epoch-wise shuffled, length-bucketed batches of item indices; `micro(k)` is the k-th of all epochs."""

    lengths: list[int]
    batch_size: int
    seed: int
    make: Callable[[list[int]], dict]  # item indices -> batch
    bucket_batches: int = 16  # sort within windows of this many batches: short-ish waits, little padding
    _cache: dict[int, list[list[int]]] = field(default_factory=dict, repr=False)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def epoch(self, e: int) -> list[list[int]]:
        if e not in self._cache:
            rng = random.Random(f"{self.seed}/epoch/{e}")
            order = list(range(len(self.lengths)))
            rng.shuffle(order)
            window = self.batch_size * self.bucket_batches
            batches = []
            for start in range(0, len(order), window):
                chunk = sorted(order[start : start + window], key=lambda i: self.lengths[i])
                batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
            rng.shuffle(batches)  # so batch length is not tied to the position in the epoch
            self._cache = {e: batches}  # keep one epoch: memory stays flat over long runs
        return self._cache[e]

    def micro(self, k: int) -> dict:
        per_epoch = self.batches_per_epoch
        return self.make(self.epoch(k // per_epoch)[k % per_epoch])

    def all_in_order(self) -> list[dict]:
        """Every item once, bucketed but not shuffled: evaluation batches."""
        order = sorted(range(len(self.lengths)), key=lambda i: self.lengths[i])
        return [self.make(order[j : j + self.batch_size]) for j in range(0, len(order), self.batch_size)]


def planned_steps(n_batches: int, grad_accum: int, epochs: float, max_steps: int) -> int:
    """Optimizer steps: `max_steps` when set, else enough for `epochs` passes over the batches by every rank."""
    if max_steps:
        return max_steps
    return max(1, math.ceil(epochs * n_batches / (grad_accum * dist_info()[1])))


@torch.no_grad()
def pair_logps(model: nn.Module, pairs: list[Pair], batch_size: int, device: torch.device,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Summed response log-probs of every pair under `model`: (N, 2) [chosen, rejected], over the tokens DPO
    sums (a pair's `skip` positions left out).

    DPO calls it once with the frozen SFT model (the reference); evaluation calls it for every checkpoint.
    """
    model.eval().to(device)
    out = torch.zeros(len(pairs), 2)
    order = sorted(range(len(pairs)), key=lambda i: pairs[i].length)
    with autocast_for(device, dtype):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collate([pairs[i].chosen for i in idx] + [pairs[i].rejected for i in idx])
            mask = batch["loss_mask"].to(device)
            token = model_token_logps(model, batch["input_ids"].to(device), batch["targets"].to(device), mask)
            logps = (token * batch.get("pref_mask", batch["loss_mask"]).to(device)).sum(dim=1).float().cpu()
            out[idx, 0], out[idx, 1] = logps[: len(idx)], logps[len(idx) :]
    return out
