"""The dpo stage's job: DPO on pairs rebuilt from the model's own stories, judged by the checker, in rounds.

Round 1 samples the SFT model on the DPO prompts (`pico.onpolicy`), rebuilds the pairs and runs DPO against the
frozen SFT model (`pico.recipes.finetune.dpo`). Each later round (`dpo.onpolicy.rounds`, iterative DPO) samples the
last round's DPO model on the same prompts, rebuilds the pairs from the template rows again, and trains that model
on, against itself frozen as the reference: the pairs then show the failures the model has now, not the ones DPO
has already fixed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path

from pico.checkpoint import Checkpoint
from pico.config import DPOConfig
from pico.onpolicy import onpolicy_pairs
from pico.prompt import check_context, longest_example_tokens
from pico.recipes import Trained, fingerprint
from pico.recipes.finetune import DPO_STATS, dpo
from pico.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def round_resume(resume: Path, r: int) -> Path:
    """Where round `r` keeps its resume state (round 1: the stage's own path), so that a rerun of a killed round
    finds its state after the rounds before it have run again."""
    return resume if r == 1 else resume.with_name(f"{resume.stem}.round{r}{resume.suffix}")


def onpolicy_dpo(cfg: DPOConfig, sft_ckpt: Checkpoint, tok: Tokenizer, splits: dict[str, list[dict]], *,
                 earlier: list[dict], samples_id: str, inputs_id: tuple, reference_cache: Path,
                 resume: Path) -> tuple[Trained, list[dict]]:
    """(the DPO model after every round, one record per on-policy sample, tagged with its round's fingerprint).

    `splits`: the template rows {"train", "valid"}; `earlier`: the last run's sample records, whose stories are
    reused where their fingerprint matches (round 1's is `samples_id`: SFT model, rows, sampling settings, sampler
    code; a later round's adds every DPO knob, since the model it samples comes out of DPO). At
    `dpo.onpolicy.share: 0` there is one round on the template pairs."""
    policy, records, rounds = sft_ckpt, [], []
    for r in range(1, cfg.onpolicy.rounds + 1):
        round_cfg = cfg if r == 1 else replace(cfg, seed=cfg.seed + r - 1)
        round_id = samples_id if r == 1 else fingerprint("dpo-samples-round", samples_id, r, asdict(cfg))
        reused = [x for x in earlier if x.get("fingerprint") == round_id]
        rebuilt, samples, counts = onpolicy_pairs(round_cfg, policy, tok, splits, reused)
        rows = [rebuilt["train"], rebuilt["valid"]]
        ids = (*inputs_id, fingerprint(rows)) if counts else inputs_id
        if r > 1:
            ids = ("round", r, round_id, *ids)
        longest = longest_example_tokens(tok, rows[0] + rows[1])[1]
        check_context(policy.model_cfg.max_seq_len, longest, "the DPO examples (prompt + story + end token)")
        if r > 1:
            log.info("DPO round %d of %d, against round %d's model", r, cfg.onpolicy.rounds, r - 1)
        trained = dpo(round_cfg, policy, tok, *rows, reference_cache=reference_cache, inputs_id=ids,
                      resume=round_resume(resume, r))
        if counts:
            trained.metrics["onpolicy"] = counts
        records += [{**x, "fingerprint": round_id, **({"round": r} if r > 1 else {})} for x in samples]
        rounds.append(trained)
        policy = Checkpoint(trained.model, trained.model_cfg, meta={"stage": "dpo", "round": r})
    return (rounds[0] if len(rounds) == 1 else merged_rounds(rounds)), records


def merged_rounds(rounds: list[Trained]) -> Trained:
    """One record of several rounds: the last round's model and validation stats (against its own reference),
    steps and tokens summed (training compute), curves joined with a `round` column and steps counted on, and
    each round's summary under `rounds` (`round1`, `round2`, ...)."""
    last, offset, train_curve, val_curve, summary = rounds[-1], 0, [], [], {}
    for r, t in enumerate(rounds, 1):
        train_curve += [{**row, "step": row["step"] + offset, "round": r} for row in t.result.train_curve]
        val_curve += [{**row, "step": row["step"] + offset, "round": r} for row in t.result.val_curve]
        # keyed by round, not a list: DVC flattens nested dicts into columns (`rounds.round2.val_loss`)
        summary[f"round{r}"] = {"steps": t.metrics["steps"], "tokens_seen": t.metrics["tokens_seen"],
                                **{k: t.metrics[k] for k in ("val_loss", "val_rewards/accuracies",
                                                             "val_rewards/margins")},
                                **({"onpolicy": t.metrics["onpolicy"]} if "onpolicy" in t.metrics else {})}
        offset += t.result.steps_done
    total = {k: sum(t.metrics[k] for t in rounds) for k in ("steps", "planned_steps", "tokens_seen")}
    result = replace(last.result, train_curve=train_curve, val_curve=val_curve, steps_done=offset,
                     best_step=offset - last.result.steps_done + last.result.best_step,
                     tokens_seen=sum(t.result.tokens_seen for t in rounds),
                     train_seconds=sum(t.result.train_seconds for t in rounds))
    metrics = {**last.metrics, **total, "best_step": result.best_step, "rounds": summary}
    if "onpolicy" in rounds[0].metrics:
        metrics["onpolicy"] = rounds[0].metrics["onpolicy"]
    return replace(last, metrics=metrics, result=result, train_config=rounds[0].train_config,
                   train_columns=["step", "round", *DPO_STATS, "lr", "grad_norm"],
                   val_columns=["step", "round", *(f"val_{k}" for k in DPO_STATS)])
