"""The checker judged: its fixture set (adversarial stories that must fail, references that must pass) and its
accuracy on them, reported by `evaluate` beside the pass rates it produces.

The fixtures ship with the package (`pico/checker_fixtures.jsonl`, built by
tests/fixtures/checker/make_fixtures.py), so evaluation needs no tests folder.
"""

from __future__ import annotations

from pathlib import Path

from pico.checks import check_story, failed_checks
from pico.spec import Spec

FIXTURES_PATH = Path(__file__).with_name("checker_fixtures.jsonl")


def is_reference(row: dict) -> bool:
    """Fixture rows of kind 'reference_*' must pass every check; every other kind is adversarial and must fail."""
    return row["kind"].startswith("reference")


def load_checker_fixtures(path: str | Path = FIXTURES_PATH) -> list[dict]:
    """The checker's fixture set shipped with the package (built by tests/fixtures/checker/make_fixtures.py)."""
    from pico.io import read_jsonl

    return read_jsonl(path, required=("kind", "spec", "story"))


def checker_accuracy(rows: list[dict]) -> dict[str, float]:
    """The checker judged on fixture rows: how often adversarial stories pass every check (should be 0) and how
    often reference stories do (should be >= 0.95). NaN for a side with no rows."""
    passed: dict[bool, list[bool]] = {True: [], False: []}
    for row in rows:
        passed[is_reference(row)].append(not failed_checks(check_story(row["story"], Spec.from_dict(row["spec"]))))
    return {"checker_adversarial_pass_rate": _mean(passed[False]), "checker_reference_pass_rate": _mean(passed[True])}


def _mean(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")
