import math

import pytest
import torch

from pico.evaluate import StyleJudge, check_generation, preference_metrics, summarize_generations
from pico.spec import sample_specs
from pico.stories import horror_story, wholesome_story
import random


def test_preference_metrics_by_hand():
    ref = torch.tensor([[-10.0, -10.0], [-10.0, -10.0]])
    policy = torch.tensor([[-9.0, -12.0], [-11.0, -10.5]])  # margins (h): 3, -0.5
    m = preference_metrics(policy, ref, beta=0.5)
    assert m["pref_acc"] == 0.5
    assert m["reward_margin"] == pytest.approx(0.5 * (3 - 0.5) / 2)


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
