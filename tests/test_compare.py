import pytest

from pico.compare import compare_metrics, direction, flatten, summarize, to_json, to_markdown


@pytest.mark.parametrize("metric,want", [
    ("sft_test_loss", -1), ("val_bpb", -1), ("repeated_4gram_rate", -1), ("val_rewards/rejected", -1),
    ("dpo_test_pref_acc", 1), ("pass_all", 1), ("pass_no_special_tokens", 1), ("style_score", 1),
    ("distinct_2", 1), ("dpo_test_reward_margin", 1),
    ("n_words", 0), ("speed.tokens_per_s", 0), ("steps", 0), ("unigram_val_loss", 0), ("val_logps/chosen", 0),
])
def test_directions(metric, want):
    assert direction(metric) == want


def test_arithmetic_and_verdicts():
    a = {"val_loss": 2.0, "pass_all": 0.5, "n_words": 100, "only_a": 1.0, "pref": 0.0}
    b = {"val_loss": 1.5, "pass_all": 0.25, "n_words": 120, "only_b": 3.0, "pref": 0.0}
    rows = {r.metric: r for r in compare_metrics(a, b)}
    assert rows["val_loss"].delta == -0.5 and rows["val_loss"].rel_delta == pytest.approx(-0.25)
    assert rows["val_loss"].verdict == "better"
    assert rows["pass_all"].verdict == "worse" and rows["pass_all"].rel_delta == pytest.approx(-0.5)
    assert rows["n_words"].verdict == "n/a"
    assert rows["only_a"].verdict == "n/a" and rows["only_b"].a is None
    assert rows["pref"].verdict == "same" and rows["pref"].rel_delta is None
    s = summarize(list(rows.values()))
    assert s["improvements"] == ["val_loss"] and s["regressions"] == ["pass_all"]
    assert s["average_improvement"] == pytest.approx((0.25 - 0.5) / 2)


def test_flatten_and_renderers():
    flat = flatten({"a": {"b": 1, "c": {"d": 2.5}}, "e": "text", "f": True})
    assert flat == {"a.b": 1.0, "a.c.d": 2.5}
    rows = compare_metrics({"val_loss": 2.0}, {"val_loss": 1.0})
    md = to_markdown({"x": rows}, "base", "dpo")
    assert "| val_loss | 2 | 1 | -1 | -50.0% | ▲ better |" in md
    assert "Average improvement over 1 comparable metrics: +50.0%" in md
    js = to_json({"x": rows}, "base", "dpo")
    assert js["sections"]["x"]["improvements"] == ["val_loss"]


def test_across_seeds_reports_means_spreads_and_welch():
    from pico.compare import across_seeds, seeds_markdown

    a = [{"unseen_pass_all": v, "n_words": 100.0, "sft_test_loss": 1.0 + v} for v in (0.30, 0.34, 0.32)]
    b = [{"unseen_pass_all": v, "n_words": 120.0, "sft_test_loss": 1.0 + v} for v in (0.52, 0.55, 0.50)]
    rows = {r["metric"]: r for r in across_seeds(a, b)}
    assert "n_words" not in rows  # neither better nor worse: not tested
    r = rows["unseen_pass_all"]
    assert r["n_a"] == 3 and r["mean_a"] == pytest.approx(0.32) and r["std_a"] == pytest.approx(0.02)
    assert r["diff"] == pytest.approx(0.2033, abs=1e-3) and r["significant"] and r["p_value"] < 0.01
    md = seeds_markdown(list(rows.values()), "sft", "dpo")
    assert "| unseen_pass_all | 0.32 ± 0.02 (n=3) | 0.5233 ± 0.02517 (n=3) |" in md
    assert md.splitlines()[4].endswith("| better |") and "| worse |" in md  # the loss went up: worse


def test_significance_is_paired_per_split_and_check():
    from pico.compare import significance

    def rec(split, i, ok):
        return {"split": split, "index": i, "passed_all": ok, "checks": {"fluent": True}}

    a = [rec("test_unseen", i, False) for i in range(6)]
    b = [rec("test_unseen", i, True) for i in range(6)] + [rec("test", 0, True)]
    rows = significance(a, b, ["fluent"])
    assert [(r["split"], r["metric"]) for r in rows] == [("test_unseen", "pass_all"), ("test_unseen", "fluent")]
    assert rows[0]["diff"] == 1.0 and rows[0]["p_value"] == pytest.approx(2 / 64, rel=1e-3)
    assert rows[1]["diff"] == 0.0 and not rows[1]["significant"]
