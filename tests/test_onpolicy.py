"""On-policy DPO pairs: which rows are rebuilt, which samples become rejected and chosen, and that nothing else
changes (pico/onpolicy.py)."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from conftest import config
from pico.checkpoint import load_checkpoint
from pico.checks import check_story, failed_checks
from pico.errors import DataError
from pico.generate import template_row
from pico.onpolicy import (VALUE_CHECKS, earlier_texts, more_onpolicy_pairs, onpolicy_pair, onpolicy_pairs,
                           onpolicy_rows, picked_rows)
from pico.spec import Spec, sample_specs


def dpo_rows(n: int) -> list[dict]:
    return [template_row("dpo", spec, random.Random(i), "easy") for i, spec in enumerate(sample_specs(n, 3))]


def test_picked_rows_share_and_determinism():
    assert picked_rows(50, 0.0, 1, "train") == []
    assert picked_rows(50, 1.0, 1, "train") == list(range(50))
    half = picked_rows(400, 0.5, 1, "train")
    assert 150 < len(half) < 250
    assert half == picked_rows(400, 0.5, 1, "train")
    assert picked_rows(100, 0.5, 1, "train") == [i for i in half if i < 100]  # a row's draw is its own
    assert half != picked_rows(400, 0.5, 1, "valid") and half != picked_rows(400, 0.5, 2, "train")


def test_onpolicy_pair_takes_the_first_failing_and_passing_samples():
    row = {"prompt": "p", "chosen": "template chosen", "rejected": "template rejected", "spec": {}, "pair_kind": "easy"}
    stories = [{"text": "good one", "failed": []}, {"text": "bad one", "failed": ["fluent"]},
               {"text": "bad two", "failed": ["twist_present", "fluent"]}, {"text": "good two", "failed": []}]
    pair = onpolicy_pair(row, stories, "template")
    assert (pair["chosen"], pair["rejected"], pair["pair_kind"]) == ("template chosen", "bad one", "onpolicy")
    assert pair["rejected_failed"] == ["fluent"] and pair["prompt"] == "p"
    pair = onpolicy_pair(row, stories, "self")
    assert (pair["chosen"], pair["rejected"], pair["pair_kind"]) == ("good one", "bad one", "onpolicy_both")
    only_bad = onpolicy_pair(row, stories[1:3], "self")  # no passing sample: the template's story stays chosen
    assert (only_bad["chosen"], only_bad["pair_kind"]) == ("template chosen", "onpolicy")
    assert onpolicy_pair(row, [stories[0], stories[3]], "template") is None  # nothing failed: no pair to make
    assert row["rejected"] == "template rejected"  # the input row is not changed
    values = onpolicy_pair(row, stories, "self", "values_first")  # the first story that fails a value check
    assert (values["chosen"], values["rejected"], values["rejected_failed"]) == ("good one", "bad two",
                                                                              ["twist_present", "fluent"])
    form_only = onpolicy_pair(row, stories[:2], "self", "values_first")  # none fails one: the first failing
    assert form_only["rejected"] == "bad one"


def test_more_onpolicy_pairs_pair_every_other_failing_sample():
    row = {"prompt": "p", "chosen": "template chosen", "rejected": "template rejected", "spec": {}, "pair_kind": "easy"}
    stories = [{"text": "bad one", "failed": ["fluent"]}, {"text": "good one", "failed": []},
               {"text": "bad two", "failed": ["twist_present"]}, {"text": "bad three", "failed": ["paragraphs"]},
               {"text": "good two", "failed": []}]
    assert more_onpolicy_pairs(row, stories, "self", "first", 1) == []  # one pair: `onpolicy_pair`'s alone
    more = more_onpolicy_pairs(row, stories, "self", "first", 4)  # the 2nd and 3rd failing, passing ones in turn
    assert [(p["chosen"], p["rejected"], p["pair_kind"]) for p in more] == [
        ("good two", "bad two", "onpolicy_extra"), ("good one", "bad three", "onpolicy_extra")]
    assert more[0]["rejected_failed"] == ["twist_present"] and more[0]["prompt"] == "p"
    assert [p["rejected"] for p in more_onpolicy_pairs(row, stories, "self", "first", 2)] == ["bad two"]
    # values_first: onpolicy_pair took "bad two" (a value check); the others follow in order
    first = onpolicy_pair(row, stories, "self", "values_first")["rejected"]
    rest = [p["rejected"] for p in more_onpolicy_pairs(row, stories, "self", "values_first", 4)]
    assert (first, rest) == ("bad two", ["bad one", "bad three"])
    template = more_onpolicy_pairs(row, stories, "template", "first", 4)
    assert {p["chosen"] for p in template} == {"template chosen"}
    assert more_onpolicy_pairs(row, [stories[1], stories[4]], "self", "first", 4) == []  # nothing failed


def judge_as(monkeypatch, verdicts: dict[int, list[list[str]]]) -> None:
    """The checker replaced: row i's sample k is the story "story i.k" and fails the checks `verdicts[i][k]`
    (read when judged, so a test may change `verdicts` between runs)."""
    import pico.onpolicy

    def fake_judged(picked_rows_, texts):
        return [[{"text": f"story {i}.{k}", "failed": f} for k, f in enumerate(verdicts[i])]
                for i in range(len(verdicts))]

    monkeypatch.setattr(pico.onpolicy, "judged", fake_judged)


def test_pairs_per_prompt_appends_the_other_failing_samples_pairs(sft_model, tok, monkeypatch):
    rows = dpo_rows(3)
    judge_as(monkeypatch, {0: [[], ["fluent"], ["twist_present"]], 1: [["fluent"], ["paragraphs"], ["fluent"]],
                           2: [[], [], []]})
    cfg = dataclasses.replace(config("dpo").onpolicy, share=1.0, samples=3, max_new_tokens=4, chosen="self",
                              cut_pairs=0.0)
    kwargs = dict(batch_size=4, device=torch.device("cpu"), dtype=torch.float32)
    one, records, counts = onpolicy_rows(sft_model.model, tok, rows, "train", cfg, 7, **kwargs)
    out, more_records, more_counts = onpolicy_rows(sft_model.model, tok, rows, "train",
                                                   dataclasses.replace(cfg, pairs_per_prompt=3), 7, **kwargs)
    assert out[:3] == one and more_records == records  # the first pairs and the samples are the same
    assert [(r["chosen"], r["rejected"]) for r in out[3:]] == [
        ("story 0.0", "story 0.2"), (rows[1]["chosen"], "story 1.1"), (rows[1]["chosen"], "story 1.2")]
    assert more_counts["pairs"] == {**counts["pairs"], "onpolicy_extra": 3}
    assert more_counts["rejected_failed"] == {"fluent": 3, "twist_present": 1, "paragraphs": 1}


@pytest.fixture
def sft_model(tmp_path, tok):
    """An untrained tiny GPT whose context holds a template pair in the tests' small tokenizer, as `generate`
    makes sure the pipeline's does."""
    from pico.checkpoint import save_checkpoint
    from pico.model import build_model

    cfg = config("model", type="transformer", d_model=32, n_layer=2, n_head=2, max_seq_len=1024)
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    save_checkpoint(path, build_model(cfg, tok.vocab_size), model_cfg=cfg, tokenizer_hash=tok.hash, stage="test",
                    step=0)
    return load_checkpoint(path, tokenizer_hash=tok.hash)


def test_onpolicy_rows_rebuild_picked_pairs_from_failing_samples(sft_model, tok):
    rows = dpo_rows(6)
    cfg = config("dpo").onpolicy
    cfg = dataclasses.replace(cfg, share=0.5, samples=2, max_new_tokens=24, cut_pairs=0.0)  # cut pairs: tested below
    kwargs = dict(batch_size=4, device=torch.device("cpu"), dtype=torch.float32)
    out, records, counts = onpolicy_rows(sft_model.model, tok, rows, "train", cfg, 7, **kwargs)
    picked = picked_rows(6, 0.5, 7, "train")
    assert counts["picked"] == len(picked) and counts["samples"] == len(records) == 2 * len(picked)
    assert sorted({r["row"] for r in records}) == picked
    for i, row in enumerate(out):
        if i not in picked:
            assert row is rows[i]
            continue
        # an untrained model's 24 tokens are never a story that passes: each picked pair is rebuilt
        assert row["pair_kind"] == "onpolicy" and row["chosen"] == rows[i]["chosen"]
        mine = [r for r in records if r["row"] == i]
        assert row["rejected"] == mine[0]["response"]
        assert failed_checks(check_story(row["rejected"], Spec.from_dict(row["spec"]))) == row["rejected_failed"]
    assert counts["pairs"] == {"onpolicy": len(picked)} and counts["sample_pass_all"] == 0.0
    again = onpolicy_rows(sft_model.model, tok, rows, "train", cfg, 7, **kwargs)
    assert again[0] == out and again[1] == records  # same seed, same samples


def test_self_only_drops_rows_without_a_pair_of_own_stories(sft_model, tok, monkeypatch):
    rows = dpo_rows(4)
    # rows 0 and 3 have a passing and a failing story, 1 only failing, 2 none
    verdicts = {0: [[], ["fluent"]], 1: [["fluent"], ["twist_present"]], 2: [[], []], 3: [["fluent"], []]}
    judge_as(monkeypatch, verdicts)
    cfg = dataclasses.replace(config("dpo").onpolicy, share=1.0, samples=2, max_new_tokens=4, chosen="self_only",
                              cut_pairs=0.0)
    kwargs = dict(batch_size=4, device=torch.device("cpu"), dtype=torch.float32)
    out, records, counts = onpolicy_rows(sft_model.model, tok, rows, "train", cfg, 7, **kwargs)
    assert [(r["chosen"], r["rejected"]) for r in out] == [("story 0.0", "story 0.1"), ("story 3.1", "story 3.0")]
    assert counts["pairs"] == {"dropped": 2, "onpolicy_both": 2} and counts["kept_rows"] == 2
    assert len(records) == 8  # every sample is still written
    self_cfg = dataclasses.replace(cfg, chosen="self")  # the same samples, template stories kept where needed
    out_self, _, counts_self = onpolicy_rows(sft_model.model, tok, rows, "train", self_cfg, 7, **kwargs)
    assert len(out_self) == 4 and out_self[2] is rows[2] and out_self[1]["chosen"] == rows[1]["chosen"]
    assert counts_self["kept_rows"] == 4
    verdicts.update({0: [["fluent"], ["fluent"]], 3: [[], []]})
    with pytest.raises(DataError, match="dpo.onpolicy.chosen: self_only left no train pair"):
        onpolicy_rows(sft_model.model, tok, rows, "train", cfg, 7, **kwargs)


def test_a_story_that_does_not_fit_the_context_with_its_end_token_is_not_used(sft_model, tok, monkeypatch):
    """A sample that ran to the end of the context has no room for its end token: as chosen or rejected it would
    stop the dpo stage (its context check), so it is left out and counted (`too_long`)."""
    import pico.onpolicy

    rows = dpo_rows(2)
    context = sft_model.model.cfg.max_seq_len
    room = context - len(tok.encode(rows[0]["prompt"])) - 1  # story tokens that still fit with the end token
    words = " ".join(["dark"] * (context + 10))
    long_story = tok.decode(tok.encode(words)[: room + 1])  # one token too many
    fitting = tok.decode(tok.encode(words)[:room])
    assert len(tok.encode(fitting)) <= room < len(tok.encode(long_story))

    def fake_judged(picked_rows_, texts):  # row 0: the passing story is too long; row 1: the failing one is
        return [[{"text": long_story, "failed": []}, {"text": "short bad", "failed": ["fluent"]},
                 {"text": fitting, "failed": []}],
                [{"text": "short good", "failed": []}, {"text": long_story, "failed": ["fluent"]}]]

    monkeypatch.setattr(pico.onpolicy, "judged", fake_judged)
    cfg = dataclasses.replace(config("dpo").onpolicy, share=1.0, samples=2, max_new_tokens=4, chosen="self",
                              cut_pairs=0.0)
    kwargs = dict(batch_size=4, device=torch.device("cpu"), dtype=torch.float32)
    out, records, counts = onpolicy_rows(sft_model.model, tok, rows, "train", cfg, 7, **kwargs)
    assert (out[0]["chosen"], out[0]["rejected"]) == (fitting, "short bad")  # the next passing story instead
    assert out[1] is rows[1]  # no failing story that fits: the template pair stays
    assert counts["pairs"] == {"onpolicy_both": 1, "template_kept": 1, "too_long": 2}
    assert len(records) == 5  # every sample is still written


def test_cut_pairs_add_the_chosen_story_against_itself_with_a_value_cut_short(sft_model, tok):
    rows = dpo_rows(8)
    base = dataclasses.replace(config("dpo").onpolicy, share=1.0, samples=2, max_new_tokens=16, cut_pairs=0.0)
    kwargs = dict(batch_size=8, device=torch.device("cpu"), dtype=torch.float32)
    plain, records, counts = onpolicy_rows(sft_model.model, tok, rows, "train", base, 7, **kwargs)
    assert "value_cut" not in counts["pairs"]
    cut_cfg = dataclasses.replace(base, cut_pairs=1.0)
    out, cut_records, cut_counts = onpolicy_rows(sft_model.model, tok, rows, "train", cut_cfg, 7, **kwargs)
    assert out[: len(plain)] == plain and cut_records == records  # the same samples and pairs, then the cut ones
    extra = out[len(plain):]
    assert len(extra) == cut_counts["pairs"]["value_cut"] == len(rows)  # template stories quote every value whole
    for pair, row in zip(extra, plain):
        spec = Spec.from_dict(pair["spec"])
        assert pair["pair_kind"] == "value_cut" and pair["chosen"] == row["chosen"] and pair["prompt"] == row["prompt"]
        assert failed_checks(check_story(pair["rejected"], spec)) == pair["rejected_failed"]
        assert len(pair["rejected_failed"]) == 1
        assert pair["rejected_failed"][0] in VALUE_CHECKS | {"fluent", "no_repetition"} and pair["rejected"] != row[
            "chosen"]
    half = onpolicy_rows(sft_model.model, tok, rows, "train", dataclasses.replace(base, cut_pairs=0.5), 7, **kwargs)
    assert 0 < half[2]["pairs"]["value_cut"] < len(rows) and half[0][len(plain):] == [
        p for p in extra if p in half[0]]  # a row's draw is its own


def test_article_pairs_add_the_chosen_story_against_itself_with_an_article_swapped(sft_model, tok):
    rows = dpo_rows(8)
    base = dataclasses.replace(config("dpo").onpolicy, share=1.0, samples=2, max_new_tokens=16, cut_pairs=0.0,
                               article_pairs=0.0)
    kwargs = dict(batch_size=8, device=torch.device("cpu"), dtype=torch.float32)
    plain, records, counts = onpolicy_rows(sft_model.model, tok, rows, "train", base, 7, **kwargs)
    assert "article_swap" not in counts["pairs"]
    out, art_records, art_counts = onpolicy_rows(sft_model.model, tok, rows, "train",
                                                 dataclasses.replace(base, article_pairs=1.0), 7, **kwargs)
    assert out[: len(plain)] == plain and art_records == records  # the same samples and pairs, then the swapped ones
    extra = out[len(plain):]
    assert 0 < len(extra) == art_counts["pairs"]["article_swap"]
    for pair in extra:
        row = next(r for r in plain if r["prompt"] == pair["prompt"])
        assert pair["pair_kind"] == "article_swap" and pair["chosen"] == row["chosen"]
        assert pair["rejected_failed"] == ["fluent"] == failed_checks(check_story(pair["rejected"],
                                                                                  Spec.from_dict(pair["spec"])))
        diff = [(a, b) for a, b in zip(pair["chosen"].split(), pair["rejected"].split()) if a != b]
        assert len(diff) == 1 and {diff[0][0].lower(), diff[0][1].lower()} == {"a", "an"}


def test_onpolicy_pairs_at_share_zero_samples_nothing(sft_model, tok):
    rows = {"train": dpo_rows(3), "valid": dpo_rows(2)}
    cfg = config("dpo")
    cfg = dataclasses.replace(cfg, onpolicy=dataclasses.replace(cfg.onpolicy, share=0.0))
    assert onpolicy_pairs(cfg, sft_model, tok, rows) == (rows, [], {})


def test_earlier_records_are_reused_and_judged_again(sft_model, tok, monkeypatch):
    import pico.onpolicy

    rows = dpo_rows(5)
    cfg = dataclasses.replace(config("dpo").onpolicy, share=1.0, samples=2, max_new_tokens=24)
    kwargs = dict(batch_size=4, device=torch.device("cpu"), dtype=torch.float32)
    out, records, counts = onpolicy_rows(sft_model.model, tok, rows, "train", cfg, 7, **kwargs)

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled although the earlier stories were there")

    monkeypatch.setattr(pico.onpolicy, "sample", no_sampling)
    stale = [{**r, "failed": []} for r in records]  # a verdict of another checker: judged again, not trusted
    again = onpolicy_rows(sft_model.model, tok, rows, "train", cfg, 7, earlier=stale, **kwargs)
    assert again[0] == out and again[1] == records and again[2] == counts
    assert earlier_texts(records[:-1], "train", list(range(5)), 2) is None  # one story missing: sample again
    assert earlier_texts(records, "valid", list(range(5)), 2) is None  # another split's
    with pytest.raises(AssertionError, match="sampled although"):
        onpolicy_rows(sft_model.model, tok, rows, "train", cfg, 7, earlier=records[:-1], **kwargs)


def test_a_change_to_the_sampler_draws_the_on_policy_stories_again(monkeypatch):
    """stages/dpo.py reuses the last run's stories only while the code that drew them is the same: a fix to the
    n-gram guard reused the stories of the guard before it (RESEARCH.md finding 63)."""
    import importlib.util
    from pathlib import Path

    import pico.sampling

    path = Path(__file__).resolve().parents[1] / "stages" / "dpo.py"
    spec = importlib.util.spec_from_file_location("dpo_stage", path)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    cfg, inputs = config("dpo"), ("sft-digest", "train-digest", "valid-digest")
    before = stage.samples_fingerprint(cfg, inputs)
    assert stage.samples_fingerprint(cfg, inputs) == before  # the same inputs: reused (a beta sweep)
    assert stage.samples_fingerprint(dataclasses.replace(cfg, beta=cfg.beta * 2), inputs) == before
    real = stage.sha256_file
    monkeypatch.setattr(stage, "sha256_file",
                        lambda p: "edited" if Path(p) == Path(pico.sampling.__file__) else real(p))
    assert stage.samples_fingerprint(cfg, inputs) != before


def test_dpo_rounds_sample_the_last_rounds_model_and_train_it_on(sft_model, tok, tmp_path, monkeypatch):
    """Iterative DPO (`dpo.onpolicy.rounds: 2`): round 2 draws its stories from round 1's DPO model and trains that
    model on; a rerun with the stories of both rounds samples nothing and makes the same model."""
    import pico.onpolicy
    from pico.recipes.onpolicy import onpolicy_dpo

    cfg = config("dpo", device="cpu", precision="fp32", batch_size=2, max_steps=2, eval_every=1, save_every=1,
                 log_every=1, warmup_steps=0)
    cfg = dataclasses.replace(cfg, onpolicy=dataclasses.replace(cfg.onpolicy, share=1.0, samples=2, rounds=2,
                                                                max_new_tokens=24, batch_size=8))
    splits = {"train": dpo_rows(4), "valid": dpo_rows(2)}
    real_sample, drawn_from = pico.onpolicy.sample, []

    def spy(model, *args, **kwargs):
        drawn_from.append({k: v.clone() for k, v in model.state_dict().items()})
        return real_sample(model, *args, **kwargs)

    monkeypatch.setattr(pico.onpolicy, "sample", spy)
    start = {k: v.clone() for k, v in sft_model.model.state_dict().items()}

    def run(earlier):
        ckpt = load_checkpoint(tmp_path / "model.pt", tokenizer_hash=tok.hash)
        return onpolicy_dpo(cfg, ckpt, tok, splits, earlier=earlier, samples_id="round-1-id", inputs_id=("sft",),
                            reference_cache=tmp_path / "ref.pt", resume=tmp_path / "resume.pt")

    trained, records = run([])
    assert len(drawn_from) == 4  # train and valid, per round
    assert all(torch.equal(drawn_from[0][k], start[k]) for k in start)  # round 1: the SFT model
    round1 = drawn_from[2]
    assert any(not torch.equal(round1[k], start[k]) for k in start)  # round 2: round 1's DPO model
    assert any(not torch.equal(round1[k], v) for k, v in trained.model.state_dict().items())  # trained on
    assert list(trained.metrics["rounds"]) == ["round1", "round2"]
    assert trained.metrics["steps"] == 4 and trained.metrics["tokens_seen"] == sum(
        r["tokens_seen"] for r in trained.metrics["rounds"].values())
    assert trained.metrics["onpolicy"] == trained.metrics["rounds"]["round1"]["onpolicy"]
    assert [row["step"] for row in trained.result.train_curve] == [1, 2, 3, 4]
    assert [row["round"] for row in trained.result.train_curve] == [1, 1, 2, 2]
    assert trained.train_config["seed"] == cfg.seed  # the params it ran with, not round 2's derived seed
    by_round = [[r for r in records if r.get("round", 1) == k] for k in (1, 2)]
    assert len(by_round[0]) == len(by_round[1]) == 12 and {r["fingerprint"] for r in by_round[0]} == {"round-1-id"}
    assert {r["fingerprint"] for r in by_round[1]}.isdisjoint({"round-1-id"})

    drawn_from.clear()
    again, again_records = run(records)
    assert drawn_from == [] and again_records == records
    assert all(torch.equal(v, trained.model.state_dict()[k]) for k, v in again.model.state_dict().items())
    assert again.metrics == trained.metrics
