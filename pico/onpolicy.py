"""On-policy preference pairs: the SFT model's own stories, judged by the checker, as DPO's rejected (and chosen).

The template pairs' rejected stories (a wholesome story, or one rule broken on purpose) are not the mistakes the
SFT model makes. Sampling it on the DPO prompts, whose specs it was never trained on, and keeping a story the
checker fails gives pairs whose rejected side is the model's own error: a value's tail said twice, a stray
paragraph, a garbled made-up word, a taboo never stated. This is iterative/online DPO with a rule-based judge
(the spec's checks, `pico.checks`). The checker is also what `evaluate` scores, on test specs no DPO prompt
shares: a gain means the model satisfies the checks on specs it never saw, and DPO will also learn whatever the
checker misses (RESEARCH.md finding 35: twists cut short, until the check was fixed), so read its stories too
(`benchmarks/verbatim_values.py`).
"""

from __future__ import annotations

import logging
import random
from collections import Counter

import torch
import torch.nn as nn

from pico.checkpoint import Checkpoint
from pico.checks import check_story, failed_checks
from pico.config import DPOConfig, OnPolicyConfig
from pico.device import resolve_device, resolve_precision
from pico.errors import DataError
from pico.model import unwrap
from pico.pairs import article_swapped_story, value_cut_story
from pico.prompt import encode_prompt
from pico.sampling import SamplingConfig, sample
from pico.spec import Spec
from pico.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def picked_rows(n: int, share: float, seed: int, split: str) -> list[int]:
    """The indices of the rows whose pair is rebuilt on-policy: each row on its own, with probability `share`."""
    if share >= 1:
        return list(range(n))
    return [i for i in range(n) if random.Random(f"{seed}/onpolicy/{split}/{i}").random() < share]


def sample_texts(model: nn.Module, tok: Tokenizer, rows: list[dict], cfg: OnPolicyConfig, seed: int, *,
                 batch_size: int, device: torch.device, dtype: torch.dtype) -> list[list[str]]:
    """`cfg.samples` stories per row: [[text, ...] per row]."""
    sampling = SamplingConfig(temperature=cfg.temperature, top_k=0, top_p=cfg.top_p,
                              max_new_tokens=cfg.max_new_tokens, no_repeat_ngram=cfg.no_repeat_ngram, seed=seed)
    prompts = [encode_prompt(tok, r["prompt"]) for r in rows for _ in range(cfg.samples)]
    outputs = sample(model, prompts, sampling, tok.eot_id, batch_size=batch_size, device=device, dtype=dtype)
    texts = [tok.decode(ids) for ids in outputs]
    return [texts[i * cfg.samples : (i + 1) * cfg.samples] for i in range(len(rows))]


def judged(rows: list[dict], texts: list[list[str]]) -> list[list[dict]]:
    """Each story with the checks it fails against its row's spec: [[{"text", "failed"}, ...] per row]."""
    return [[{"text": t, "failed": failed_checks(check_story(t, Spec.from_dict(row["spec"])))} for t in stories]
            for row, stories in zip(rows, texts)]


def earlier_texts(records: list[dict], split: str, picked: list[int], samples: int) -> list[list[str]] | None:
    """The stories of the `picked` rows in records of an earlier run (same model, rows and settings), or None when
    they are not all there: sampling is the slow part, and a change of beta or lr does not change it."""
    by_row: dict[int, dict[int, str]] = {}
    for r in records:
        if r.get("split") == split:
            by_row.setdefault(r.get("row"), {})[r.get("sample")] = r.get("response")
    if sorted(by_row) != picked or any(sorted(by_row[i]) != list(range(samples)) for i in picked):
        return None
    if not all(isinstance(t, str) for i in picked for t in by_row[i].values()):
        return None
    return [[by_row[i][k] for k in range(samples)] for i in picked]


VALUE_CHECKS = frozenset({"taboo_present", "twist_present", "object_used"})  # the spec's values, said in the story


def onpolicy_pair(row: dict, stories: list[dict], chosen: str, rejected: str = "first") -> dict | None:
    """The row's pair rebuilt from its samples, or None when no sample fails a check (the template pair stays).

    rejected: the first sample the checker fails, or (`rejected: values_first`) the first that fails a value
    check (taboo, twist, object) when one does, so that more pairs tell DPO to say the spec's values rather than
    to mend the story's form. chosen: the template's story, or (`chosen: self`) the first sample that passes
    every check when there is one. (`chosen: self_only` is `self` here; `onpolicy_rows` drops the rows it leaves
    without a passing sample.)"""
    failing = [s for s in stories if s["failed"]]
    if not failing:
        return None
    if rejected == "values_first":
        failing = [s for s in failing if VALUE_CHECKS & set(s["failed"])] or failing
    passing = [s for s in stories if not s["failed"]]
    out = {**row, "rejected": failing[0]["text"], "pair_kind": "onpolicy", "rejected_failed": failing[0]["failed"]}
    if chosen == "self" and passing:
        out["chosen"] = passing[0]["text"]
        out["pair_kind"] = "onpolicy_both"
    return out


def more_onpolicy_pairs(row: dict, stories: list[dict], chosen: str, rejected: str, limit: int) -> list[dict]:
    """The row's pairs after `onpolicy_pair`'s, up to `limit` pairs in all: each of its other failing samples (in
    the order `rejected` ranks them) against the passing samples in turn (`chosen: self`), or the template's story
    when none passes or `chosen: template`. One prompt's samples then give DPO every mistake the model made on it,
    not only the first, at no extra sampling."""
    failing = [s for s in stories if s["failed"]]
    if rejected == "values_first":  # value failures first, the rest after: the first is `onpolicy_pair`'s
        failing = ([s for s in failing if VALUE_CHECKS & set(s["failed"])]
                   + [s for s in failing if not VALUE_CHECKS & set(s["failed"])])
    passing = [s["text"] for s in stories if not s["failed"]] if chosen == "self" else []
    out = []
    for k, s in enumerate(failing[1:limit], start=1):
        pair = {**row, "rejected": s["text"], "pair_kind": "onpolicy_extra", "rejected_failed": s["failed"]}
        if passing:
            pair["chosen"] = passing[k % len(passing)]
        out.append(pair)
    return out


def onpolicy_rows(model: nn.Module, tok: Tokenizer, rows: list[dict], split: str, cfg: OnPolicyConfig, seed: int,
                  *, batch_size: int, device: torch.device, dtype: torch.dtype, earlier: list[dict] = ()
                  ) -> tuple[list[dict], list[dict], dict]:
    """(the rows with their picked pairs rebuilt on-policy, one record per sample, counts). `earlier`: the
    records of a run with the same SFT model, rows and sampling settings, whose stories are reused (and judged
    again, by this checker). With `chosen: self_only` a picked row left without both a passing and a failing
    sample is dropped: a template story against the model's own teaches style, not the task (RESEARCH.md 34c).
    With `pairs_per_prompt` > 1, a kept row's other failing samples give it more pairs (`more_onpolicy_pairs`),
    appended after the rows. With `cut_pairs`, a share of the kept rows also get a pair, appended after those: their
    chosen story against itself with one copied value broken (`pico.pairs.value_cut_story`: cut short, broken
    mid-word or its tail said twice), so DPO's gradient lands where a copy must go on or stop; with `article_pairs`,
    one more whose rejected is the chosen story with the article before a copied value swapped ("a iron bell"),
    where the SFT model writes the article itself and copies the rest."""
    picked = picked_rows(len(rows), cfg.share, seed, split)
    texts = earlier_texts(list(earlier), split, picked, cfg.samples)
    if texts is not None:
        log.info("reusing the SFT model's %d stories on the %s prompts from the last run", len(picked) * cfg.samples,
                 split)
    else:
        texts = sample_texts(model, tok, [rows[i] for i in picked], cfg, seed, batch_size=batch_size, device=device,
                             dtype=dtype) if picked else []
    samples = judged([rows[i] for i in picked], texts)
    out, records, kinds, failures, dropped = list(rows), [], Counter(), Counter(), set()
    prompt_tokens = dict(zip(picked, map(len, tok.encode_batch([rows[i]["prompt"] for i in picked]))))
    context = unwrap(model).cfg.max_seq_len

    def fits(i: int, story: str) -> bool:
        """Prompt + story + end token fit the model's context (as the dpo stage checks every pair): a story that
        ran to the end of the context cannot be trained on with its end token."""
        return prompt_tokens[i] + len(tok.encode(story)) + 1 <= context

    for i, stories in zip(picked, samples):
        usable = [s for s in stories if fits(i, s["text"])]
        if len(usable) < len(stories):
            kinds["too_long"] += len(stories) - len(usable)
        pair = onpolicy_pair(rows[i], usable, "self" if cfg.chosen == "self_only" else cfg.chosen, cfg.rejected)
        if cfg.chosen == "self_only" and (pair is None or pair["pair_kind"] != "onpolicy_both"):
            dropped.add(i)  # no pair of the model's own stories: its row leaves rather than keep a template story
            kinds["dropped"] += 1
        else:
            kinds[pair["pair_kind"] if pair else "template_kept"] += 1
        if pair is not None and i not in dropped:
            out[i] = pair
            failures.update(pair["rejected_failed"])
        records += [{"split": split, "row": i, "sample": k, "response": s["text"], "failed": s["failed"],
                     "passed_all": not s["failed"]} for k, s in enumerate(stories)]
    rows_now = list(out)
    out = [row for i, row in enumerate(out) if i not in dropped]
    for i, stories in zip(picked, samples) if cfg.pairs_per_prompt > 1 else ():
        if i in dropped:
            continue
        usable = [s for s in stories if fits(i, s["text"])]
        extra = more_onpolicy_pairs(rows[i], usable, "self" if cfg.chosen == "self_only" else cfg.chosen,
                                    cfg.rejected, cfg.pairs_per_prompt)
        out += extra
        kinds["onpolicy_extra"] += len(extra)
        for pair in extra:
            failures.update(pair["rejected_failed"])
    # pairs of a kept row's chosen story against itself edited (value_cut_story, article_swapped_story), each kind
    # drawn per row from its own stream so one kind's share does not move another's rows
    for kind, share, tag, edit in (("value_cut", cfg.cut_pairs, "cut", value_cut_story),
                                   ("article_swap", cfg.article_pairs, "article", article_swapped_story)):
        for i in picked if share > 0 else []:
            rng = random.Random(f"{seed}/onpolicy/{split}/{i}/{tag}")
            if i in dropped or rng.random() >= share:
                continue
            spec = Spec.from_dict(rows_now[i]["spec"])
            edited = edit(rows_now[i]["chosen"], spec, rng)
            if edited is not None and fits(i, edited):
                out.append({**rows_now[i], "rejected": edited, "pair_kind": kind,
                            "rejected_failed": failed_checks(check_story(edited, spec))})
                kinds[kind] += 1
    if not out:
        raise DataError(f"dpo.onpolicy.chosen: self_only left no {split} pair: no {split} prompt had both a story "
                        f"the checker passes and one it fails in {cfg.samples} samples; raise dpo.onpolicy.samples "
                        f"or use chosen: self")
    n_samples = len(records)
    counts = {"rows": len(rows), "picked": len(picked), "samples": n_samples, "kept_rows": len(out),
              "sample_pass_all": round(sum(r["passed_all"] for r in records) / n_samples, 5) if n_samples else 0.0,
              "pairs": dict(sorted(kinds.items())), "rejected_failed": dict(failures.most_common())}
    return out, records, counts


def onpolicy_pairs(cfg: DPOConfig, sft_ckpt: Checkpoint, tok: Tokenizer, splits: dict[str, list[dict]],
                   earlier: list[dict] = ()) -> tuple[dict[str, list[dict]], list[dict], dict]:
    """The DPO rows with `dpo.onpolicy.share` of their pairs rebuilt from the SFT model's own samples (before DPO
    touches it): ({split: rows}, one record per sample, {split: counts}). Nothing is sampled at share 0; the
    stories of `earlier` records (the same model, rows and sampling settings) are reused."""
    if cfg.onpolicy.share == 0:
        return splits, [], {}
    device = resolve_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    out, records, counts = {}, [], {}
    for split, rows in splits.items():
        out[split], split_records, counts[split] = onpolicy_rows(
            sft_ckpt.model, tok, rows, split, cfg.onpolicy, cfg.seed, batch_size=cfg.onpolicy.batch_size, device=device,
            dtype=dtype, earlier=earlier)
        records += split_records
        pairs = counts[split]["pairs"]
        log.info("on-policy %s: %d of %d pairs rebuilt, %d rows dropped; %.3f of %d samples pass every check", split,
                 pairs.get("onpolicy", 0) + pairs.get("onpolicy_both", 0), len(rows), pairs.get("dropped", 0),
                 counts[split]["sample_pass_all"], counts[split]["samples"])
    return out, records, counts
