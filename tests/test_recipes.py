"""The recipes run without DVC: pretrain -> sft -> dpo -> evaluate on a tiny model, in this process."""

from __future__ import annotations

import numpy as np

from conftest import config
from pico.checkpoint import Checkpoint
from pico.data import pack_tokens
from pico.generate import generate_rows
from pico.recipes.evaluate import evaluate
from pico.recipes.finetune import dpo, sft
from pico.recipes.pretrain import pretrain

TINY_TRAIN = dict(device="cpu", batch_size=2, grad_accum=1, warmup_steps=1, eval_every=2, save_every=2, log_every=1)


def test_the_recipes_chain_without_dvc(tok, sample_stories, tmp_path):
    model_cfg = config("model", d_model=32, n_layer=1, n_head=2, max_seq_len=512)
    tokens = pack_tokens(tok, sample_stories, progress=False)
    base = pretrain(config("pretrain", **TINY_TRAIN, max_steps=4, seq_len=32, eval_batches=1), model_cfg, tok,
                    tokens[:20000], tokens[20000:30000])
    assert base.result.steps_done == 4 and len(base.result.train_curve) == 4 and len(base.result.val_curve) == 2
    assert {"train_loss", "val_loss", "val_bpb", "unigram_val_loss", "params"} <= base.metrics.keys()
    first, last = base.result.val_curve[0]["val_loss"], base.result.val_curve[-1]["val_loss"]
    assert last < first  # it learned (a fresh copy head spreads mass over the context: ln V is no bound here)

    rows = generate_rows(config("generate", sft_splits={"train": 4, "valid": 2, "test": 2, "test_unseen": 2},
                                dpo_splits={"train": 4, "valid": 2, "test": 2})).rows
    sft_out = sft(config("sft", **TINY_TRAIN, max_steps=2, max_len=512), Checkpoint(base.model, model_cfg, {}), tok,
                  rows[("sft", "train")], rows[("sft", "valid")])
    assert sft_out.metrics["steps"] == 2 and sft_out.metrics["train_rows"]["kept"] == 4
    dpo_out = dpo(config("dpo", **TINY_TRAIN, max_steps=2, max_len=512), Checkpoint(sft_out.model, model_cfg, {}), tok,
                  rows[("dpo", "train")], rows[("dpo", "valid")], reference_cache=tmp_path / "ref.pt")
    assert (tmp_path / "ref.pt").is_file() and dpo_out.metrics["train_pairs"]["kept"] == 4
    assert {"val_loss", "val_rewards/margins", "train_rewards/accuracies"} <= dpo_out.metrics.keys()

    checkpoints = {name: Checkpoint(t.model, model_cfg, {}) for name, t in
                   (("base", base), ("sft", sft_out), ("dpo", dpo_out))}
    tests = {"test_unseen": rows[("sft", "test_unseen")], "test": rows[("sft", "test")]}
    result = evaluate(config("evaluate", device="cpu", n_generations=2, max_new_tokens=8, val_batches=1,
                             batch_size=2), checkpoints, tok, sft_tests=tests, dpo_train=rows[("dpo", "train")],
                      dpo_test=rows[("dpo", "test")], gen_rows=tests, val_tokens=tokens[30000:40000])
    assert set(result.metrics) == {"base", "sft", "dpo", "style_judge", "checker", "precision"}
    assert len(result.records["test_unseen"]) == 6
    assert {"unseen_pass_all", "seen_pass_all_lo", "pref_acc_logp", "val_bpb"} <= result.metrics["dpo"].keys()
    assert set(result.comparisons) == {"sft vs base", "dpo vs sft", "dpo vs base"}
