import math

import pytest
import torch

from pico.evaluate import StyleJudge, check_generation, summarize_generations
from pico.spec import sample_specs
from pico.stories import horror_story, wholesome_story
import random


def test_summary_counts_pass_rates_and_failures():
    specs = sample_specs(4, 0)
    rng = random.Random(0)
    texts = [horror_story(specs[0], rng), horror_story(specs[1], rng, break_rule="twist_missing"),
             wholesome_story(specs[2], rng), ""]
    records = [check_generation(t, s) for t, s in zip(texts, specs)]
    s = summarize_generations(records)
    assert s["n"] == 4 and s["pass_all"] == 0.25
    assert s["pass_twist_present"] == 0.25
    assert s["pass_fluent"] == 0.75  # only the empty generation is not story prose
    assert s["most_frequent_failures"][0] == {"check": "twist_present", "count": 3}
    assert 0 < s["pass_mean"] < 1
    assert not math.isnan(s["distinct_1"])


def test_style_judge_learns_the_difference_on_toy_data():
    specs = sample_specs(80, 5)
    rng = random.Random(1)
    chosen = [horror_story(s, rng) for s in specs]
    rejected = [wholesome_story(s, rng) for s in specs]
    judge = StyleJudge().fit(chosen[:60], rejected[:60])
    assert judge.accuracy(chosen[60:], rejected[60:]) >= 0.95
    horror, nice = judge.scores(chosen[60:]), judge.scores(rejected[60:])
    assert min(horror) > 0.5 > max(nice)
    assert judge.scores([]) == []


def test_pass_rates_come_with_wilson_intervals():
    specs = sample_specs(10, 3)
    rng = random.Random(0)
    records = [check_generation(horror_story(s, rng) if i < 7 else "", s) for i, s in enumerate(specs)]
    s = summarize_generations(records)
    assert s["pass_all"] == 0.7
    from pico.stats import wilson

    assert (s["pass_all_lo"], s["pass_all_hi"]) == pytest.approx(wilson(7, 10))
    assert s["pass_all_lo"] < 0.7 < s["pass_all_hi"]
    assert "pass_fluent_lo" in s and "pass_fluent_hi" in s


def test_preference_accuracy_counts_ties_half_and_normalizes_by_length():
    from pico.evaluate import preference_accuracy

    logps = torch.tensor([[-10.0, -12.0], [-20.0, -10.0], [-5.0, -5.0]])
    n_tokens = torch.tensor([[10.0, 6.0], [40.0, 10.0], [5.0, 5.0]])
    m = preference_accuracy(logps, n_tokens)
    assert m["pref_acc_logp"] == pytest.approx((1 + 0 + 0.5) / 3)
    # per token: -1 vs -2 (chosen), -0.5 vs -1 (chosen), -1 vs -1 (tie)
    assert m["pref_acc_logp_norm"] == pytest.approx((1 + 1 + 0.5) / 3)


def test_the_same_model_as_its_reference_scores_one_half_not_zero():
    """sft judged against itself: every margin is 0, which counts as a coin flip, never a constructed 0."""
    from pico.evaluate import implicit_reward_metrics

    logps = torch.randn(8, 2) * 10
    m = implicit_reward_metrics(logps, logps, torch.full((8, 2), 5.0), {"beta": 0.1, "loss_type": "sigmoid"})
    assert m["dpo_test_pref_acc"] == 0.5 and m["dpo_test_reward_margin"] == 0.0


def test_implicit_reward_uses_the_recorded_beta_and_ipo_averages():
    from pico.evaluate import implicit_reward_metrics

    ref = torch.tensor([[-10.0, -10.0], [-10.0, -10.0]])
    policy = torch.tensor([[-9.0, -12.0], [-11.0, -10.5]])  # h: 3, -0.5
    n = torch.tensor([[1.0, 1.0], [2.0, 4.0]])
    m = implicit_reward_metrics(policy, ref, n, {"beta": 0.5, "loss_type": "sigmoid"})
    assert m["dpo_test_pref_acc"] == 0.5 and m["dpo_test_reward_margin"] == pytest.approx(0.5 * (3 - 0.5) / 2)
    ipo = implicit_reward_metrics(policy, ref, n, {"beta": 0.5, "loss_type": "ipo"})
    # per token: pair 2 h = (-11/2 + 10/2) - (-10.5/4 + 10/4) = -0.5 + 0.125
    assert ipo["dpo_test_reward_margin"] == pytest.approx(0.5 * (3 + (-0.5 + 0.125)) / 2)


def test_paired_comparison_matches_specs_by_index():
    from pico.evaluate import paired_comparison

    a = [{"index": i, "passed_all": i < 2} for i in range(10)]
    b = [{"index": i, "passed_all": i < 9} for i in reversed(range(10))]  # order must not matter
    d = paired_comparison(a, b)
    assert d["n"] == 10 and d["rate_a"] == 0.2 and d["rate_b"] == 0.9
    assert d["b_only"] == 7 and d["a_only"] == 0 and d["p_value"] == pytest.approx(2 / 2**7, rel=1e-3)
