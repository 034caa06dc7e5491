"""The checker's fixture set (pico/checker_fixtures.jsonl, built by tests/fixtures/checker/make_fixtures.py):
every adversarial story fails, at least 95% of the reference stories pass, directly and through `pico check`."""

import importlib.util
import json
from collections import Counter

import pytest
from conftest import REPO

from pico.checker_fixtures import (
    FIXTURES_PATH,
    checker_accuracy,
    is_reference,
    load_checker_fixtures,
)
from pico.checks import CHECKS, check_story, failed_checks
from pico.cli import main
from pico.spec import VALUES, Spec

MIN_REFERENCE_PASS_RATE = 0.95
REQUIRED_ADVERSARIAL_KINDS = {"field_dump", "word_salad", "shuffled_sentences", "wrong_spec", "taboo_deleted",
                              "repetition_loop", "spec_restated"}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return load_checker_fixtures()


@pytest.fixture(scope="module")
def results(rows) -> list[dict[str, bool]]:
    return [check_story(r["story"], Spec.from_dict(r["spec"])) for r in rows]


def make_fixtures_module():
    spec = importlib.util.spec_from_file_location("make_fixtures", REPO / "tests/fixtures/checker/make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_fixtures_are_what_the_script_builds():
    m = make_fixtures_module()
    assert FIXTURES_PATH.read_text(encoding="utf-8") == m.render(m.build_rows()), \
        "pico/checker_fixtures.jsonl is stale: run python tests/fixtures/checker/make_fixtures.py"


def test_the_fixture_set_is_large_and_varied(rows):
    kinds = Counter(r["kind"] for r in rows)
    adversarial = {k: n for k, n in kinds.items() if not k.startswith("reference")}
    assert sum(adversarial.values()) >= 40 and len(adversarial) >= 7
    assert REQUIRED_ADVERSARIAL_KINDS <= set(adversarial)
    assert kinds["reference_template"] >= 40
    paraphrases = [r for r in rows if r["kind"] == "reference_paraphrase"]
    assert len(paraphrases) >= 20 and sum(r["split"] == "held_out" for r in paraphrases) >= 10
    unseen = [r for r in rows if is_reference(r) and not any(r["spec"][f] in VALUES[f] for f in VALUES)]
    assert len(unseen) >= 10  # specs with no value from the value lists, as held-out evaluation will use


def test_every_adversarial_story_fails_and_references_pass(rows, results):
    passed_adversarial = [r["kind"] for r, res in zip(rows, results) if not is_reference(r) and not failed_checks(res)]
    assert passed_adversarial == []
    refs = [not failed_checks(res) for r, res in zip(rows, results) if is_reference(r)]
    assert sum(refs) / len(refs) >= MIN_REFERENCE_PASS_RATE
    accuracy = checker_accuracy(rows)
    assert accuracy["checker_adversarial_pass_rate"] == 0.0
    assert accuracy["checker_reference_pass_rate"] == sum(refs) / len(refs)


@pytest.mark.parametrize("check", CHECKS)
def test_each_check_fails_some_adversarial_stories_and_passes_the_references(rows, results, check):
    adversarial = [res[check] for r, res in zip(rows, results) if not is_reference(r)]
    refs = [res[check] for r, res in zip(rows, results) if is_reference(r)]
    assert not all(adversarial), f"no adversarial fixture fails {check}"
    assert sum(refs) / len(refs) >= MIN_REFERENCE_PASS_RATE


@pytest.mark.parametrize("kind, check", [
    ("field_dump", "taboo_present"), ("word_salad", "fluent"), ("shuffled_sentences", "coherent_order"),
    ("wrong_spec", "protagonist_named"), ("taboo_deleted", "taboo_present"), ("twist_deleted", "twist_present"),
    ("repetition_loop", "no_repetition"), ("spec_restated", "not_restated"), ("happy_ending", "unsettling_ending"),
    ("one_paragraph", "paragraph_count"), ("object_missing", "object_used"), ("broken_spelling", "fluent"),
    ("stutter", "no_repetition"),
])
def test_each_kind_fails_the_check_made_for_it(rows, results, kind, check):
    mine = [res[check] for r, res in zip(rows, results) if r["kind"] == kind]
    assert mine and not any(mine), f"{sum(mine)} of {len(mine)} {kind} fixtures pass {check}"


def test_the_same_through_pico_check_json(capsys, rows):
    assert main(["check", "--input", str(FIXTURES_PATH), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["rows"]) == len(rows)
    adversarial = [o["pass_all"] for r, o in zip(rows, out["rows"]) if not is_reference(r)]
    refs = [o["pass_all"] for r, o in zip(rows, out["rows"]) if is_reference(r)]
    assert not any(adversarial)
    assert sum(refs) / len(refs) >= MIN_REFERENCE_PASS_RATE
    assert set(out["pass_rates"]) == {*CHECKS, "pass_all"}
    assert out["pass_rates"]["pass_all"] == sum(refs) / len(rows)
