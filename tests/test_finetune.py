"""SFT/DPO data path: encode_sft masks, truncation, batches, and DPO on a tiny model."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import config
from pico.finetune import (BucketedBatches, collate, dpo_batch, encode_dpo_rows, encode_sft_rows, pair_logps,
                           sft_batch, with_reference)
from pico.losses import dpo_batch_loss, lm_loss
from pico.model import build_model
from pico.prompt import encode_sft
from pico.train import evaluate_loss, train

WORDS = ["the", "dark", "door", "Mina", "key", "whispered", "never", "night", "cold", "walls", "\n\n", ".", ","]
texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=60).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(prompt=texts, response=texts, max_len=st.integers(8, 120), drop=st.booleans())
def test_mask_covers_exactly_the_response_and_eos(tok, prompt, response, max_len, drop):
    enc = encode_sft(tok, prompt, response, max_len, "drop" if drop else "left")
    response_ids = tok.encode(response) + [tok.eot_id]
    prompt_ids = tok.encode(prompt)
    if enc is None:
        assert len(prompt_ids) + len(response_ids) > max_len
        assert drop or len(response_ids) >= max_len
        return
    assert len(enc.ids) <= max_len
    assert enc.ids[enc.loss_start:] == response_ids  # the response ids, untouched, then EOS once
    assert enc.ids.count(tok.eot_id) == 1 and enc.ids[-1] == tok.eot_id
    assert enc.ids[: enc.loss_start] == prompt_ids[len(prompt_ids) - enc.loss_start:]  # a left-cut prompt
    assert enc.truncated == (enc.loss_start < len(prompt_ids))
    batch = collate([enc])
    mask = batch["loss_mask"][0].bool()
    assert batch["targets"][0][mask].tolist() == response_ids  # the loss sees exactly response + EOS
    assert int(mask.sum()) == len(response_ids)


def test_the_pair_is_tokenized_separately_never_joined(tok):
    prompt, response = "Story:\n", "Once"
    enc = encode_sft(tok, prompt, response, 100)
    assert enc.ids == tok.encode(prompt) + tok.encode(response) + [tok.eot_id]


def test_padded_batches_mask_padding_and_count_weight(tok):
    rows = [{"prompt": "Title: A\nStory:\n", "response": "Mina ran."},
            {"prompt": "Title: Something longer here\nStory:\n", "response": "The walls whispered all night long."}]
    encoded, report = encode_sft_rows(tok, rows, 64, "left")
    batch = sft_batch(encoded)
    assert batch["n_items"] == sum(e.n_loss_tokens for e in encoded)
    short = min(range(2), key=lambda i: len(encoded[i].ids))
    n = len(encoded[short].ids) - 1
    assert batch["loss_mask"][short, n:].sum() == 0  # padding never counts
    assert report.as_dict() == {"rows": 2, "kept": 2, "truncated": 0, "dropped": 0}


def test_truncation_report_counts_truncated_and_dropped(tok):
    long_prompt = "the dark door " * 40
    rows = [{"prompt": long_prompt, "response": "Mina ran."}, {"prompt": "p", "response": "never " * 80}]
    _, report = encode_sft_rows(tok, rows, 40, "left")
    assert report.truncated == 1 and report.dropped == 1 and report.kept == 1
    _, report = encode_sft_rows(tok, rows, 40, "drop")
    assert report.truncated == 0 and report.dropped == 2


def test_bucketed_batches_cover_every_item_once_per_epoch_and_are_deterministic():
    lengths = [5, 50, 7, 48, 6, 52, 9, 47, 30, 31, 5]
    b = BucketedBatches(lengths, 3, seed=1, make=lambda idx: idx)
    for epoch in range(3):
        items = sorted(i for batch in b.epoch(epoch) for i in batch)
        assert items == list(range(len(lengths)))
    again = BucketedBatches(lengths, 3, seed=1, make=lambda idx: idx)
    assert [b.micro(k) for k in range(10)] == [again.micro(k) for k in range(10)]
    assert b.epoch(0) != b.epoch(1)


# ----------------------------------------------------------------------------------------------- DPO on a tiny model
def tiny_pairs(tok):
    rows = []
    for i, name in enumerate(["Mina", "Kai", "Ruth", "Theo", "Ada", "Nora", "Felix", "Ines"]):
        prompt = f"Title: Night {i}\nProtagonist: {name}\nStory:\n"
        rows.append({"prompt": prompt, "chosen": f"{name} heard the walls whisper in the cold dark night.",
                     "rejected": f"{name} laughed in the sunny park with a happy friend."})
    pairs, _ = encode_dpo_rows(tok, rows, 64, "left")
    return pairs


def tiny_model(tok, seed=0):
    torch.manual_seed(seed)
    return build_model(config("model", d_model=32, n_layer=2, n_head=2, max_seq_len=64), tok.vocab_size)


def test_policy_equal_to_reference_gives_log2_and_zero_rewards(tok):
    pairs = tiny_pairs(tok)
    model = tiny_model(tok)
    ref = pair_logps(model, pairs, 3, torch.device("cpu"))
    batch = dpo_batch(with_reference(pairs, ref))
    loss_sum, stats = dpo_batch_loss(model.eval(), batch, beta=0.1)
    assert loss_sum.item() / len(pairs) == pytest.approx(math.log(2), abs=1e-5)
    assert stats["rewards/margins"].item() == pytest.approx(0.0, abs=1e-4)


def test_reference_logps_match_a_direct_computation(tok):
    pairs = tiny_pairs(tok)
    model = tiny_model(tok).eval()
    ref = pair_logps(model, pairs, 3, torch.device("cpu"))
    chosen = pairs[2].chosen
    logits = model(torch.tensor([chosen.ids[:-1]]))
    logp = torch.log_softmax(logits, -1)[0, torch.arange(len(chosen.ids) - 1), torch.tensor(chosen.ids[1:])]
    assert ref[2, 0].item() == pytest.approx(logp[chosen.loss_start - 1:].sum().item(), abs=1e-4)


def test_a_few_dpo_steps_raise_reward_accuracy(tok):
    pairs = tiny_pairs(tok)
    model = tiny_model(tok)
    pairs = with_reference(pairs, pair_logps(model, pairs, 4, torch.device("cpu")))
    batches = BucketedBatches([p.length for p in pairs], 4, 0, lambda idx: dpo_batch([pairs[i] for i in idx]))
    loss_fn = functools.partial(dpo_batch_loss, beta=0.5)
    all_pairs = batches.all_in_order()
    before = evaluate_loss(model, all_pairs, loss_fn, torch.device("cpu"))
    cfg = config("dpo", seed=0, device="cpu", lr=3e-3, warmup_steps=0, eval_every=100, save_every=100,
                 batch_size=4, grad_accum=1, grad_clip=1.0, weight_decay=0.0, min_lr_ratio=0.1)
    train(model, cfg, total_steps=12, get_batch=batches.micro, loss_fn=loss_fn)
    after = evaluate_loss(model, all_pairs, loss_fn, torch.device("cpu"))
    assert before["val_rewards/accuracies"] <= 0.75
    assert after["val_rewards/accuracies"] == 1.0
    assert after["val_loss"] < before["val_loss"] < math.log(2) + 0.05
    assert after["val_rewards/margins"] > 0


def test_sft_steps_lower_the_response_loss(tok):
    rows = [{"prompt": f"Protagonist: {n}\nStory:\n", "response": f"{n} heard the walls whisper."}
            for n in ["Mina", "Kai", "Ruth", "Theo"]]
    encoded, _ = encode_sft_rows(tok, rows, 64, "left")
    model = tiny_model(tok)
    batch = sft_batch(encoded)
    before = lm_loss(model, batch)[0].item() / batch["n_items"]
    cfg = config("sft", seed=0, device="cpu", lr=3e-3, warmup_steps=0, eval_every=100, save_every=100,
                 grad_accum=1, grad_clip=1.0, weight_decay=0.0, min_lr_ratio=0.1)
    train(model, cfg, total_steps=20, get_batch=lambda k: batch, loss_fn=lm_loss)
    assert lm_loss(model, batch)[0].item() / batch["n_items"] < before - 1.0
