"""Decoding for `pico serve`: requests that arrive together are decoded together, in one left-padded batch with
one KV cache, each answer with its own sampling settings and random stream; rows that finish leave the batch
(their cache rows are dropped), and requests arriving meanwhile wait for the next batch in a bounded queue.

One thread owns the model. Each answer is a `Row`; its text is reported through the row's `emit` callback as
it grows ("delta" events, held back while it could still be the start of a stop string or of an unfinished UTF-8
character) and once when it ends ("done", with the finish reason: "stop" at the end token or a stop string,
"length" at max_tokens or the end of the context).

The same prompt, settings and seed give the same answer as `pico.sampling.sample` (the random stream of choice i
is seeded with `stable_seed(seed, i)`, as `sample` seeds prompt i), whatever else shares the batch.
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from pico.data import stable_seed
from pico.sampling import SamplingConfig, sample_next
from pico.tokenizer import Tokenizer


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass(eq=False)
class Row:
    """One answer being decoded."""

    prompt_ids: list[int]
    max_new: int  # tokens this row may add (max_tokens, and the room the context leaves)
    sampling: SamplingConfig
    stop: tuple[str, ...]
    emit: Callable[[tuple], None]  # ("delta", index, text) / ("done", index, text, finish, n_tokens)
    index: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of text already emitted
    finish: str | None = None
    generator: torch.Generator | None = None


def make_rows(prompt_ids: list[int], n: int, max_tokens: int | None, temperature: float, top_p: float,
              seed: int | None, stop: tuple[str, ...], context: int, emit) -> list[Row]:
    """n rows answering one prompt; choice i draws from its own stream (seeded by `seed` and i when given)."""
    room = context - len(prompt_ids)
    max_new = room if max_tokens is None else min(max_tokens, room)
    base = random.SystemRandom().randrange(1 << 62) if seed is None else seed
    rows = []
    for i in range(n):
        cfg = SamplingConfig(temperature=temperature, top_k=0, top_p=top_p, max_new_tokens=max_new,
                             no_repeat_ngram=0, seed=base)
        rows.append(Row(list(prompt_ids), max_new, cfg, stop, emit, index=i,
                        generator=torch.Generator().manual_seed(stable_seed(base, i))))
    return rows


def stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string begins in text, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


class Batcher:
    """The decoding thread and its queue. `submit` rows (all or none; QueueFull when they do not fit)."""

    def __init__(self, model: torch.nn.Module, tok: Tokenizer, *, max_batch: int, max_queue: int,
                 device: torch.device | str = "cpu"):
        self.model, self.tok, self.device = model.eval().to(device), tok, device
        self.context = model.cfg.max_seq_len
        self.max_batch, self.max_queue = max_batch, max_queue
        self.waiting: deque[Row] = deque()
        self.ready = threading.Condition()
        self.closed = False
        self.batch_seconds = 1.0  # how long the last batch took: the Retry-After of a full queue
        self.stats = {"batches": 0, "rows": 0, "largest_batch": 0}
        self.thread = threading.Thread(target=self._loop, name="pico-batcher", daemon=True)
        self.thread.start()

    def submit(self, rows: list[Row]) -> None:
        with self.ready:
            if len(self.waiting) + len(rows) > self.max_queue:
                raise QueueFull(max(1, math.ceil(self.batch_seconds)))
            self.waiting.extend(rows)
            self.ready.notify()

    def close(self) -> None:
        with self.ready:
            self.closed = True
            self.ready.notify()
        self.thread.join(timeout=30)

    def _take(self) -> list[Row]:
        """The next batch: waiting rows in arrival order while they fit one cache within the context."""
        with self.ready:
            while not self.waiting and not self.closed:
                self.ready.wait()
            batch: list[Row] = []
            width = steps = 0
            for row in list(self.waiting):
                if len(batch) == self.max_batch:
                    break
                w, s = max(width, len(row.prompt_ids)), max(steps, row.max_new)
                if batch and w + s > self.context:
                    continue  # padding would cut some row short: it goes in a later batch
                batch.append(row)
                width, steps = w, s
            for row in batch:
                self.waiting.remove(row)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return  # closed
            start = time.monotonic()
            try:
                with torch.no_grad():
                    self._decode(batch)
            except Exception as e:  # a bug must not leave clients waiting forever
                for row in batch:
                    if row.finish is None:
                        row.emit(("error", row.index, f"decoding failed: {type(e).__name__}: {e}"))
            self.batch_seconds = time.monotonic() - start
            self.stats["batches"] += 1
            self.stats["rows"] += len(batch)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))

    def _decode(self, rows: list[Row]) -> None:
        width = max(len(r.prompt_ids) for r in rows)
        steps = max(r.max_new for r in rows)
        idx = torch.zeros(len(rows), width, dtype=torch.long)
        valid = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):  # right-aligned: left padding
            idx[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            valid[i, width - len(r.prompt_ids):] = True
        cache = self.model.new_cache(len(rows), width + steps)
        logits = self.model(idx.to(self.device), cache=cache, valid=valid.to(self.device), last_only=True)[:, -1]
        live = list(rows)
        while live:
            tokens = [int(sample_next(logits[i:i + 1], r.sampling, [r.generator])[0]) for i, r in enumerate(live)]
            keep = [i for i, (r, t) in enumerate(zip(live, tokens)) if not self._advance(r, t)]
            if not keep:
                return
            if len(keep) < len(live):
                _keep_rows(cache, keep)
            live = [live[i] for i in keep]
            nxt = torch.tensor([[tokens[i]] for i in keep], device=self.device)
            logits = self.model(nxt, cache=cache)[:, -1]

    def _advance(self, row: Row, token: int) -> bool:
        """Add one sampled token to a row and report its text; True when the row is finished."""
        if row.cancelled.is_set():
            row.finish = "cancelled"
            return True
        if token == self.tok.eot_id:
            row.finish = "stop"
        else:
            row.ids.append(token)
            text = self.tok.decode(row.ids)
            cut = stop_at(text, row.stop)
            if cut is not None:
                text, row.finish = text[:cut], "stop"
            elif len(row.ids) >= row.max_new:
                row.finish = "length"
            row.text = text
        if row.finish is None:
            hold = max((len(s) for s in row.stop), default=1) - 1  # the start of a stop string may be coming
            safe = len(row.text.rstrip("\ufffd")) - hold  # U+FFFD at the end: a character not yet complete
            if safe > row.sent:
                row.emit(("delta", row.index, row.text[row.sent:safe]))
                row.sent = safe
            return False
        if len(row.text) > row.sent:
            row.emit(("delta", row.index, row.text[row.sent:]))
        row.emit(("done", row.index, row.text, row.finish, len(row.ids)))
        return True


def _keep_rows(cache, keep: list[int]) -> None:
    """Drop the cache rows of finished answers (B shrinks; the slots stay aligned). A per-row side cache (a field
    `copy` of row-first tensors, as a copy head keeps) shrinks with it."""
    index = torch.tensor(keep, device=cache.k.device)
    cache.k, cache.v = cache.k.index_select(1, index), cache.v.index_select(1, index)
    cache.key_valid, cache.next_pos = cache.key_valid[index], cache.next_pos[index]
    side = getattr(cache, "copy", None)
    if side is not None:
        for f in dataclasses.fields(side):
            value = getattr(side, f.name)
            if torch.is_tensor(value):
                setattr(side, f.name, value.index_select(0, index))
