"""The generate stage: prompt format, template data, teacher provider against a local server."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fake_teacher import FakeTeacher
from pico.checks import check_story, failed_checks
from pico.config import GenerateConfig, TeacherConfig
from pico.errors import DataError, ParamsError
from pico.generate import assign_specs, generate_rows, template_row
from pico.prompt import build_prompt, parse_prompt
from pico.spec import FIELDS, TABOOS, TWISTS, VALUES, Spec, n_distinct_specs, sample_specs
from pico.stories import BROKEN_CHECK, PAIR_KINDS_HARD
from pico.teacher import TeacherClient, TeacherError, api_key_from_env

from conftest import REPO, config

SMALL = {"train": 6, "valid": 2, "test": 2}
SMALL_SFT = {**SMALL, "test_unseen": 2}


def small_cfg(**kw) -> GenerateConfig:
    return config("generate", **{"sft_splits": SMALL_SFT, "dpo_splits": SMALL, **kw})


# ----------------------------------------------------------------------------------------------- format
def test_value_lists_are_curated_and_large():
    for f in FIELDS:
        assert len(VALUES[f]) >= 30, f
        assert len(set(VALUES[f])) == len(VALUES[f]), f"duplicate value in {f}"


def test_prompt_round_trip_for_sampled_specs():
    for spec in sample_specs(200, 3):
        assert parse_prompt(build_prompt(spec)) == spec


_field = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1).map(str.strip).filter(bool)


@settings(max_examples=200, deadline=None)
@given(st.builds(Spec, *[_field] * 7))
def test_prompt_round_trip_for_any_field_text(spec):
    assert parse_prompt(build_prompt(spec)) == spec


def test_prompt_format_is_the_documented_one():
    spec = Spec("The Door That Wasn't There", "an old apartment building during a winter blackout", "Mina", "Kai",
                "a brass key", "never answer knocks after 2 a.m.", "the sound is coming from inside the walls")
    assert build_prompt(spec) == (
        "You are a creative writing assistant.\nWrite a short horror story that follows this story specification.\n\n"
        "Title: The Door That Wasn't There\nSetting: an old apartment building during a winter blackout\n"
        "Protagonist: Mina\nSupporting character: Kai\nImportant object: a brass key\n"
        "Taboo rule: never answer knocks after 2 a.m.\nTwist: the sound is coming from inside the walls\n\n"
        "Constraints:\n- 2 to 4 paragraphs.\n- Keep it suspenseful and eerie, not graphic.\n"
        "- End with an unsettling implication.\n\nStory:\n"
    )


def test_parse_prompt_names_what_is_missing():
    with pytest.raises(ValueError, match="'Twist:'"):
        parse_prompt(build_prompt(sample_specs(1, 0)[0]).replace("Twist:", "Turn:"))


# ----------------------------------------------------------------------------------------------- template data
def test_template_rows_are_deterministic_and_seed_dependent():
    a = generate_rows(small_cfg(pair_difficulty=0.5)).rows
    b = generate_rows(small_cfg(pair_difficulty=0.5)).rows
    c = generate_rows(small_cfg(pair_difficulty=0.5, seed=99)).rows
    assert a == b
    assert a != c


def test_no_spec_is_shared_across_splits_or_datasets():
    cfg = config("generate")
    parts = assign_specs(cfg)
    seen: dict[Spec, tuple] = {}
    for key, specs in parts.items():
        for spec in specs:
            assert spec not in seen, f"{spec} in {key} and {seen[spec]}"
            seen[spec] = key
    assert len(parts[("sft", "train")]) == cfg.sft_splits["train"]


def test_sft_responses_follow_their_spec():
    rows = generate_rows(small_cfg()).rows
    for row in rows[("sft", "train")]:
        spec = Spec.from_dict(row["spec"])
        assert row["prompt"] == build_prompt(spec)
        assert failed_checks(check_story(row["response"], spec)) == []


def test_every_hard_pair_breaks_exactly_the_constraint_it_claims():
    rng = random.Random(0)
    specs = sample_specs(400, 17)
    # every taboo and twist value at least once
    specs += [dataclasses.replace(specs[i], taboo=t) for i, t in enumerate(TABOOS)]
    specs += [dataclasses.replace(specs[i], twist=t) for i, t in enumerate(TWISTS)]
    kinds = set()
    for spec in specs:
        row = template_row("dpo", spec, rng, "hard")
        kinds.add(row["pair_kind"])
        assert failed_checks(check_story(row["chosen"], spec)) == []
        assert failed_checks(check_story(row["rejected"], spec)) == [BROKEN_CHECK[row["pair_kind"]]]
    assert kinds == set(PAIR_KINDS_HARD)


def test_easy_pairs_reject_a_wholesome_story():
    rows = generate_rows(small_cfg(pair_difficulty="easy")).rows[("dpo", "train")]
    for row in rows:
        assert row["pair_kind"] == "wholesome"
        failed = failed_checks(check_story(row["rejected"], Spec.from_dict(row["spec"])))
        assert "unsettling_ending" in failed and "twist_present" in failed


def test_mix_ratio_gives_both_kinds():
    cfg = config("generate", dpo_splits={"train": 200, "valid": 1, "test": 1}, sft_splits=SMALL_SFT, pair_difficulty=0.5)
    kinds = [r["pair_kind"] for r in generate_rows(cfg).rows[("dpo", "train")]]
    n_hard = sum(k != "wholesome" for k in kinds)
    assert 70 < n_hard < 130


def test_articles_and_pronouns_read_right():
    rows = generate_rows(config("generate", pair_difficulty=0.5, fresh_names=0.0)).rows  # curated pronouns below
    texts = [r.get("response") or r["chosen"] + "\n" + r["rejected"] for rs in rows.values() for r in rs]
    for text in texts:
        assert not re.search(r"\b(the|a|an) (a|an|the)\b", text, re.IGNORECASE), text
        assert ".." not in text.replace("...", "")
        assert not re.search(r", The [a-z]+ was gone", text), text  # "the landlord" mid-sentence stays lowercase
    from pico.spec import PROTAGONISTS

    for rs in rows.values():
        for r in rs:
            name = r["spec"]["protagonist"]
            story = r.get("response") or r["chosen"]
            wrong = "his" if PROTAGONISTS[name] == "she" else "her"
            assert not re.search(rf"\b{name} \w+ {wrong} own name\b", story)


def test_too_many_rows_for_the_value_lists_is_a_params_error():
    n = n_distinct_specs()
    with pytest.raises(ParamsError, match="generate.sft_splits"):
        assign_specs(config("generate", sft_splits={"train": n, "valid": 1, "test": 1, "test_unseen": 1}))


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5])
def test_test_unseen_specs_use_only_values_no_training_split_uses(share):
    parts = assign_specs(config("generate", heldout_share=share))
    unseen = parts[("sft", "test_unseen")]
    assert len(unseen) == config("generate").sft_splits["test_unseen"]
    for f in FIELDS:
        trained = {getattr(s, f) for key, specs in parts.items() if key != ("sft", "test_unseen") for s in specs}
        held = {getattr(s, f) for s in unseen}
        assert not trained & held, f"{f}: {trained & held} in both"
        assert len(held) <= -(-len(VALUES[f]) * share // 1)  # only the held-out share of the list
    rows = generate_rows(config("generate", heldout_share=share)).rows
    train_text = " ".join(r["response"] for r in rows[("sft", "train")]) + " ".join(
        r["chosen"] + r["rejected"] for r in rows[("dpo", "train")])
    for spec in unseen[:10]:
        assert spec.taboo not in train_text and spec.twist not in train_text


# ----------------------------------------------------------------------------------------------- teacher
@pytest.fixture
def teacher():
    servers = []

    def start(**kw):
        server = FakeTeacher(**kw)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.close()


def teacher_cfg(server: FakeTeacher, **kw) -> GenerateConfig:
    t = dataclasses.replace(config("generate").teacher, base_url=server.base_url, model="fake-1", concurrency=3,
                            timeout_s=4.0, max_retries=4, max_attempts=3, backoff_s=0.0, **kw)
    return small_cfg(provider="openai", teacher=t, pair_difficulty=0.5)


def test_teacher_rows_are_valid_and_a_rerun_is_free(teacher, tmp_path):
    server = teacher()
    cfg = teacher_cfg(server)
    client = TeacherClient(cfg.teacher, tmp_path / "cache", "sk-test-123", seed=cfg.seed)
    first = generate_rows(cfg, client)
    assert sum(len(r) for r in first.rows.values()) == sum(SMALL_SFT.values()) + sum(SMALL.values())
    n_requests = len(server.requests)
    again = generate_rows(cfg, TeacherClient(cfg.teacher, tmp_path / "cache", "sk-test-123", seed=cfg.seed))
    assert again.rows == first.rows
    assert len(server.requests) == n_requests  # everything came from the cache
    for row in first.rows[("dpo", "train")]:
        spec = Spec.from_dict(row["spec"])
        assert failed_checks(check_story(row["chosen"], spec)) == []


def test_teacher_faults_are_retried_and_counted(teacher, tmp_path):
    faults = ["429", "500", "malformed", "drop", "slow", None, "500", None]
    server = teacher(faults=faults, slow_s=5.0)  # longer than timeout_s: a real timeout, with slack for a loaded CI
    cfg = teacher_cfg(server)
    client = TeacherClient(cfg.teacher, tmp_path / "cache", "sk-test-123", seed=cfg.seed)
    out = generate_rows(cfg, client)
    assert sum(len(r) for r in out.rows.values()) == sum(SMALL_SFT.values()) + sum(SMALL.values())
    retried = {k: v for k, v in client.stats.items() if k.startswith("retried/")}
    assert retried["retried/http_429"] == 1 and retried["retried/http_500"] == 2
    assert retried["retried/malformed"] == 1 and retried["retried/connection"] == 1  # dropped
    assert retried["retried/timeout"] == 1  # slow: past timeout_s
    keys = [json.dumps(b, sort_keys=True) for b in server.requests]
    answered = len(keys) - sum(retried.values())
    cached = list((tmp_path / "cache").rglob("*.json"))
    assert len(cached) == answered  # one cache entry per answered request: nothing duplicated


def test_invalid_answers_are_regenerated_then_dropped(teacher, tmp_path):
    server = teacher(faults=["refuse", "one_paragraph"])
    cfg = teacher_cfg(server)
    out = generate_rows(cfg, TeacherClient(cfg.teacher, tmp_path / "c", "k", seed=cfg.seed))
    assert out.regenerated >= 2 and not out.dropped
    server2 = teacher(faults=["refuse"] * 3)
    cfg2 = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, base_url=server2.base_url, concurrency=1))
    out2 = generate_rows(cfg2, TeacherClient(cfg2.teacher, tmp_path / "c2", "k", seed=cfg.seed))
    assert sum(out2.dropped.values()) == 1
    assert sum(len(r) for r in out2.rows.values()) == sum(SMALL_SFT.values()) + sum(SMALL.values()) - 1


def test_teacher_gives_up_with_a_clear_error(teacher, tmp_path):
    server = teacher(faults=["500"] * 10)
    cfg = teacher_cfg(server)
    client = TeacherClient(dataclasses.replace(cfg.teacher, max_retries=2), tmp_path / "c", "sk-secret", seed=0)
    with pytest.raises(TeacherError, match="no usable answer after 3 tries") as e:
        client.complete([{"role": "user", "content": build_prompt(sample_specs(1, 0)[0])}])
    assert "sk-secret" not in str(e.value)


def test_rejected_key_is_reported_without_the_key(teacher, tmp_path):
    server = teacher(required_key="right-key")
    cfg = teacher_cfg(server)
    client = TeacherClient(cfg.teacher, tmp_path / "c", "sk-wrong-key", seed=0)
    with pytest.raises(TeacherError, match="refused the API key") as e:
        client.complete([{"role": "user", "content": build_prompt(sample_specs(1, 0)[0])}])
    assert "sk-wrong-key" not in str(e.value) and "OPENAI_API_KEY" in str(e.value)


def test_missing_key_and_malformed_cache(tmp_path):
    with pytest.raises(TeacherError, match="OPENAI_API_KEY"):
        api_key_from_env({}, config("generate").teacher)
    client = TeacherClient(config("generate").teacher, tmp_path, "k")
    messages = [{"role": "user", "content": "hi"}]
    path = client.cache_path(client.request_body(messages, 0))
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(DataError, match=re.escape(str(path))):
        client.complete(messages)


# ----------------------------------------------------------------------------------------------- the stage
def run_stage(tmp_path, params: dict, env: dict | None = None) -> subprocess.CompletedProcess:
    import yaml

    from pipeline import deep_update

    full = yaml.safe_load((REPO / "params.yaml").read_text())  # the repo's, some replaced
    full["generate"]["phrase_values"] = 0  # no TinyStories text here to cut phrase values from
    full = deep_update(full, params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(full))
    cmd = [sys.executable, str(REPO / "stages/generate.py"), "--params", str(tmp_path / "params.yaml"),
           "--tokenizer", str(tmp_path / "none.json"), "--train-text", str(tmp_path / "none.txt"),
           "--out-dir", str(tmp_path / "data"),
           "--cache-dir", str(tmp_path / "data/teacher_cache"), "--metrics", str(tmp_path / "metrics.json")]
    import os

    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=tmp_path)


def test_stage_writes_byte_identical_files_and_metrics(tmp_path):
    params = {"generate": {"sft_splits": SMALL_SFT, "dpo_splits": SMALL, "purpose": "prompt_engineering"}}
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    assert run_stage(a, params).returncode == 0
    assert run_stage(b, params).returncode == 0
    for rel in ["sft/train.jsonl", "sft/test.jsonl", "dpo/train.jsonl", "dpo/valid.jsonl", "dataset.json"]:
        assert (a / "data" / rel).read_bytes() == (b / "data" / rel).read_bytes(), rel
    meta = json.loads((a / "data/dataset.json").read_text())
    assert meta["purpose"] == "prompt_engineering" and meta["rows"]["dpo/train"] == 6
    metrics = json.loads((a / "metrics.json").read_text())
    assert set(metrics["sft"]["train"]) == {"n_rows", "prompt_chars", "answer_chars"}
    assert set(metrics["sft"]["train"]["prompt_chars"]) == {"min", "p50", "p90", "max", "mean"}


def test_stage_openai_without_key_fails_before_writing(tmp_path):
    params = {"generate": {"provider": "openai", "sft_splits": SMALL_SFT, "dpo_splits": SMALL,
                           "teacher": {"api_key_env": "PICO_TEST_NO_SUCH_KEY"}}}
    proc = run_stage(tmp_path, params)
    assert proc.returncode == 2
    assert "PICO_TEST_NO_SUCH_KEY" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_stage_with_teacher_never_writes_the_key(teacher, tmp_path):
    server = teacher()
    secret = "sk-live-DO-NOT-LEAK-0123456789"
    params = {"generate": {"provider": "openai", "sft_splits": SMALL_SFT, "dpo_splits": SMALL,
                           "teacher": {"base_url": server.base_url, "api_key_env": "PICO_TEST_KEY",
                                       "backoff_s": 0.0}}}
    proc = run_stage(tmp_path, params, env={"PICO_TEST_KEY": secret})
    assert proc.returncode == 0, proc.stderr
    assert all(h == f"Bearer {secret}" for h in server.headers_seen)
    assert secret not in proc.stdout + proc.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("key,kind", [("sk-live-abc\ndef-123", "a line break"), ("sk-live-abc-é-123", "a non-ASCII")])
def test_stage_with_a_key_that_cannot_be_sent_fails_in_one_line_without_it(tmp_path, key, kind):
    params = {"generate": {"provider": "openai", "sft_splits": SMALL_SFT, "dpo_splits": SMALL,
                           "teacher": {"api_key_env": "PICO_TEST_BAD_KEY"}}}
    proc = run_stage(tmp_path, params, env={"PICO_TEST_BAD_KEY": key})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: the API key in PICO_TEST_BAD_KEY") and kind in proc.stderr
    assert "sk-live" not in proc.stderr and "123" not in proc.stderr
    assert not (tmp_path / "data").exists()


def test_dense_spec_request_draws_distinct_specs_from_the_given_lists():
    from pico.spec import FIELDS, sample_specs

    values = {f: [f"{f}-a", f"{f}-b"] for f in FIELDS}  # 128 specs in all; asking for 100 takes the dense path
    specs = sample_specs(100, 0, values)
    assert len(set(specs)) == 100 and all(getattr(s, f) in values[f] for s in specs for f in FIELDS)


def _phrases(sample_stories):
    from pico.spec import phrase_values, split_values

    cfg = small_cfg()
    return phrase_values("\n".join(sample_stories), split_values(cfg.heldout_share, cfg.seed)[1], 500)


def test_phrase_values_are_cut_from_the_text_and_never_held_out(sample_stories):
    from pico.spec import PHRASE_FIELDS, split_values

    phrases = _phrases(sample_stories)
    text = "\n".join(sample_stories)
    heldout = split_values(small_cfg().heldout_share, small_cfg().seed)[1]
    for f in PHRASE_FIELDS:
        assert len(phrases[f]) >= 20, f
        assert not set(phrases[f]) & set(heldout[f])
    assert all(v.removeprefix("never ") in text for v in phrases["taboo"])
    assert all(v[0] in "ai" or v.startswith(("a ", "an ")) for v in phrases["object"])
    assert phrases == _phrases(sample_stories)  # deterministic


def test_phrases_widen_train_and_valid_only_and_every_row_passes_its_checks(sample_stories):
    from pico.checks import check_story, failed_checks
    from pico.spec import Spec, is_curated

    phrases = _phrases(sample_stories)
    plain, widened = generate_rows(small_cfg()), generate_rows(small_cfg(), phrases=phrases)
    for key in [("sft", "test"), ("sft", "test_unseen"), ("dpo", "test")]:
        assert widened.rows[key] == plain.rows[key], key  # the same test specs and stories with or without
    train = widened.rows[("sft", "train")] + widened.rows[("dpo", "train")]
    assert any(not is_curated(Spec.from_dict(r["spec"])) for r in train)
    for row in widened.rows[("sft", "train")]:
        assert not failed_checks(check_story(row["response"], Spec.from_dict(row["spec"])))
    tests = {json.dumps(r["spec"], sort_keys=True) for key in [("sft", "test"), ("sft", "test_unseen"), ("dpo", "test")]
             for r in widened.rows[key]}
    assert not tests & {json.dumps(r["spec"], sort_keys=True) for r in train}
    dropped = sum(widened.dropped.values())
    assert dropped == sum(small_cfg().sft_splits.values()) + sum(small_cfg().dpo_splits.values()) - sum(
        len(rows) for rows in widened.rows.values())


def test_phrase_datasets_dpo_widens_only_the_dpo_specs(sample_stories):
    from pico.spec import Spec, is_curated

    phrases = _phrases(sample_stories)
    curated = generate_rows(small_cfg())
    dpo_only = generate_rows(small_cfg(phrase_datasets=["dpo"]), phrases=phrases)
    for key, rows in dpo_only.rows.items():
        if key[0] == "sft" or key == ("dpo", "test"):  # SFT never sees a phrase value; the tests stay
            assert rows == curated.rows[key], key
    widened = dpo_only.rows[("dpo", "train")] + dpo_only.rows[("dpo", "valid")]
    assert any(not is_curated(Spec.from_dict(r["spec"])) for r in widened)


# ----------------------------------------------------------------------------------------------- made-up names
def test_composed_names_are_new_words_and_never_curated():
    from wordfreq import zipf_frequency

    from pico.spec import CURATED_NAME_WORDS, compose_name

    rng = random.Random(0)
    names = [compose_name(rng) for _ in range(300)]
    assert len(set(names)) > 250  # varied: a model cannot memorise them
    assert not set(names) & CURATED_NAME_WORDS  # so never a held-out name either
    assert all(n[0].isupper() and n.isalpha() and zipf_frequency(n.lower(), "en") == 0 for n in names)
    rng = random.Random(0)
    assert [compose_name(rng) for _ in range(300)] == names  # seeded
    assert compose_name(random.Random(0), frozenset({names[0]})) != names[0]


def test_fresh_names_rename_protagonist_and_supporting_everywhere_and_stories_still_pass():
    from pico.generate import with_fresh_names
    from pico.spec import CURATED_NAME_WORDS

    spec = Spec("The Quiet Floor", "a museum after closing time", "Mina", "Captain Rooke", "a brass key",
                "never whistle after sunset", "the snow is falling upward")
    row = template_row("dpo", spec, random.Random(1), "hard")
    out = with_fresh_names(row, random.Random(2))
    new = Spec.from_dict(out["spec"])
    assert new.protagonist not in CURATED_NAME_WORDS and new.supporting.startswith("Captain ")
    assert new.supporting != "Captain Rooke"
    for key in ("prompt", "chosen", "rejected"):
        assert "Mina" not in out[key] and "Rooke" not in out[key], key
    assert out["chosen"] == row["chosen"].replace("Mina", new.protagonist).replace(
        "Rooke", new.supporting.split()[-1])
    assert " she " in out["chosen"] or " her " in out["chosen"]  # pronouns are the story's, untouched
    assert parse_prompt(out["prompt"]) == new
    assert not failed_checks(check_story(out["chosen"], new))
    role = dataclasses.replace(spec, supporting="the landlord")
    kept = with_fresh_names(template_row("sft", role, random.Random(1), "easy"), random.Random(2))
    assert kept["spec"]["supporting"] == "the landlord" and "the landlord" in kept["prompt"]


def test_fresh_names_touch_train_and_valid_only_and_zero_changes_nothing():
    from pico.spec import PROTAGONISTS

    plain = generate_rows(small_cfg(fresh_names=0.0))
    assert all(r["spec"]["protagonist"] in PROTAGONISTS for rows in plain.rows.values() for r in rows)
    fresh = generate_rows(small_cfg(fresh_names=1.0))
    half = generate_rows(small_cfg(fresh_names=0.5))
    for key, rows in plain.rows.items():
        if key[1] in ("test", "test_unseen"):
            assert fresh.rows[key] == rows and half.rows[key] == rows, key
            continue
        names = {r["spec"]["protagonist"] for r in rows}
        assert not names & {r["spec"]["protagonist"] for r in fresh.rows[key]}, key
        for old, new in zip(rows, fresh.rows[key]):  # the same story, other names
            assert {k: v for k, v in old["spec"].items() if k not in ("protagonist", "supporting")} == \
                   {k: v for k, v in new["spec"].items() if k not in ("protagonist", "supporting")}
    train = plain.rows[("sft", "train")] + plain.rows[("dpo", "train")]
    renamed = sum(a != b for a, b in zip(train, half.rows[("sft", "train")] + half.rows[("dpo", "train")]))
    assert 0 < renamed < len(train)
    assert generate_rows(small_cfg(fresh_names=0.5)).rows == half.rows  # deterministic


# ----------------------------------------------------------------------------------------------- made-up words
def test_composed_words_are_new_lower_case_words_never_in_a_curated_value():
    from wordfreq import zipf_frequency

    from pico.spec import CURATED_VALUE_WORDS, compose_word

    rng = random.Random(0)
    words = [compose_word(rng) for _ in range(300)]
    assert len(set(words)) > 250
    assert not set(words) & CURATED_VALUE_WORDS  # so never a word of a held-out value
    assert all(w.islower() and w.isalpha() and len(w) >= 4 and zipf_frequency(w, "en") == 0 for w in words)
    rng = random.Random(0)
    assert [compose_word(rng) for _ in range(300)] == words
    assert compose_word(random.Random(0), frozenset({words[0]})) != words[0]


def test_fresh_value_swaps_the_last_word_only_where_it_still_reads_as_english():
    from pico.generate import fresh_value

    assert fresh_value("a brass key", "drovit") == "a brass drovit"
    assert fresh_value("a map drawn in pencil", "drovit") == "a map drawn in drovit"
    assert fresh_value("never whistle after sunset", "drovit") == "never whistle after drovit"
    assert fresh_value("an iron bell", "drovit") == "an iron drovit"
    assert fresh_value("an hourglass", "drovit") is None  # "an drovit"
    assert fresh_value("the house remembers everyone who slept in it", "drovit") is None  # function word
    assert fresh_value("never answer knocks after 2 a.m.", "drovit") is None


@pytest.mark.parametrize("dataset,kind", [("sft", "easy"), ("dpo", "easy"), ("dpo", "hard")])
def test_fresh_words_end_object_taboo_and_twist_everywhere_and_stories_still_pass(dataset, kind):
    from pico.generate import WORD_FIELDS, with_fresh_words
    from pico.spec import CURATED_VALUE_WORDS

    spec = Spec("The Quiet Floor", "a museum after closing time", "Mina", "Captain Rooke", "a brass key",
                "never whistle after sunset", "the snow is falling upward")
    row = template_row(dataset, spec, random.Random(1), kind)
    out = with_fresh_words(row, random.Random(2), 1.0)
    new = Spec.from_dict(out["spec"])
    for f in WORD_FIELDS:
        old_value, value = getattr(spec, f), getattr(new, f)
        assert value.rsplit(" ", 1)[0] == old_value.rsplit(" ", 1)[0], f  # only the last word changes
        assert value.rsplit(" ", 1)[1] not in CURATED_VALUE_WORDS, f
    assert {f: getattr(new, f) for f in ("title", "setting", "protagonist", "supporting")} == \
           {f: getattr(spec, f) for f in ("title", "setting", "protagonist", "supporting")}
    texts = [k for k in ("prompt", "response", "chosen", "rejected") if k in row]
    for key in texts:
        for word in ("key", "sunset", "upward"):
            assert not re.search(rf"\b{word}\b", out[key]), (key, word)
    story = out.get("chosen", out.get("response"))
    assert "the brass " + new.object.split()[-1] in story  # the story's later "the ..." quote follows too
    assert parse_prompt(out["prompt"]) == new
    assert not failed_checks(check_story(story, new))
    assert with_fresh_words(row, random.Random(2), 0.0) == row


def test_fresh_words_leave_a_value_whose_last_word_the_story_also_uses_alone():
    from pico.generate import with_fresh_words

    spec = Spec("The Quiet Floor", "a museum after closing time", "Mina", "Captain Rooke", "a brass key",
                "never whistle after sunset", "the snow is falling upward")
    row = template_row("sft", spec, random.Random(1), "easy")
    row = {**row, "response": row["response"] + " She never found the lock that the key was made for."}
    out = with_fresh_words(row, random.Random(2), 1.0)
    assert out["spec"]["object"] == "a brass key" and "the key was made for" in out["response"]
    assert out["spec"]["taboo"] != spec.taboo and out["spec"]["twist"] != spec.twist  # the others still change


def test_fresh_words_touch_train_and_valid_only_and_zero_changes_nothing():
    plain = generate_rows(small_cfg(fresh_words=0.0, an_values=0.0, twist_openers=0.0))  # no value rewritten
    assert all(r["spec"][f] in VALUES[f] for rows in plain.rows.values() for r in rows for f in ("object", "taboo",
                                                                                                  "twist"))
    fresh = generate_rows(small_cfg(fresh_words=0.5, an_values=0.0, twist_openers=0.0))
    changed = 0
    for key, rows in plain.rows.items():
        if key[1] in ("test", "test_unseen"):
            assert fresh.rows[key] == rows, key
            continue
        for old, new in zip(rows, fresh.rows[key]):
            diff = {f for f in FIELDS if old["spec"][f] != new["spec"][f]}
            assert diff <= {"object", "taboo", "twist"}, diff
            changed += bool(diff)
    assert 0 < changed < sum(len(rows) for key, rows in plain.rows.items() if key[1] in ("train", "valid"))
    assert generate_rows(small_cfg(fresh_words=0.5, an_values=0.0, twist_openers=0.0)).rows == fresh.rows


# ----------------------------------------------------------------------------------------------- "an" values
@pytest.mark.parametrize("dataset,kind", [("sft", "easy"), ("dpo", "easy"), ("dpo", "hard")])
def test_an_values_give_setting_and_object_a_vowel_adjective_everywhere_and_stories_still_pass(dataset, kind):
    from pico.checks import wrong_articles
    from pico.generate import VOWEL_ADJECTIVES, with_an_values

    spec = Spec("The Quiet Floor", "a museum after closing time", "Mina", "Captain Rooke", "a brass key",
                "never whistle after sunset", "the snow is falling upward")
    row = template_row(dataset, spec, random.Random(1), kind)
    out = with_an_values(row, random.Random(2), 1.0)
    new = Spec.from_dict(out["spec"])
    for f, rest in (("setting", "museum after closing time"), ("object", "brass key")):
        article, adjective, tail = getattr(new, f).split(" ", 2)
        assert article == "an" and adjective in VOWEL_ADJECTIVES and tail == rest, f
    assert (new.taboo, new.twist, new.protagonist) == (spec.taboo, spec.twist, spec.protagonist)
    for key in ("prompt", "response", "chosen", "rejected"):
        if key in row:
            assert "a brass key" not in out[key] and "a museum" not in out[key], key
            assert not wrong_articles(out[key]), key
    story = out.get("chosen", out.get("response"))
    assert new.object in story or new.object.replace("an ", "the ", 1) in story
    assert parse_prompt(out["prompt"]) == new
    assert not failed_checks(check_story(story, new))
    assert with_an_values(row, random.Random(2), 0.0) == row


def test_an_values_leave_a_value_that_takes_an_already():
    from pico.generate import with_an_values

    spec = Spec("The Quiet Floor", "an abandoned pier", "Mina", "Captain Rooke", "an iron bell",
                "never whistle after sunset", "the snow is falling upward")
    row = template_row("sft", spec, random.Random(1), "easy")
    assert with_an_values(row, random.Random(2), 1.0) == row


def test_an_values_touch_train_and_valid_only_and_even_out_the_articles():
    plain = generate_rows(small_cfg(an_values=0.0))
    more = generate_rows(small_cfg(an_values=0.5))
    for key, rows in plain.rows.items():
        if key[1] in ("test", "test_unseen"):
            assert more.rows[key] == rows, key

    def an_share(gen):
        values = [r["spec"][f] for (d, s), rows in gen.rows.items() if s in ("train", "valid")
                  for r in rows for f in ("setting", "object")]
        return sum(v.startswith("an ") for v in values) / len(values)

    assert an_share(plain) < 0.25 < 0.4 < an_share(more)
    assert generate_rows(small_cfg(an_values=0.5)).rows == more.rows  # deterministic


# ----------------------------------------------------------------------------------------------- twist openers
@pytest.mark.parametrize("dataset,kind", [("sft", "easy"), ("dpo", "easy"), ("dpo", "hard")])
def test_twist_openers_open_the_twist_everywhere_and_stories_still_pass(dataset, kind):
    from pico.generate import TWIST_OPENERS, with_twist_openers

    spec = Spec("The Quiet Floor", "a museum after closing time", "Mina", "Captain Rooke", "a brass key",
                "never whistle after sunset", "the snow is falling upward")
    for seed in range(4):
        row = template_row(dataset, spec, random.Random(seed), kind)
        out = with_twist_openers(row, random.Random(seed), 1.0)
        new = Spec.from_dict(out["spec"])
        opener = new.twist[: -len(spec.twist) - 1]
        assert opener in TWIST_OPENERS and new.twist.endswith(" " + spec.twist)
        assert {f: getattr(new, f) for f in FIELDS if f != "twist"} == {f: getattr(spec, f) for f in FIELDS
                                                                         if f != "twist"}
        for key in ("prompt", "response", "chosen", "rejected"):
            if key in row:  # every quote of the twist is opened (a rejected story may have none)
                assert row[key].count(spec.twist) == out[key].count(new.twist), key
        story = out.get("chosen", out.get("response"))
        assert new.twist in story
        assert parse_prompt(out["prompt"]) == new
        assert not failed_checks(check_story(story, new))
        assert with_twist_openers(row, random.Random(seed), 0.0) == row


def test_twist_openers_touch_train_and_valid_only_and_vary_the_first_word():
    plain = generate_rows(small_cfg(twist_openers=0.0))
    opened = generate_rows(small_cfg(twist_openers=0.5))
    for key, rows in plain.rows.items():
        if key[1] in ("test", "test_unseen"):
            assert opened.rows[key] == rows, key

    def the_share(gen):
        twists = [r["spec"]["twist"] for (d, s), rows in gen.rows.items() if s in ("train", "valid") for r in rows]
        return sum(t.startswith("the ") for t in twists) / len(twists)

    assert the_share(plain) > 0.9 and 0.3 < the_share(opened) < 0.7
    assert generate_rows(small_cfg(twist_openers=0.5)).rows == opened.rows  # deterministic


# ----------------------------------------------------------------------------------------------- stutter pairs
def test_stutter_rejected_is_the_chosen_story_with_a_value_tail_said_twice_and_fails_only_no_repetition():
    from pico.generate import PAIR_KIND_STUTTER, with_stutter_rejected
    from pico.pairs import stuttered

    assert stuttered("She said: never whistle after sunset. Then", "never whistle after sunset", 2) == \
        "She said: never whistle after sunset after sunset. Then"
    assert stuttered("No rule here.", "never whistle after sunset", 2) is None
    spec = Spec("The Quiet Floor", "a museum after closing time", "Mina", "Captain Rooke", "a brass key",
                "never whistle after sunset", "the snow is falling upward")
    for seed in range(6):
        row = template_row("dpo", spec, random.Random(seed), "easy")
        out = with_stutter_rejected(row, random.Random(seed))
        assert out["pair_kind"] == PAIR_KIND_STUTTER and out["chosen"] == row["chosen"]
        assert failed_checks(check_story(out["rejected"], spec)) == ["no_repetition"]
        extra = len(out["rejected"]) - len(out["chosen"])
        assert 0 < extra < 40 and out["rejected"].replace(" ", "") != out["chosen"].replace(" ", "")


def test_a_value_broken_fails_exactly_its_own_check():
    from pico.pairs import broken_word, cut_short, value_cut_story

    assert cut_short("It knew: the storm outside is only inside the house. Then", "the storm outside is only inside "
                     "the house", 2) == "It knew: the storm outside is only inside. Then"
    assert cut_short("Never whistle after sunset, she said.", "never whistle after sunset", 1) == \
        "Never whistle after, she said."  # the quote as the story capitalised it
    assert cut_short("never go out", "never go out", 2) is None  # one word left is not a copy of the value
    assert cut_short("No rule here.", "never whistle after sunset", 1) is None
    spec = Spec("The Quiet Floor", "a museum after closing time", "Mina", "Captain Rooke", "a brass key",
                "never whistle after sunset", "the snow is falling upward")
    kinds = set()
    for seed in range(12):
        row = template_row("dpo", spec, random.Random(seed), "easy")
        cut = value_cut_story(row["chosen"], spec, random.Random(seed))
        assert cut is not None and cut != row["chosen"]
        kinds.update(failed := failed_checks(check_story(cut, spec)))
        assert failed in (["taboo_present"], ["twist_present"], ["object_used"], ["fluent"], ["no_repetition"])
    assert {"fluent", "no_repetition"} <= kinds and kinds & {"taboo_present", "twist_present", "object_used"}
    assert broken_word("It was a red umbrella, wet.", "a red umbrella", random.Random(0)) in (
        f"It was a red {'umbrella'[:k]}, wet." for k in range(3, 7))
    assert broken_word("Hi.", "a red umbrella", random.Random(0)) is None
    assert broken_word("A cat sat.", "a cat", random.Random(0)) is None  # no word of 5 letters to break


def test_an_article_swapped_fails_only_fluent():
    from pico.pairs import article_swapped, article_swapped_story

    assert article_swapped("Kai found an iron bell. The iron bell rang.", "an iron bell") == \
        "Kai found a iron bell. The iron bell rang."
    assert article_swapped("A brass key lay there.", "a brass key") == "An brass key lay there."
    assert article_swapped("The brass key lay there.", "a brass key") is None  # never written after an article
    assert article_swapped("Never whistle.", "never whistle") is None  # a value without an article
    spec = Spec("The Quiet Floor", "a museum after closing time", "Mina", "Captain Rooke", "an iron bell",
                "never whistle after sunset", "the snow is falling upward")
    swapped = 0
    for seed in range(12):
        row = template_row("dpo", spec, random.Random(seed), "easy")
        out = article_swapped_story(row["chosen"], spec, random.Random(seed))
        if out is not None:
            swapped += 1
            assert failed_checks(check_story(out, spec)) == ["fluent"] and abs(len(out) - len(row["chosen"])) == 1
    assert swapped > 6


def test_stutter_pairs_touch_train_and_valid_dpo_only_and_zero_changes_nothing():
    from pico.generate import PAIR_KIND_STUTTER

    plain = generate_rows(small_cfg(stutter_pairs=0.0))
    assert not any(r.get("pair_kind") == PAIR_KIND_STUTTER for rows in plain.rows.values() for r in rows)
    half = generate_rows(small_cfg(stutter_pairs=0.5))
    for key, rows in plain.rows.items():
        if key[0] == "sft" or key[1] == "test":
            assert half.rows[key] == rows, key
    train = half.rows[("dpo", "train")]
    kinds = [r["pair_kind"] for r in train]
    assert 0 < kinds.count(PAIR_KIND_STUTTER) < len(kinds)
    for old, new in zip(plain.rows[("dpo", "train")], train):
        assert new["chosen"] == old["chosen"] and (new == old or new["pair_kind"] == PAIR_KIND_STUTTER)
    assert generate_rows(small_cfg(stutter_pairs=0.5)).rows == half.rows
