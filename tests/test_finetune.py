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
    assert report.as_dict() == {"rows": 2, "kept": 2, "truncated": 0, "dropped": 0, "identical": 0}


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


def tiny_model(tok, seed=0, max_seq_len=64):
    torch.manual_seed(seed)
    return build_model(config("model", d_model=32, n_layer=2, n_head=2, max_seq_len=max_seq_len), tok.vocab_size)


def test_policy_equal_to_reference_gives_log2_and_zero_rewards(tok):
    pairs = tiny_pairs(tok)
    model = tiny_model(tok)
    ref = pair_logps(model, pairs, 3, torch.device("cpu"))
    batch = dpo_batch(with_reference(pairs, ref))
    loss_sum, stats = dpo_batch_loss(model.eval(), batch, beta=0.1)
    assert loss_sum.item() / len(pairs) == pytest.approx(math.log(2), abs=1e-5)
    assert stats["rewards/margins"].item() == pytest.approx(0.0, abs=1e-4)


def test_rpo_alpha_adds_the_chosen_mean_token_nll(tok):
    pairs = tiny_pairs(tok)
    model = tiny_model(tok).eval()
    batch = dpo_batch(with_reference(pairs, pair_logps(model, pairs, 3, torch.device("cpu"))))
    plain, _ = dpo_batch_loss(model, batch, beta=0.1)
    rpo, stats = dpo_batch_loss(model, batch, beta=0.1, rpo_alpha=0.5)
    chosen = pair_logps(model, pairs, 3, torch.device("cpu"))[:, 0]
    n_chosen = torch.tensor([p.n_tokens[0] for p in pairs], dtype=torch.float32)
    expected_nll = (-chosen / n_chosen).sum()
    assert stats["nll/chosen"].item() == pytest.approx(expected_nll.item(), rel=1e-5)
    assert rpo.item() == pytest.approx(plain.item() + 0.5 * expected_nll.item(), rel=1e-5)


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


# ----------------------------------------------------------------------------------------------- DPO details
def test_dpo_turns_dropout_off_so_step_0_is_exactly_ln2(tok, tmp_path):
    """With dropout 0.3 in the model, DPO's first loss is still ln 2 and every margin 0 (TRL's disable_dropout)."""
    from pico.checkpoint import Checkpoint
    from pico.recipes.finetune import dpo

    model_cfg = config("model", d_model=32, n_layer=2, n_head=2, max_seq_len=64, dropout=0.3)
    torch.manual_seed(0)
    model = build_model(model_cfg, tok.vocab_size)
    rows = [{"prompt": f"Title: Night {i}\nStory:\n", "chosen": f"{n} heard the walls whisper.",
             "rejected": f"{n} laughed in the sun."} for i, n in enumerate(["Mina", "Kai", "Ruth", "Theo"])]
    cfg = config("dpo", device="cpu", rpo_alpha=0.0, batch_size=4, grad_accum=1, max_steps=2, max_len=64,
                 warmup_steps=0, eval_every=1, save_every=10, log_every=1)  # plain DPO: RPO's term adds the NLL
    out = dpo(cfg, Checkpoint(model, model_cfg, {}), tok, rows, rows, reference_cache=tmp_path / "ref.pt")
    first = out.result.train_curve[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert all(m.p == 0 for m in out.model.modules() if isinstance(m, torch.nn.Dropout))


def test_chosen_and_rejected_are_cut_against_the_same_prompt(tok):
    from pico.finetune import encode_pair

    row = {"prompt": "the dark door " * 30, "chosen": "Mina ran " * 4, "rejected": "Kai"}
    pair = encode_pair(tok, row, 60, "left")
    prompt_c = pair.chosen.ids[: pair.chosen.loss_start]
    assert prompt_c == pair.rejected.ids[: pair.rejected.loss_start]  # the longer response decided the cut
    assert len(pair.chosen.ids) <= 60 and pair.truncated
    assert encode_pair(tok, row, 60, "drop") is None


def test_an_empty_prompt_is_an_error_not_a_row_that_trains_on_nothing(tok, tmp_path):
    from pico.errors import DataError
    from pico.io import read_jsonl

    with pytest.raises(ValueError, match="prompt is empty"):
        encode_sft(tok, "", "Mina ran.", 64)
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "Story:", "response": "Mina ran."}\n{"prompt": "", "response": "Kai ran."}\n')
    with pytest.raises(DataError, match=r"train.jsonl:2: \"prompt\" must be a non-empty string"):
        read_jsonl(path, texts=("prompt", "response"))


def test_identical_chosen_and_rejected_are_dropped_and_counted(tok):
    rows = [{"prompt": "Story:\n", "chosen": "Mina ran.", "rejected": "Mina ran."},
            {"prompt": "Story:\n", "chosen": "Mina ran.", "rejected": "Kai hid."}]
    pairs, report = encode_dpo_rows(tok, rows, 64, "left")
    assert len(pairs) == 1 and report.identical == 1 and report.rows == 2


def test_ipo_uses_per_token_average_log_probs(tok):
    from pico.losses import dpo_loss, sequence_logps

    pairs = tiny_pairs(tok)[:3]
    model = tiny_model(tok).eval()
    ref_model = tiny_model(tok, seed=5).eval()
    pairs = with_reference(pairs, pair_logps(ref_model, pairs, 3, torch.device("cpu")))
    batch = dpo_batch(pairs)
    loss_sum, _ = dpo_batch_loss(model, batch, beta=0.5, loss_type="ipo")
    logps = sequence_logps(model(batch["input_ids"]), batch["targets"], batch["loss_mask"])
    n = torch.tensor([p.n_tokens for p in pairs], dtype=torch.float32)
    pc, pr = logps[:3] / n[:, 0], logps[3:] / n[:, 1]
    rc = torch.tensor([p.ref_chosen for p in pairs]) / n[:, 0]
    rr = torch.tensor([p.ref_rejected for p in pairs]) / n[:, 1]
    want = dpo_loss(pc, pr, rc, rr, 0.5, loss_type="ipo")[0].sum()
    assert loss_sum.item() == pytest.approx(want.item(), rel=1e-5)
    summed = dpo_loss(logps[:3], logps[3:], rc * n[:, 0], rr * n[:, 1], 0.5, loss_type="ipo")[0].sum()
    assert abs(loss_sum.item() - summed.item()) > 1e-3  # not the summed-log-prob IPO


# ----------------------------------------------------------------------------------------------- skip_copies
SPEC_PROMPT = ("Title: The Cold Door\nSetting: an old barn\nProtagonist: Mina\nSupporting character: Kai\n"
               "Important object: a brass key\nTaboo rule: never open the red door\n"
               "Twist: the house was only inside her\n\nStory:\n")


def test_copied_value_spans_cover_copies_and_copies_cut_short():
    from pico.prompt import copied_value_spans, parse_prompt

    spec = parse_prompt(SPEC_PROMPT)
    story = ("Mina's brass key sat in an old barn. \"Never open the red door,\" Kai said. Mina knew: the house was "
             "only. A brass bell rang.")
    copies = [story[s:e] for s, e in copied_value_spans(story, spec)]
    # names whole (possessive left out); "brass key" without the value's first word is not a copy; the taboo
    # without its quote and comma; the twist as far as it was copied; two words count as a copy cut short, even
    # when another noun follows ("A brass bell")
    assert copies == ["Mina", "an old barn", "Never open the red door", "Kai", "Mina", "the house was only",
                      "A brass"]


def test_skipped_tokens_are_exactly_the_copies(tok):
    from pico.prompt import Encoded, copied_value_spans, parse_prompt, with_copies_skipped

    spec = parse_prompt(SPEC_PROMPT)
    story = "Kai whispered: never open the red door. The night was cold, and Mina hid."
    prompt_ids = tok.encode(SPEC_PROMPT)
    enc = with_copies_skipped(tok, Encoded(prompt_ids + tok.encode(story) + [tok.eot_id], len(prompt_ids), False),
                              story, spec)
    ids = enc.ids[enc.loss_start:-1]
    skipped = "".join(tok.decode([ids[j]]) for j in enc.skip)
    assert skipped.split() == "Kai never open the red door Mina".split()
    assert enc.skip == tuple(sorted(enc.skip)) and len(copied_value_spans(story, spec)) == 3


def test_pref_mask_leaves_out_skipped_positions_and_only_them(tok):
    rows = [{"prompt": SPEC_PROMPT, "chosen": "Mina kept a brass key. Kai never came back.",
             "rejected": "The night was cold and long."}]
    plain, _ = encode_dpo_rows(tok, rows, 256, "left")
    skipped, _ = encode_dpo_rows(tok, rows, 256, "left", skip_copies=True)
    assert "pref_mask" not in dpo_batch(plain) and skipped[0].rejected.skip == ()
    batch = dpo_batch(skipped)
    chosen = skipped[0].chosen
    left_out = (batch["loss_mask"] - batch["pref_mask"])[0]
    assert left_out.min() == 0 and int(left_out.sum()) == len(chosen.skip) > 0
    assert left_out.nonzero().flatten().tolist() == [chosen.loss_start - 1 + j for j in chosen.skip]
    assert torch.equal(batch["pref_mask"][1], batch["loss_mask"][1])  # the rejected row copies nothing


def test_skip_rejected_end_leaves_out_the_rejected_end_token_and_only_it(tok):
    rows = [{"prompt": SPEC_PROMPT, "chosen": "Mina kept a brass key. Kai never came back.",
             "rejected": "The night was cold and long."}]
    plain, _ = encode_dpo_rows(tok, rows, 256, "left")
    pairs, _ = encode_dpo_rows(tok, rows, 256, "left", skip_rejected_end=True)
    rejected = pairs[0].rejected
    assert pairs[0].chosen == plain[0].chosen and rejected.ids == plain[0].rejected.ids
    assert rejected.skip == (len(rejected.ids) - 1 - rejected.loss_start,)
    batch = dpo_batch(pairs)
    left_out = batch["loss_mask"] - batch["pref_mask"]
    assert left_out[0].sum() == 0 and left_out[1].nonzero().flatten().tolist() == [len(rejected.ids) - 2]
    assert batch["targets"][1, len(rejected.ids) - 2] == tok.eot_id  # the position left out predicts the end
    both, _ = encode_dpo_rows(tok, rows, 256, "left", skip_copies=True, skip_rejected_end=True)
    copies, _ = encode_dpo_rows(tok, rows, 256, "left", skip_copies=True)
    assert both[0].chosen.skip == copies[0].chosen.skip != ()  # the copies stay skipped, the chosen's end is kept
    assert both[0].rejected.skip == rejected.skip


def test_skip_rejected_copies_skips_the_rejected_story_whole_copies_only(tok):
    from pico.prompt import copied_value_spans, parse_prompt

    rows = [{"prompt": SPEC_PROMPT, "chosen": "Mina kept a brass key. Kai never came back.",
             "rejected": "Mina hid the brass key, and never open the red door was the rule."}]
    both, _ = encode_dpo_rows(tok, rows, 256, "left", skip_copies=True)
    rejected_only, _ = encode_dpo_rows(tok, rows, 256, "left", skip_rejected_copies=True)
    assert rejected_only[0].chosen.skip == () and both[0].chosen.skip != ()
    assert rejected_only[0].rejected.skip == both[0].rejected.skip != ()  # every copy here is whole
    batch = dpo_batch(rejected_only)
    assert torch.equal(batch["pref_mask"][0], batch["loss_mask"][0])
    assert int((batch["loss_mask"] - batch["pref_mask"])[1].sum()) == len(both[0].rejected.skip)
    # a value cut short (what a value_cut pair's rejected story holds) stays in the log-ratio; the whole ones go
    cut = [{**rows[0], "rejected": "Kai said never open the red. Mina ran."}]
    cut_pair, _ = encode_dpo_rows(tok, cut, 256, "left", skip_rejected_copies=True)
    rejected = cut_pair[0].rejected
    ids = rejected.ids[rejected.loss_start:-1]
    skipped = "".join(tok.decode([ids[j]]) for j in rejected.skip)
    assert skipped.split() == ["Kai", "Mina"]
    spec = parse_prompt(SPEC_PROMPT)
    story = cut[0]["rejected"]
    assert [story[s:e] for s, e in copied_value_spans(story, spec)] == ["Kai", "never open the red", "Mina"]
    assert [story[s:e] for s, e in copied_value_spans(story, spec, whole_only=True)] == ["Kai", "Mina"]


def test_skipped_copies_leave_the_log_ratios_but_not_the_rpo_nll(tok):
    from pico.losses import model_token_logps

    rows = [{"prompt": SPEC_PROMPT, "chosen": "Mina kept a brass key. Kai never came back to an old barn.",
             "rejected": "Mina hid. The night was cold and long, and never open the red door."}]
    pairs, _ = encode_dpo_rows(tok, rows, 256, "left", skip_copies=True)
    model = tiny_model(tok, seed=3, max_seq_len=256).eval()
    ref_model = tiny_model(tok, seed=4, max_seq_len=256).eval()
    pairs = with_reference(pairs, pair_logps(ref_model, pairs, 2, torch.device("cpu")))
    batch = dpo_batch(pairs)
    token = model_token_logps(model, batch["input_ids"], batch["targets"], batch["loss_mask"]).detach()
    ref_token = model_token_logps(ref_model, batch["input_ids"], batch["targets"], batch["loss_mask"]).detach()
    assert pairs[0].ref_chosen == pytest.approx((ref_token * batch["pref_mask"])[0].sum().item(), abs=1e-4)
    _, stats = dpo_batch_loss(model, batch, beta=0.1, rpo_alpha=1.0)
    assert stats["logps/chosen"].item() == pytest.approx((token * batch["pref_mask"])[0].sum().item(), abs=1e-4)
    assert stats["logps/rejected"].item() == pytest.approx((token * batch["pref_mask"])[1].sum().item(), abs=1e-4)
    full_nll = -(token * batch["loss_mask"])[0].sum().item() / pairs[0].n_tokens[0]
    assert stats["nll/chosen"].item() == pytest.approx(full_nll, rel=1e-5)
    assert (batch["pref_mask"] < batch["loss_mask"]).any(dim=1).tolist() == [True, True]


# ----------------------------------------------------------------------------------------------- copy starts
def test_copy_starts_are_the_first_token_of_each_copy_the_prompt_holds(tok):
    from pico.prompt import copied_value_spans, parse_prompt

    spec = parse_prompt(SPEC_PROMPT)
    story = "Mina found an old barn.\n\nKai held a brass key, and said never open the red door. The key was cold."
    (enc,), _ = encode_sft_rows(tok, [{"prompt": SPEC_PROMPT, "response": story}], 256, "left", mark_copies=True)
    ids, prompt_ids = enc.ids[enc.loss_start:-1], enc.ids[: enc.loss_start]
    copies = copied_value_spans(story, spec)
    assert [story[s:e] for s, e in copies] == ["Mina", "an old barn", "Kai", "a brass key", "never open the red door"]
    # the copies' first tokens, found here from the decoded text: the token that ends where the text before the
    # copy ends, plus one ("The key" copies nothing)
    firsts = [next(j for j in range(len(ids)) if len(tok.decode(ids[: j + 1])) > s) for s, _ in copies]
    assert enc.starts == tuple(j for j in firsts if ids[j] in prompt_ids)
    assert tok.decode(ids[: enc.starts[0]]) == "Mina found"  # the copy of the setting starts at its article
    # the story's first word, "Mina" without a space, is a token the prompt (" M", "in", "a") lacks: left out
    assert ids[firsts[0]] not in prompt_ids and firsts[0] not in enc.starts and len(enc.starts) == 4
    # each copy's later tokens continue it: together with its start they are the tokens its characters span
    for s, e in copies[1:]:
        first = next(j for j in enc.starts if len(tok.decode(ids[: j + 1])) > s)
        later = [j for j in enc.continues if first < j and len(tok.decode(ids[:j])) < e]
        assert tok.decode(ids[first : first + 1 + len(later)]).strip() == story[s:e]
        assert later == list(range(first + 1, first + 1 + len(later)))
    # the left-out copy ("Mina") marks neither its start nor its later tokens
    assert not set(enc.continues) & set(range(firsts[1])) and not set(enc.starts) & set(enc.continues)
    (plain,), _ = encode_sft_rows(tok, [{"prompt": SPEC_PROMPT, "response": story}], 256, "left")
    assert plain.starts == () == plain.continues and plain.ids == enc.ids


def test_start_weight_scales_the_loss_at_copy_starts_and_the_mean_with_it(tok):
    from pico.losses import model_token_logps

    rows = [{"prompt": SPEC_PROMPT, "response": "Mina found an old barn. The night was cold."},
            {"prompt": SPEC_PROMPT, "response": "Kai held a brass key."}]
    encoded, _ = encode_sft_rows(tok, rows, 256, "left", mark_copies=True)
    plain, weighted = sft_batch(encoded), sft_batch(encoded, start_weight=4.0)
    assert torch.equal(plain["loss_mask"], collate(encoded)["loss_mask"])  # weight 1: the mask as before
    extra = weighted["loss_mask"] - plain["loss_mask"]
    where = [(i, e.loss_start - 1 + j) for i, e in enumerate(encoded) for j in e.starts]
    assert sorted(map(tuple, extra.nonzero().tolist())) == sorted(where) and len(where) >= 2
    assert (extra[extra > 0] == 3.0).all()
    assert weighted["n_items"] == plain["n_items"] + 3.0 * len(where)
    model = tiny_model(tok, seed=3, max_seq_len=256).eval()
    with torch.no_grad():
        loss_plain, _ = lm_loss(model, plain)
        loss_weighted, _ = lm_loss(model, weighted)
        logp = model_token_logps(model, plain["input_ids"], plain["targets"])
    at_starts = -sum(logp[i, t].item() for i, t in where)
    assert loss_weighted.item() == pytest.approx(loss_plain.item() + 3.0 * at_starts, rel=1e-4)


def test_continue_weight_scales_the_loss_at_a_copys_later_tokens_only(tok):
    rows = [{"prompt": SPEC_PROMPT, "response": "Mina found an old barn. The night was cold."},
            {"prompt": SPEC_PROMPT, "response": "Kai held a brass key."}]
    encoded, _ = encode_sft_rows(tok, rows, 256, "left", mark_copies=True)
    plain, both = sft_batch(encoded), sft_batch(encoded, start_weight=2.0, continue_weight=5.0)
    extra = both["loss_mask"] - plain["loss_mask"]
    starts = {(i, e.loss_start - 1 + j) for i, e in enumerate(encoded) for j in e.starts}
    later = {(i, e.loss_start - 1 + j) for i, e in enumerate(encoded) for j in e.continues}
    assert len(later) >= 4 and not starts & later
    assert {tuple(w) for w in extra.nonzero().tolist()} == starts | later
    assert all(extra[i, t] == 1.0 for i, t in starts) and all(extra[i, t] == 4.0 for i, t in later)
    assert both["n_items"] == plain["n_items"] + 1.0 * len(starts) + 4.0 * len(later)
    only = sft_batch(encoded, continue_weight=5.0)  # the starts keep weight 1 when only the later tokens weigh more
    assert {tuple(w) for w in (only["loss_mask"] - plain["loss_mask"]).nonzero().tolist()} == later
